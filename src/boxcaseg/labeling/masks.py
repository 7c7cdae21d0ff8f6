"""Per-box masks: a mask confined to its box, held as a box-sized array plus its offset.

Every labeling method confines a box's mask to the pixels the box covers
(``boxcaseg.structures.snap_box``), so a ``BoxMask`` of shape ``[r1 - r0, c1 - c0]`` at
``(c0, r0)`` carries all of it. Memory is then the sum of the box areas, not
``K x H x W`` (300 boxes on a 6000x4000 photo would be ~7 GB as full-image arrays).

The functions here are the box-local twins of ``merge_drop`` and ``structures.mask_to_rle``
and give exactly the same results (tests compare them on random masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.labeling.merge_drop import box_areas
from boxcaseg.structures import box_iou, snap_box


@dataclass
class BoxMask:
    """``mask`` (bool [r1 - r0, c1 - c0]) placed at column ``c0``, row ``r0`` of an image."""

    c0: int
    r0: int
    mask: np.ndarray

    @classmethod
    def empty_for(cls, box_xyxy: Sequence[float], height: int, width: int) -> BoxMask:
        c0, r0, c1, r1 = snap_box(box_xyxy, height, width)
        return cls(c0, r0, np.zeros((r1 - r0, c1 - c0), dtype=bool))

    @classmethod
    def filled(cls, box_xyxy: Sequence[float], height: int, width: int) -> BoxMask:
        """The filled-box baseline mask."""
        c0, r0, c1, r1 = snap_box(box_xyxy, height, width)
        return cls(c0, r0, np.ones((r1 - r0, c1 - c0), dtype=bool))

    @classmethod
    def from_full(cls, full: np.ndarray, box_xyxy: Sequence[float]) -> BoxMask:
        """Crop a full-image mask [H, W] that is confined to the box to the box's pixels."""
        h, w = full.shape
        c0, r0, c1, r1 = snap_box(box_xyxy, h, w)
        return cls(c0, r0, np.ascontiguousarray(full[r0:r1, c0:c1], dtype=bool))

    def to_full(self, height: int, width: int) -> np.ndarray:
        full = np.zeros((height, width), dtype=bool)
        h, w = self.mask.shape
        full[self.r0:self.r0 + h, self.c0:self.c0 + w] = self.mask
        return full

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def tight_box(self) -> tuple[int, int, int, int] | None:
        """Tight integer XYXY box (pixel edges, image coordinates); None if empty."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.mask.any(axis=0))
        return (self.c0 + int(cols[0]), self.r0 + int(rows[0]),
                self.c0 + int(cols[-1]) + 1, self.r0 + int(rows[-1]) + 1)


def merge_smaller_first(masks: Sequence[BoxMask], boxes_xyxy: np.ndarray, height: int,
                        width: int) -> list[BoxMask]:
    """``merge_drop.merge_smaller_first`` for box masks: one [H, W] canvas, not K of them."""
    claimed = np.zeros((height, width), dtype=bool)
    out: list[BoxMask | None] = [None] * len(masks)
    for k in np.argsort(box_areas(boxes_xyxy), kind="stable"):
        m = masks[k]
        h, w = m.mask.shape
        region = claimed[m.r0:m.r0 + h, m.c0:m.c0 + w]
        out[k] = BoxMask(m.c0, m.r0, m.mask & ~region)
        region |= m.mask
    return out  # type: ignore[return-value]


def drop_decisions(masks: Sequence[BoxMask], boxes_xyxy: np.ndarray, height: int, width: int,
                   drop_iou: float, drop: bool = True) -> tuple[list[float], list[bool]]:
    """``merge_drop.drop_decisions`` for box masks (proxy box agreement, empty -> ignored)."""
    ious: list[float] = []
    ignore: list[bool] = []
    for m, b in zip(masks, np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)):
        tight = m.tight_box()
        iou = 0.0 if tight is None else box_iou(tight, snap_box(b, height, width))
        ious.append(iou)
        ignore.append(bool(tight is None or (drop and iou < drop_iou)))
    return ious, ignore


def to_rle(m: BoxMask, height: int, width: int) -> dict[str, Any]:
    """Compressed COCO RLE (``counts`` a str) of the full-image mask, without building it.

    COCO RLE runs go down the columns of the whole image; the box's runs are found column by
    column and shifted to image positions, runs that continue from the bottom of one column to
    the top of the next are joined, and pycocotools compresses the counts.
    """
    total = height * width
    h, w = m.mask.shape
    if h == 0 or w == 0 or not m.mask.any():
        counts = [total]
    else:
        cols = np.zeros((w, h + 2), dtype=np.int8)
        cols[:, 1:-1] = m.mask.T
        d = np.diff(cols, axis=1)
        cs, rs = np.nonzero(d == 1)
        ce, re_ = np.nonzero(d == -1)
        starts = (m.c0 + cs).astype(np.int64) * height + m.r0 + rs
        ends = (m.c0 + ce).astype(np.int64) * height + m.r0 + re_
        joined = ends[:-1] == starts[1:]
        starts = starts[np.r_[True, ~joined]]
        ends = ends[np.r_[~joined, True]]
        edges = np.empty(2 * len(starts) + 2, dtype=np.int64)
        edges[0], edges[-1] = 0, total
        edges[1:-1:2], edges[2:-1:2] = starts, ends
        counts = np.diff(edges).tolist()
        if counts[-1] == 0:  # the mask reaches the last pixel: pycocotools writes no 0 run
            counts.pop()
    rle = mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
