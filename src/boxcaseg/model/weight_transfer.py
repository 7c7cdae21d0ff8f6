"""Weight transfer (Mask^X R-CNN style, paper Sec. 3.3.2): weak head -> transferred head.

The transferred head has the same architecture as the other heads (conv1x1 -> BN -> ReLU ->
conv1x1) but owns no conv weights: they are generated, at every forward, from the DETACHED conv
weights of the weak head, so the pixel-wise loss trains the transfer MLPs (and the transferred
head's own BN) but never reaches the weak head.

What is generated, precisely (the scheme of the authors' released code):

* ``conv1`` (``hidden x C_in``): each output filter, a ``C_in`` vector, goes through one MLP
  ``Linear(C_in, transfer_hidden) -> LeakyReLU(0.1) -> Linear(transfer_hidden, C_in)`` shared
  by all ``hidden`` filters;
* ``conv2`` (``1 x hidden``): its single filter goes through a second MLP of the same form
  (``hidden -> transfer_hidden -> hidden``); its bias is ``k * b_weak + b0`` with learnt
  scalars ``k`` (init 1) and ``b0`` (init 0).

``conv1`` has no bias in our heads (a BN follows), so none is generated for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boxcaseg.model.heads import SegHead


class WeightTransfer(nn.Module):
    """Detached conv weight ``[out, in, kh, kw]`` -> generated weight of the same shape, each
    output filter mapped independently by a shared two-layer MLP; optional bias -> ``k*b + b0``.
    """

    def __init__(self, filter_size: int, hidden: int = 256, with_bias: bool = False,
                 negative_slope: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(filter_size, hidden),
                                 nn.LeakyReLU(negative_slope),
                                 nn.Linear(hidden, filter_size))
        # only created when a bias is transferred: a parameter that never gets a gradient
        # would break DDP without find_unused_parameters
        self.bias_scale = nn.Parameter(torch.ones(1)) if with_bias else None
        self.bias_shift = nn.Parameter(torch.zeros(1)) if with_bias else None

    def forward(self, weight: torch.Tensor, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # detach: the transfer is one-directional, no gradient may reach the weak head
        w = weight.detach()
        out = self.mlp(w.reshape(w.shape[0], -1)).reshape(w.shape)
        new_bias = None
        if bias is not None:
            if self.bias_scale is None or self.bias_shift is None:
                raise ValueError("this WeightTransfer was built with with_bias=False")
            new_bias = self.bias_scale * bias.detach() + self.bias_shift
        return out, new_bias


class TransferredHead(nn.Module):
    """``(feat [N, C_in, h, w], weak head)`` -> logits ``[N, 1, h, w]`` computed with conv
    weights generated from ``weak``'s (see the module docstring)."""

    def __init__(self, in_channels: int, hidden: int = 256, transfer_hidden: int = 256):
        super().__init__()
        self.transfer1 = WeightTransfer(in_channels, transfer_hidden)
        self.transfer2 = WeightTransfer(hidden, transfer_hidden, with_bias=True)
        self.bn = nn.BatchNorm2d(hidden)

    def generate(self, weak: SegHead) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Generated ``(conv1 weight, conv2 weight, conv2 bias)``; call once per forward."""
        w1, _ = self.transfer1(weak.conv1.weight)
        w2, b2 = self.transfer2(weak.conv2.weight, weak.conv2.bias)
        return w1, w2, b2

    def forward(self, feat: torch.Tensor, weak: SegHead) -> torch.Tensor:
        w1, w2, b2 = self.generate(weak)
        h = F.relu(self.bn(F.conv2d(feat, w1)))
        return F.conv2d(h, w2, b2)
