"""Backbone: a timm ``features_only`` model whose levels are fused HRNetV2-style.

Every selected feature level is bilinearly upsampled (``align_corners=False``) to the finest
selected level and the levels are concatenated along channels, as HRNetV2 does for its four
branches. For ``hrnet_*`` models timm is asked for the raw branch outputs
(``feature_location=''``), so ``hrnet_w48`` with the default levels gives exactly HRNetV2-W48's
48+96+192+384 = 720 channels at stride 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boxcaseg.model.pretrained import create_features_model


def timm_kwargs(backbone: str, out_indices: tuple[int, ...] | None) -> dict:
    """The ``timm.create_model`` keyword arguments for ``backbone`` (besides features_only)."""
    kwargs: dict = {}
    if backbone.startswith("hrnet"):
        kwargs["feature_location"] = ""  # raw HRNet branches, not the classifier's 'incre' path
        if out_indices is None:
            out_indices = (1, 2, 3, 4)  # HRNetV2: the four branches, without the stride-2 stem
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    return kwargs


class FusedBackbone(nn.Module):
    """``x [N,3,H,W]`` -> concatenated features ``[N, out_channels, ~H/r, ~W/r]``.

    ``r = reduction`` is the finest selected stride; the spatial size is that of the finest
    level (``ceil(H / r)`` for most timm models).
    """

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        info = body.feature_info
        self.level_channels: list[int] = list(info.channels())
        self.level_reductions: list[int] = list(info.reduction())
        self.out_channels = int(sum(self.level_channels))
        self.reduction = int(min(self.level_reductions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body(x)
        # the finest level sets the size (levels are ordered by stride in timm, but be explicit)
        ref = max(feats, key=lambda f: f.shape[-1] * f.shape[-2])
        size = ref.shape[-2:]
        ups = [f if f.shape[-2:] == size else
               F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats]
        return torch.cat(ups, dim=1)


def build_backbone(backbone: str, pretrained: str = "none",
                   out_indices: tuple[int, ...] | None = None) -> FusedBackbone:
    """timm ``backbone`` with weights from ``pretrained`` (see :mod:`.pretrained`)."""
    body = create_features_model(backbone, pretrained, **timm_kwargs(backbone, out_indices))
    return FusedBackbone(body)
