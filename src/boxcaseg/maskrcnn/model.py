"""torchvision Mask R-CNN with an ignore-aware mask loss (paper Sec. 3.4).

Proxy masks whose quality the labeler doubts are flagged ``"ignore_mask": true``. Such an
instance still trains the RPN and the box/class branches, but is left out of the mask loss
*only*. Targets carry ``mask_valid`` (bool ``[K]``, one per GT instance, default all true) next
to ``masks``; positive proposals matched to a GT with ``mask_valid=False`` are dropped before
the mask head, so the mask loss is the mean per-pixel BCE over the kept positive RoIs, exactly
torchvision's ``maskrcnn_loss`` on that subset.

This is done by :class:`IgnoreAwareRoIHeads`, a small ``RoIHeads`` subclass used by the models
built here. torchvision itself is not patched: every other model in the process keeps the
stock loss. The subclass lets the parent run the box branch unchanged (same sampling, same
losses), records the sampled proposals / matched GT indices / labels the parent drew, and runs
the mask branch itself in training. In eval mode it is the parent's forward, untouched.

Backbones (all with a 5-level FPN, 256 channels, levels '0'..'3' + 'pool'):

* ``resnet50_fpn`` / ``resnet101_fpn``: torchvision's ``resnet_fpn_backbone``;
* ``efficientnet_lite0_fpn``: timm ``tf_efficientnet_lite0`` (``features_only``, strides
  4/8/16/32, offline ImageNet weights via :mod:`boxcaseg.model.pretrained`) + torchvision's
  ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` (the CPU demo backbone).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from boxcaseg.errors import ConfigError
from boxcaseg.maskrcnn.config import MaskRCNNConfig

log = logging.getLogger(__name__)

FPN_CHANNELS = 256


# --------------------------------------------------------------------------- the loss

def drop_ignored(proposals: list[torch.Tensor], matched_idxs: list[torch.Tensor],
                 mask_valid: list[torch.Tensor]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per image, the positive proposals (and matched GT indices) whose GT has a valid mask.

    Returns ``(kept_proposals, kept_matched_idxs, keep)`` with ``keep[i]`` the bool ``[R_i]``
    selector applied to image ``i``.
    """
    kept_props, kept_idxs, keeps = [], [], []
    for props, idxs, valid in zip(proposals, matched_idxs, mask_valid):
        valid = valid.to(device=idxs.device, dtype=torch.bool)
        keep = valid[idxs] if idxs.numel() else torch.zeros(0, dtype=torch.bool,
                                                             device=idxs.device)
        kept_props.append(props[keep])
        kept_idxs.append(idxs[keep])
        keeps.append(keep)
    return kept_props, kept_idxs, keeps


def ignore_aware_maskrcnn_loss(mask_logits: torch.Tensor, proposals: list[torch.Tensor],
                               gt_masks: list[torch.Tensor], gt_labels: list[torch.Tensor],
                               mask_matched_idxs: list[torch.Tensor],
                               mask_valid: list[torch.Tensor] | None) -> torch.Tensor:
    """torchvision's ``maskrcnn_loss`` restricted to RoIs whose matched GT has a valid mask.

    Args:
        mask_logits: ``[R, C+1, M, M]``, the positive RoIs of all images concatenated in order.
        proposals: per image ``[R_i, 4]`` XYXY positive proposals (``sum R_i = R``).
        gt_masks: per image ``[K_i, H, W]`` GT masks (image resolution after the transform).
        gt_labels: per image ``[K_i]`` int64 labels.
        mask_matched_idxs: per image ``[R_i]`` index of the GT each proposal is matched to.
        mask_valid: per image bool ``[K_i]``; ``None`` = every mask valid (the stock loss).

    Returns:
        scalar: mean BCE over the kept RoIs' pixels; ``mask_logits.sum() * 0`` (finite, in the
        graph) if no RoI is kept.
    """
    if mask_valid is None:
        return maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs)
    kept_props, kept_idxs, keeps = drop_ignored(proposals, mask_matched_idxs, mask_valid)
    keep = torch.cat(keeps) if keeps else torch.zeros(0, dtype=torch.bool)
    return kept_mask_loss(mask_logits[keep.to(mask_logits.device)], kept_props, gt_masks,
                          gt_labels, kept_idxs, empty_like=mask_logits)


