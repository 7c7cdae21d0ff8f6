"""Merge, the keep/drop rule and the score (paper Sec. 3.4): pure functions on one image.

* Merge, "smaller object better": each pixel belongs to at most one object; where masks
  overlap, the pixel goes to the object whose GT *box* is smallest (a small object usually
  sits inside the box of a large one). Equal box areas: the annotation listed first wins.
  Fixed masks (the user's ground truth, mixed supervision) take part like any mask but are
  not returned, so a GT mask takes its pixels from every proxy mask with a larger box and
  itself stays as the user drew it.
* Drop, "proxy box agreement": IoU between the tight box of the (merged) mask and the GT box
  snapped to pixels. It lower-bounds the mask IoU with the unknown GT mask. Dropped masks stay
  in the labels file, flagged ``ignore_mask`` (Mask R-CNN then leaves them out of its mask
  loss). :func:`ignores` is the one rule: ``label`` and ``calibrate --apply`` both call it.
* Score: ``labeling.score`` (the mask's predicted IoU) from the source's own quality
  estimate, the share of the mask that survived merge, the proxy IoU and how much the box
  overlaps another box of the image.

Masks are :class:`~boxcaseg.labeling.masks.BoxMask` (box-sized); boxes XYXY floats [K, 4] in
pixel-edge coordinates (``boxcaseg.structures``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from boxcaseg.errors import DataError
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.score import box_overlaps, scores_for
from boxcaseg.structures import box_iou, snap_box


@dataclass
class Decision:
    """What post-processing made of one raw mask."""

    mask: BoxMask       # after merge
    proxy_iou: float
    score: float
    ignore: bool        # the ``ignore_mask`` flag

    @property
    def area(self) -> int:
        return self.mask.area


def box_areas(boxes_xyxy: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Continuous areas [K] of XYXY boxes (the quantity "smaller object" compares)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def merge_smaller_first(masks: Sequence[BoxMask], boxes_xyxy: np.ndarray, height: int,
                        width: int) -> list[BoxMask]:
    """Resolve overlaps: each contested pixel goes to the mask with the smallest box area.

    Returns masks that are pairwise disjoint, each a subset of its input mask. Ties in box
    area go to the lower index (the sort is stable). One [H, W] canvas, not K of them."""
    if len(masks) != len(box_areas(boxes_xyxy)):
        raise ValueError(f"{len(masks)} masks but {len(box_areas(boxes_xyxy))} boxes")
    claimed = np.zeros((height, width), dtype=bool)
    out: list[BoxMask | None] = [None] * len(masks)
    for k in np.argsort(box_areas(boxes_xyxy), kind="stable"):
        m = masks[k]
        h, w = m.mask.shape
        region = claimed[m.r0:m.r0 + h, m.c0:m.c0 + w]
        out[k] = BoxMask(m.c0, m.r0, m.mask & ~region)
        region |= m.mask
    return out  # type: ignore[return-value]


def proxy_iou(mask: BoxMask, box_xyxy: Sequence[float], height: int, width: int) -> float:
    """Proxy box agreement: IoU(tight box of the mask, the box snapped to its pixels).

    Both are integer pixel-edge boxes, so a mask that exactly fills the pixels the box
    covers scores exactly 1.0 at any size. An empty mask scores 0.0."""
    tight = mask.tight_box()
    return 0.0 if tight is None else box_iou(tight, snap_box(box_xyxy, height, width))


def ignores(area: int, proxy_iou: float, score: float | None, cfg: LabelConfig) -> bool:
    """The ``ignore_mask`` rule: empty, or below the proxy-box rule (when ``cfg.drop``; a
    value equal to ``drop_iou`` is kept), or below ``cfg.min_score`` (when set)."""
    if area <= 0:
        return True
    if cfg.drop and proxy_iou < cfg.drop_iou:
        return True
    if cfg.min_score is not None:
        if score is None:
            raise DataError("min_score is set but a mask has no 'score'")
        return score < cfg.min_score
    return False


def postprocess(masks: Sequence[BoxMask], boxes_xyxy: np.ndarray, height: int, width: int,
                cfg: LabelConfig, quality: Sequence[float] | None = None,
                fixed: tuple[Sequence[BoxMask], np.ndarray] | None = None) -> list[Decision]:
    """Merge + drop + score the K raw masks of one image.

    ``quality``: the source's own expected IoU of each raw mask (None: the source has none).
    ``fixed``: the image's GT masks and their XYXY boxes [G, 4]; they take part in merge but
    are not returned (they stay as the user gave them)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    raw_areas = [m.area for m in masks]
    if cfg.merge and fixed is not None and len(fixed[0]):
        merged = merge_smaller_first([*masks, *fixed[0]], np.concatenate([boxes, fixed[1]]),
                                     height, width)
        masks = merged[:len(masks)]
    elif cfg.merge and len(masks) > 1:
        masks = merge_smaller_first(masks, boxes, height, width)
    ious = [proxy_iou(m, b, height, width) for m, b in zip(masks, boxes)]
    overlaps = box_overlaps(boxes, fixed[1] if fixed is not None else None)
    scores = scores_for(raw_areas, [m.area for m in masks], ious, quality, overlaps)
    return [Decision(m, iou, sc, ignores(m.area, iou, sc, cfg))
            for m, iou, sc in zip(masks, ious, scores)]
