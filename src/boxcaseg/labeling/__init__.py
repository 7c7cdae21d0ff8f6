"""The auto-labeler: proxy masks, merge and drop, baselines."""

from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.labeler import LabelSummary, label_dataset

__all__ = ["LabelConfig", "LabelSummary", "label_dataset"]