def kept_mask_loss(mask_logits: torch.Tensor, kept_props: list[torch.Tensor],
                   gt_masks: list[torch.Tensor], gt_labels: list[torch.Tensor],
                   kept_idxs: list[torch.Tensor], empty_like: torch.Tensor) -> torch.Tensor:
    """``maskrcnn_loss`` over the kept RoIs (``mask_logits`` holds only theirs); with none
    kept, ``empty_like.sum() * 0``: finite and still in the graph of every mask parameter,
    which DDP needs."""
    if sum(int(p.shape[0]) for p in kept_props) == 0:
        return empty_like.sum() * 0
    return maskrcnn_loss(mask_logits, kept_props, gt_masks, gt_labels, kept_idxs)


class IgnoreAwareRoIHeads(RoIHeads):
    """``RoIHeads`` whose training mask loss skips GT instances with ``mask_valid=False``.

    Box/class branch and eval-mode behaviour are the parent's, unchanged. Positive RoIs matched
    to ignored instances are not even fed to the mask head (the mask head is per-RoI, without
    batch statistics, so this equals computing and then discarding them).
    """

    @classmethod
    def from_roi_heads(cls, rh: RoIHeads) -> IgnoreAwareRoIHeads:
        """The same heads, thresholds and sampling settings as ``rh`` (sharing its modules)."""
        return cls(
            rh.box_roi_pool, rh.box_head, rh.box_predictor,
            rh.proposal_matcher.high_threshold, rh.proposal_matcher.low_threshold,
            rh.fg_bg_sampler.batch_size_per_image, rh.fg_bg_sampler.positive_fraction,
            rh.box_coder.weights, rh.score_thresh, rh.nms_thresh, rh.detections_per_img,
            mask_roi_pool=rh.mask_roi_pool, mask_head=rh.mask_head,
            mask_predictor=rh.mask_predictor)

    def has_mask(self) -> bool:
        # In training the parent must skip its own mask branch: ours runs in forward().
        return super().has_mask() and not self.training

    def select_training_samples(self, proposals, targets):  # type: ignore[override]
        out = super().select_training_samples(proposals, targets)
        self._sampled = out  # (proposals, matched_idxs, labels, regression_targets)
        return out

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None or not all("masks" in t for t in targets):
            raise ValueError("training targets need 'masks' ([K, H, W] per image)")
        self._sampled = None
        result, losses = super().forward(features, proposals, image_shapes, targets)
        sampled, self._sampled = self._sampled, None
        if sampled is None:
            raise RuntimeError("RoIHeads.forward did not call select_training_samples")
        props, matched_idxs, labels, _ = sampled
        pos_props, pos_idxs = [], []
        for p, m, lab in zip(props, matched_idxs, labels):
            pos = torch.where(lab > 0)[0]
            pos_props.append(p[pos])
            pos_idxs.append(m[pos])
        valid = [t["mask_valid"] if "mask_valid" in t
                 else torch.ones(t["masks"].shape[0], dtype=torch.bool, device=t["masks"].device)
                 for t in targets]
        # only the kept RoIs go through the mask head
        kept_props, kept_idxs, _ = drop_ignored(pos_props, pos_idxs, valid)
        mask_features = self.mask_roi_pool(features, kept_props, image_shapes)
        mask_features = self.mask_head(mask_features)
        mask_logits = self.mask_predictor(mask_features)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        losses["loss_mask"] = kept_mask_loss(mask_logits, kept_props, gt_masks, gt_labels,
                                             kept_idxs, empty_like=mask_logits)
        return result, losses


# --------------------------------------------------------------------------- backbones

def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(32, channels)


