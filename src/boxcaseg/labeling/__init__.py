"""The auto-labeler, in layers that import one way:

``schema`` (the labels file) <- ``masks`` (box-local masks, RLE, polygons) <- ``postprocess``
(merge, the keep rule, the score) <- ``sources`` / ``predictor`` (where raw masks come from)
<- ``labeler`` (image + boxes -> answers, in memory) <- ``job`` (files, shards, resume,
torchrun). ``calibrate`` is offline and imports the rule; nothing imports it.

Names are loaded on first use, so ``import boxcaseg.labeling.schema`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LabelConfig": "boxcaseg.labeling.config",
    "BoxLabeler": "boxcaseg.labeling.labeler",
    "LabeledMask": "boxcaseg.labeling.labeler",
    "ImageLabels": "boxcaseg.labeling.labeler",
    "MaskSource": "boxcaseg.labeling.sources",
    "SourceMasks": "boxcaseg.labeling.sources",
    "BoxMask": "boxcaseg.labeling.masks",
    "iter_labels": "boxcaseg.labeling.job.stream",
    "ImageResult": "boxcaseg.labeling.job.stream",
    "label_dataset": "boxcaseg.labeling.job.run",
    "LabelSummary": "boxcaseg.labeling.job.summary",
    "load_labels": "boxcaseg.labeling.review",
    "read_labels": "boxcaseg.labeling.schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'boxcaseg.labeling' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
