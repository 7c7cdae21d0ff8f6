"""Box and mask conventions, in exactly one place.

* Files hold COCO boxes ``[x, y, w, h]``; code holds ``x1, y1, x2, y2`` floats (XYXY).
* A box covers the pixels whose *centres* lie inside it: pixel column ``j`` (centre
  ``j + 0.5``) is covered iff ``x1 <= j + 0.5 < x2``; rows likewise. Every stage
  (MIL bags, box-filled masks, proxy box agreement) uses this rule.
* Masks travel between stages as COCO RLE (pycocotools) and as ``bool`` arrays [H, W]
  inside a stage.
* Box IoU has no ``+1`` offset: a tight box of a perfect mask scores exactly 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def xywh_to_xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def pixel_span(lo: float, hi: float) -> tuple[int, int]:
    """Half-open index range ``[a, b)`` of the pixels whose centres lie in ``[lo, hi)``."""
    a = math.ceil(lo - 0.5)
    b = math.ceil(hi - 0.5)
    return a, max(a, b)


def snap_box(box_xyxy: Sequence[float], height: int | None = None,
             width: int | None = None) -> tuple[int, int, int, int]:
    """The integer XYXY box (pixel edges) of the pixels a box covers, optionally clipped."""
    x1, y1, x2, y2 = box_xyxy
    c0, c1 = pixel_span(x1, x2)
    r0, r1 = pixel_span(y1, y2)
    if width is not None:
        c0, c1 = min(max(c0, 0), width), min(max(c1, 0), width)
    if height is not None:
        r0, r1 = min(max(r0, 0), height), min(max(r1, 0), height)
    return c0, r0, max(c0, c1), max(r0, r1)


def box_to_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of the pixels the box covers (the 'box-filled' baseline mask)."""
    c0, r0, c1, r1 = snap_box(box_xyxy, height, width)
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight integer XYXY box (pixel edges) of a boolean mask; ``None`` if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two XYXY boxes, continuous coordinates, no +1 offset."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE with a JSON-ready ``counts`` string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    r = dict(rle)
    if isinstance(r.get("counts"), str):
        r["counts"] = r["counts"].encode("ascii")
    return mask_utils.decode(r).astype(bool)


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Decode any COCO ``segmentation`` (polygons, uncompressed or compressed RLE)."""
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation type {type(segm).__name__}")
    return mask_utils.decode(rle).astype(bool)
