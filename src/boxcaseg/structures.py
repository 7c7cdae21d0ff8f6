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


NO_MASK_KEY = "boxcaseg_no_mask"


def fill_missing_segmentations(data: dict[str, Any]) -> int:
    """Give every annotation of a COCO dict that has no (or an empty) ``segmentation`` an
    empty RLE mask of its image's size; returns how many were filled. The annotation list is
    updated in place with new dicts (the old annotation dicts are not modified).

    Such annotations (boxes the labeler skipped, boxes of images it could not read, crowd
    regions without a mask) would otherwise make ``COCO.annToMask`` and ``COCOeval`` raise
    KeyError (an empty polygon list ``[]`` makes pycocotools raise too, so it is replaced).
    They are marked ``"boxcaseg_no_mask": true``, so no tool need mistake the empty mask for a
    labeled one: ``boxcaseg train-maskrcnn`` leaves them out entirely, ``boxcaseg eval``
    scores an empty mask as missing; ``area`` is set to 0 where absent (COCOeval needs it).
    """
    sizes = {im.get("id"): (im.get("height"), im.get("width")) for im in data.get("images", [])
             if isinstance(im, dict)}
    empty: dict[tuple[int, int], str] = {}
    filled = 0
    anns = data.get("annotations", [])
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or ann.get("segmentation"):
            continue
        size = sizes.get(ann.get("image_id"))
        if size is None or not all(isinstance(v, int) and v > 0 for v in size):
            continue  # the reader rejects such files; nothing sensible to write
        h, w = size
        if (h, w) not in empty:
            empty[(h, w)] = empty_rle_counts(h, w)
        anns[i] = with_empty_mask(ann, h, w, empty[(h, w)])
        filled += 1
    return filled


def empty_rle_counts(height: int, width: int) -> str:
    """Compressed RLE ``counts`` of an all-empty ``height x width`` mask (no array built)."""
    rle = mask_utils.frPyObjects({"counts": [height * width], "size": [height, width]},
                                 height, width)
    return rle["counts"].decode("ascii")


def with_empty_mask(ann: dict[str, Any], height: int, width: int,
                    counts: str | None = None) -> dict[str, Any]:
    """A copy of ``ann`` with the empty, marked mask of :func:`fill_missing_segmentations`."""
    new = dict(ann)
    new["segmentation"] = {"size": [height, width],
                           "counts": counts or empty_rle_counts(height, width)}
    new.setdefault("area", 0)
    new[NO_MASK_KEY] = True
    return new
