"""The BoxCaseg network: timm backbone, three heads, weight transfer."""

from boxcaseg.model.boxcaseg import BoxCaseg, build_model, load_boxcaseg
from boxcaseg.model.config import ModelConfig

__all__ = ["BoxCaseg", "ModelConfig", "build_model", "load_boxcaseg"]
