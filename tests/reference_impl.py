"""Reference implementations that check the production code (not used by it).

Merge and drop (paper Sec. 3.4) on full-image boolean masks [K, H, W], the obvious way; the
production path (``labeling.postprocess``) works on box-local masks and must agree.

* Merge, "smaller object better": each pixel belongs to at most one object; where masks
  overlap, the pixel goes to the object whose GT *box* is smallest (a small object usually
  sits inside the box of a large one). Equal box areas: the annotation listed first wins.
* Drop, "proxy box agreement": IoU between the tight box of the (merged) mask and the GT box
  snapped to pixels. It lower-bounds the mask IoU with the unknown GT mask. Dropped masks stay
  in the annotation file, flagged ``ignore_mask`` so Mask R-CNN ignores them in the mask loss.

Masks are ``bool`` arrays [K, H, W]; boxes are XYXY floats [K, 4] in pixel-edge coordinates
(see ``boxcaseg.structures``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from boxcaseg.structures import box_iou, mask_to_box, snap_box


def box_areas(boxes_xyxy: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Continuous areas [K] of XYXY boxes (the quantity "smaller object" compares)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def merge_smaller_first(masks: np.ndarray, boxes_xyxy: np.ndarray | Sequence[Sequence[float]]
                        ) -> np.ndarray:
    """Resolve overlaps: each contested pixel goes to the mask with the smallest box area.

    masks: bool [K, H, W]; boxes_xyxy: [K, 4]. Returns a new bool [K, H, W] whose masks are
    pairwise disjoint and each a subset of its input mask. Ties in box area go to the lower
    index (the annotation listed first), because the sort is stable.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {masks.shape}")
    areas = box_areas(boxes_xyxy)
    if len(areas) != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {len(areas)} boxes")
    out = np.zeros_like(masks)
    claimed = np.zeros(masks.shape[1:], dtype=bool)
    for k in np.argsort(areas, kind="stable"):
        out[k] = masks[k] & ~claimed
        claimed |= masks[k]
    return out


def proxy_box_iou(mask: np.ndarray, box_xyxy: Sequence[float]) -> float:
    """Proxy box agreement: IoU(tight box of ``mask``, ``box_xyxy`` snapped to its pixels).

    Both boxes are integer pixel-edge boxes, so a mask that exactly fills the pixels the box
    covers scores exactly 1.0 at any size. An empty mask scores 0.0.
    """
    tight = mask_to_box(mask)
    if tight is None:
        return 0.0
    h, w = mask.shape
    return box_iou(tight, snap_box(box_xyxy, h, w))


def drop_decisions(masks: np.ndarray, boxes_xyxy: np.ndarray | Sequence[Sequence[float]],
                   drop_iou: float, drop: bool = True) -> tuple[list[float], list[bool]]:
    """Proxy IoUs and ``ignore_mask`` flags for K masks of one image.

    A mask is ignored iff it is empty, or ``drop`` is on and its proxy IoU is strictly below
    ``drop_iou`` (a score equal to the threshold is kept).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    ious: list[float] = []
    ignore: list[bool] = []
    for m, b in zip(masks, boxes):
        iou = proxy_box_iou(m, b)
        empty = not m.any()
        ious.append(iou)
        ignore.append(bool(empty or (drop and iou < drop_iou)))
    return ious, ignore


# --------------------------------------------------------------------------------------------
# full-image views of the production (box-local) path, for tests that think in [K, H, W]


def predict_masks(model, image, boxes, cfg=None):
    """The production predictor's masks of one image's boxes as bool [K, H, W]."""
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.predictor import get_predictor

    h, w = image.shape[:2]
    masks, _ = get_predictor(model, cfg or LabelConfig()).predict([image], [boxes])[0]
    return np.stack([m.to_full(h, w) for m in masks]) if masks else np.zeros((0, h, w), bool)


def paste_probs(probs, boxes_xyxy, regions, height, width, threshold, mode="fixed"):
    """``predictor.paste_probs_boxes`` as full-image bool masks [K, H, W]."""
    from boxcaseg.labeling.predictor import paste_probs_boxes

    out = paste_probs_boxes(probs, boxes_xyxy, regions, height, width, threshold, mode)
    return np.stack([m.to_full(height, width) for m in out]) if out else \
        np.zeros((0, height, width), bool)


def postprocess_fields(masks, boxes, cfg, soft=None, fixed=None, height=None, width=None):
    """Production post-processing of full-image masks [K, H, W] (or box masks with
    ``height``/``width``) -> the annotation fields the labeler writes."""
    from boxcaseg.labeling.labeler import LabeledMask
    from boxcaseg.labeling.masks import BoxMask
    from boxcaseg.labeling.postprocess import postprocess

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if height is None:
        height, width = masks.shape[1:]
        masks = [BoxMask.from_full(m, b) for m, b in zip(masks, boxes)]
    out = []
    for b, d in zip(boxes, postprocess(masks, boxes, height, width, cfg, soft, fixed)):
        lm = LabeledMask(tuple(b), d.mask, d.proxy_iou, d.score, d.ignore, "test")
        out.append(lm.fields(height, width, cfg.segmentation))
    return out
