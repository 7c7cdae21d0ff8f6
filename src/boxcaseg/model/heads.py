"""The segmentation head shared by the weak, salient and transferred branches (paper Fig. 4).

``conv1x1 (C_in -> hidden) -> BN -> ReLU -> conv1x1 (hidden -> 1)``: one logit per feature
pixel. Heads work at feature resolution; :class:`~boxcaseg.model.boxcaseg.BoxCaseg` upsamples
the logits to the input size.
"""

from __future__ import annotations

import torch
from torch import nn


class SegHead(nn.Module):
    """``feat [N, in_channels, h, w]`` -> logits ``[N, 1, h, w]``.

    ``conv1`` has no bias (the BN right after it would cancel it); ``conv2`` starts with small
    weights and zero bias so every head starts near probability 0.5 everywhere.
    """

    def __init__(self, in_channels: int, hidden: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden, 1, kernel_size=1, bias=True)
        nn.init.normal_(self.conv2.weight, std=0.01)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(feat))))
