"""Proxy Mask R-CNN: torchvision Mask R-CNN with an ignore-aware mask loss."""

from boxcaseg.maskrcnn.config import MaskRCNNConfig
from boxcaseg.maskrcnn.evaluate import evaluate_maskrcnn
from boxcaseg.maskrcnn.predict import load_maskrcnn, predict_images
from boxcaseg.maskrcnn.train import train_maskrcnn

__all__ = ["MaskRCNNConfig", "evaluate_maskrcnn", "load_maskrcnn", "predict_images",
           "train_maskrcnn"]
