"""The BoxCaseg network (paper Fig. 4): one backbone, up to three segmentation heads.

* ``weak``: trained with the MIL loss (Eq. 1-2) on every image;
* ``salient``: trained with the pixel loss (Eq. 3) on salient images;
* ``transferred``: conv weights generated from the weak head's (detached) by the weight-transfer
  MLPs, trained with the same pixel loss; fused with ``salient`` as
  ``alpha * sigmoid(salient) + (1 - alpha) * sigmoid(transferred)``.

Input: normalised float ``[N, 3, H, W]`` (:func:`boxcaseg.data.transforms.normalize`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from boxcaseg.errors import ConfigError, DataError
from boxcaseg.model.backbone import FusedBackbone, build_backbone
from boxcaseg.model.config import ModelConfig
from boxcaseg.model.heads import SegHead
from boxcaseg.model.weight_transfer import TransferredHead

INPUT_SIZE = "input"  # predict_proba's default out_size: the input's own H x W


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class BoxCaseg(nn.Module):
    """``forward(x [N,3,H,W]) -> {head: logits [N,1,H,W]}`` for each enabled head."""

    def __init__(self, backbone: FusedBackbone, heads: tuple[str, ...] = ("weak", "salient",
                 "transferred"), alpha: float = 0.7, head_channels: int = 256,
                 transfer_hidden: int = 256):
        super().__init__()
        if "weak" not in heads:
            raise ConfigError(f"BoxCaseg needs the 'weak' head, got {list(heads)}")
        self.backbone = backbone
        self.head_names = tuple(h for h in ("weak", "salient", "transferred") if h in heads)
        self.alpha = float(alpha)
        c = backbone.out_channels
        self.weak = SegHead(c, head_channels)
        self.salient = SegHead(c, head_channels) if "salient" in heads else None
        self.transferred = (TransferredHead(c, head_channels, transfer_hidden)
                            if "transferred" in heads else None)

    def head_logits(self, x: torch.Tensor, heads: tuple[str, ...] | None = None,
                    pixel_rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits ``[N, 1, h, w]`` at feature resolution (``h ~ H / backbone.reduction``) for
        ``heads`` (default: all enabled); the backbone runs once.

        ``pixel_rows`` (training): indices of the samples the salient and transferred heads
        run on (paper Fig. 4: salient features only). Their outputs are still ``[N, ...]``,
        zero logits in the other rows, which no loss reads; the heads' BatchNorm statistics
        then come from those rows alone.
        """
        heads = self.head_names if heads is None else heads
        feat = self.backbone(x)
        out: dict[str, torch.Tensor] = {}
        if "weak" in heads:
            out["weak"] = self.weak(feat)
        pix_feat = feat if pixel_rows is None else feat.index_select(0, pixel_rows)

        def scatter(v: torch.Tensor) -> torch.Tensor:
            if pixel_rows is None:
                return v
            full = v.new_zeros((feat.shape[0],) + tuple(v.shape[1:]))
            return full.index_copy(0, pixel_rows, v)

        if "salient" in heads and self.salient is not None:
            out["salient"] = scatter(self.salient(pix_feat))
        if "transferred" in heads and self.transferred is not None:
            out["transferred"] = scatter(self.transferred(pix_feat, self.weak))
        return out

    def forward(self, x: torch.Tensor, pixel_rows: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        size = tuple(x.shape[-2:])
        return {k: _upsample(v, size) for k, v in self.head_logits(x, None, pixel_rows).items()}

    def fused_heads(self) -> tuple[str, ...]:
        """The heads whose probabilities make the proxy mask (paper Sec. 3.4)."""
        pixel = tuple(h for h in ("salient", "transferred") if h in self.head_names)
        return pixel or ("weak",)

    def predict_proba(self, x: torch.Tensor,
                      out_size: tuple[int, int] | None | str = INPUT_SIZE,
                      alpha: float | None = None) -> torch.Tensor:
        """Foreground probability ``[N, 1, h, w]`` used for proxy masks.

        ``alpha * sigmoid(salient) + (1 - alpha) * sigmoid(transferred)`` when both heads exist
        (``alpha`` defaults to the model's), the one pixel head alone otherwise, and
        ``sigmoid(weak)`` for a weak-only model (the BBTP-style ablation). ``out_size``: the
        input's size (default), an explicit ``(h, w)``, or None to stay at feature resolution
        (cheaper; upsample later). Logits are upsampled before the sigmoid, so at the input size
        this equals fusing the sigmoids of :meth:`forward`'s outputs.
        """
        a = self.alpha if alpha is None else float(alpha)
        if not 0.0 <= a <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {a}")
        logits = self.head_logits(x, self.fused_heads())
        if out_size == INPUT_SIZE:
            out_size = tuple(x.shape[-2:])
        if out_size is not None:
            logits = {k: _upsample(v, tuple(out_size)) for k, v in logits.items()}
        if "salient" in logits and "transferred" in logits:
            return a * torch.sigmoid(logits["salient"]) + (1 - a) * torch.sigmoid(
                logits["transferred"])
        (only,) = logits.values()
        return torch.sigmoid(only)


def build_model(cfg: ModelConfig) -> BoxCaseg:
    """The network described by ``cfg`` (validated), backbone weights per ``cfg.pretrained``."""
    cfg.validate()
    backbone = build_backbone(cfg.backbone, cfg.pretrained,
                              tuple(cfg.out_indices) if cfg.out_indices is not None else None)
    model = BoxCaseg(backbone, tuple(cfg.heads), cfg.alpha, cfg.head_channels,
                     cfg.transfer_hidden)
    model.config = cfg  # type: ignore[assignment]  # handy for callers; not in the state dict
    return model


def load_boxcaseg(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                  ) -> tuple[BoxCaseg, ModelConfig]:
    """Model (in eval mode) and its config from a training checkpoint.

    The checkpoint is a ``torch.save`` dict with ``"model"`` (state dict) and
    ``"model_config"`` (``to_dict(ModelConfig)``). The network is rebuilt with
    ``pretrained="none"`` (nothing fetched: every weight comes from the checkpoint) and loaded
    strictly; the returned config says ``pretrained="none"`` accordingly.
    """
    from boxcaseg.config import from_dict

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt: Any = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for torn / non-torch files
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("model_config"), dict):
        raise DataError(f"{path}: not a BoxCaseg checkpoint (needs 'model' and 'model_config' "
                        "entries; a Mask R-CNN or backbone file?)")
    try:
        cfg = from_dict(ModelConfig, dict(ckpt["model_config"]), where=f"{path}: model_config")
    except ConfigError as e:
        raise DataError(str(e)) from e
    cfg = replace(cfg, pretrained="none")
    model = build_model(cfg)
    from boxcaseg.engine.checkpoint import load_weights
    load_weights(model, ckpt["model"], str(path),
                 f"they do not match the checkpoint's own model_config, backbone "
                 f"{cfg.backbone}; use a checkpoint as boxcaseg train wrote it")
    # the labeler crops boxes at the training crop size unless told otherwise
    train_cfg = ckpt.get("train_config")
    crop = train_cfg.get("crop_size") if isinstance(train_cfg, dict) else None
    model.train_crop_size = int(crop) if isinstance(crop, int) and crop > 0 else None  # type: ignore[assignment]
    return model.to(map_location).eval(), cfg
