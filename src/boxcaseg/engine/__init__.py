"""Training loop, distributed setup, checkpoints."""

from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.trainer import train

__all__ = ["TrainConfig", "train"]