class TimmFPNBackbone(nn.Module):
    """timm ``features_only`` body + torchvision FPN: ``x [N,3,H,W]`` -> OrderedDict of
    ``[N, 256, H/s, W/s]`` for s = 4, 8, 16, 32 ('0'..'3') and 64 ('pool').

    The FPN convolutions are followed by GroupNorm (detectron2's "GN" FPN): EfficientNet's
    stage outputs are linear bottlenecks with a large, level-dependent scale (std ~14 at
    stride 4 with the ImageNet weights), which without normalisation makes the randomly
    initialised heads start with huge logits and diverge at detection learning rates.
    """

    def __init__(self, body: nn.Module, out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), out_channels,
                                         extra_blocks=LastLevelMaxPool(),
                                         norm_layer=_group_norm)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _lite0_fpn(cfg: MaskRCNNConfig) -> nn.Module:
    from boxcaseg.model.pretrained import create_features_model

    source = cfg.pretrained
    if source == "torchvision":
        raise ConfigError("MaskRCNNConfig.pretrained: 'torchvision' has no EfficientNet-Lite0 "
                          "weights; use auto (the packaged ImageNet weights), none or a path")
    body = create_features_model("tf_efficientnet_lite0", source, out_indices=(1, 2, 3, 4))
    if cfg.freeze_bn:
        # small per-GPU batches make BatchNorm statistics noisy; detection freezes them
        from timm.layers import freeze_batch_norm_2d
        body = freeze_batch_norm_2d(body)
    if cfg.freeze_at > 0:
        # as detectron2's FREEZE_AT / torchvision's trainable_layers: the high-resolution early
        # layers keep their ImageNet weights, which also saves most of the backward cost
        frozen = [body.conv_stem, body.bn1] + list(body.blocks[:cfg.freeze_at])
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
    return TimmFPNBackbone(body)


def _resnet_fpn(cfg: MaskRCNNConfig, depth: int) -> nn.Module:
    from torchvision.ops import misc as misc_nn_ops

    name = f"resnet{depth}"
    weights: Any = None
    path: str | None = None
    if cfg.pretrained in ("auto", "torchvision"):
        weights = "DEFAULT"
    elif cfg.pretrained != "none":
        path = cfg.pretrained
    pretrained = weights is not None or path is not None
    trainable = cfg.trainable_layers if cfg.trainable_layers is not None else (3 if pretrained else 5)
    # FrozenBN on random statistics would freeze garbage: plain BN when training from scratch
    norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    try:
        backbone = resnet_fpn_backbone(backbone_name=name, weights=weights, norm_layer=norm,
                                       trainable_layers=trainable)
    except Exception as e:  # offline download failure: urllib / OSError / RuntimeError
        if weights is None:
            raise
        raise ConfigError(
            f"cannot fetch torchvision's ImageNet weights for {name} ({type(e).__name__}: "
            f"{str(e)[:200]}); this machine may be offline: set pretrained=none or "
            "pretrained=<path to a torchvision ResNet state dict>") from e
    if path is not None:
        from boxcaseg.model.pretrained import _read_state_dict, load_into
        load_into(backbone.body, _read_state_dict(path), where=path)
    return backbone


def build_backbone(cfg: MaskRCNNConfig) -> nn.Module:
    """FPN backbone (``.out_channels == 256``) named by ``cfg.backbone``."""
    if cfg.backbone == "efficientnet_lite0_fpn":
        return _lite0_fpn(cfg)
    if cfg.backbone == "resnet50_fpn":
        return _resnet_fpn(cfg, 50)
    if cfg.backbone == "resnet101_fpn":
        return _resnet_fpn(cfg, 101)
    raise ConfigError(f"MaskRCNNConfig.backbone: unknown {cfg.backbone!r}")


def build_maskrcnn(cfg: MaskRCNNConfig, num_classes: int) -> MaskRCNN:
    """Mask R-CNN for ``num_classes`` object classes (+ background) with the ignore-aware mask
    loss. Inputs: list of float ``[3, H, W]`` images in [0, 1] (the model's transform
    normalises with ImageNet mean/std, as :func:`boxcaseg.data.transforms.normalize`)."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    backbone = build_backbone(cfg)
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in cfg.anchor_sizes),
                              aspect_ratios=(tuple(float(a) for a in cfg.aspect_ratios),)
                              * len(cfg.anchor_sizes))
    # torchvision's default box head (7x7 RoIs -> two FC layers), with a configurable width
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, cfg.box_head_dim)
    box_predictor = FastRCNNPredictor(cfg.box_head_dim, num_classes + 1)
    mask_predictor = MaskRCNNPredictor(256, 256, num_classes + 1)  # torchvision's default
    model = MaskRCNN(
        backbone, num_classes=None, box_head=box_head, box_predictor=box_predictor,
        mask_predictor=mask_predictor,
        min_size=cfg.min_size_tuple(), max_size=cfg.max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.score_thresh,
    )
    model.roi_heads = IgnoreAwareRoIHeads.from_roi_heads(model.roi_heads)
    return model
