"""The single image normalisation used by training and inference alike."""

from __future__ import annotations

import torch

# ImageNet statistics: every supported backbone (timm, torchvision) was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) [N, 3, H, W] or [3, H, W] RGB -> float32 normalised."""
    x = images.float() / 255.0
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean) / std
