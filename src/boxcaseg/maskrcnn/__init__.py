"""Proxy Mask R-CNN: torchvision Mask R-CNN with an ignore-aware mask loss."""
