"""An exact, re-associated BoxCaseg inference graph (``LabelConfig.fuse``).

Exact algebra (see :class:`FusedProba`), verified against ``predict_proba`` before use
(``BoxcasegPredictor._try_fuse``); not measurably faster on the development CPU, so off by
default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1x1 (no bias) followed by eval-mode BN -> one conv1x1 weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class FusedProba(nn.Module):
    """``BoxCaseg.predict_proba(x, out_size=None)`` re-associated for inference (exact algebra).

    The BoxCaseg backbone upsamples every feature level to the finest stride and concatenates
    them; each pixel head starts with a 1x1 conv on that (for tf_efficientnet_lite0: 512
    channels at stride 2). A 1x1 conv commutes with bilinear upsampling (both are linear, one
    across channels, the other across pixels), so here each level is convolved at its *own*
    resolution and only the conv outputs are upsampled and summed. The salient and transferred
    heads' first convs are stacked into one, eval-mode BN is folded into them, the transferred
    head's generated weights are computed once, and both second convs run as one grouped conv.
    ``BoxcasegPredictor`` checks the result against ``predict_proba`` before using it.
    """

    def __init__(self, model: nn.Module, alpha: float | None):
        super().__init__()
        body = model.backbone.body
        self.body = body
        self.level_channels = list(model.backbone.level_channels)
        names = model.fused_heads()
        w1s, b1s, w2s, b2s = [], [], [], []
        with torch.no_grad():
            for name in names:
                if name == "transferred":
                    w1, w2, b2 = model.transferred.generate(model.weak)
                    bn = model.transferred.bn
                else:
                    head = getattr(model, name)
                    w1, w2, b2, bn = head.conv1.weight, head.conv2.weight, head.conv2.bias, head.bn
                w1, b1 = _fold_bn(w1, bn)
                w1s.append(w1)
                b1s.append(b1)
                w2s.append(w2)
                b2s.append(b2 if b2 is not None else torch.zeros(1, device=w2.device))
            w1 = torch.cat(w1s)
        self.n_heads = len(names)
        self.splits = nn.ParameterList(
            nn.Parameter(part.clone(), requires_grad=False)
            for part in torch.split(w1, self.level_channels, dim=1))
        self.b1 = nn.Parameter(torch.cat(b1s).clone(), requires_grad=False)
        self.w2 = nn.Parameter(torch.cat(w2s).clone(), requires_grad=False)
        self.b2 = nn.Parameter(torch.cat(b2s).clone(), requires_grad=False)
        self.alpha = float(model.alpha if alpha is None else alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body(x)
        ref = max(range(len(feats)), key=lambda i: feats[i].shape[-1] * feats[i].shape[-2])
        size = feats[ref].shape[-2:]
        y = F.conv2d(feats[ref], self.splits[ref], self.b1)
        for i, (f, w) in enumerate(zip(feats, self.splits)):
            if i != ref:
                z = F.conv2d(f, w)
                if z.shape[-2:] != size:
                    z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                y = y + z
        logits = F.conv2d(F.relu(y), self.w2, self.b2, groups=self.n_heads)
        if self.n_heads == 2:
            return (self.alpha * torch.sigmoid(logits[:, :1])
                    + (1 - self.alpha) * torch.sigmoid(logits[:, 1:]))
        return torch.sigmoid(logits)
