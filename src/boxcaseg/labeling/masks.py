"""Per-box masks: a mask confined to its box, held as a box-sized array plus its offset.

Every labeling method confines a box's mask to the pixels the box covers
(``boxcaseg.structures.snap_box``), so a ``BoxMask`` of shape ``[r1 - r0, c1 - c0]`` at
``(c0, r0)`` carries all of it. Memory is then the sum of the box areas, not
``K x H x W`` (300 boxes on a 6000x4000 photo would be ~7 GB as full-image arrays).

Encodings (``--segmentation``): compressed COCO RLE (:func:`to_rle`, the same bytes as
``structures.mask_to_rle`` of the full mask, without building it), or polygons traced exactly
along pixel edges (:func:`mask_polygons`). COCO polygons cannot have holes (pycocotools unions
the polygons of an annotation), so each hole is cut into its outer ring by a zero-width bridge
(a "keyhole"): the bridge is walked there and back, so it encloses no pixel, and the hole is
walked in the opposite orientation, so it is excluded under both the even-odd rule
(pycocotools) and the non-zero winding rule (most drawing tools). Rasterised by pycocotools,
the polygons give back exactly the mask's pixels. An empty mask (always ``ignore_mask``)
becomes one zero-area triangle at its box corner, so ``annToMask`` still works on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.structures import snap_box

SEGMENTATIONS = ("rle", "polygon")


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


def _edge_points(contour: np.ndarray, c0: int, r0: int) -> np.ndarray:
    """Contour of the 2x-upsampled, 1-padded mask -> pixel-edge vertices in the image.

    In the 2x grid, pixel ``c`` becomes columns ``2c, 2c+1``; a border traced on column ``q``
    (outer borders on the object's own pixels, hole borders on the object pixels next to the
    hole) lies on the pixel edge ``ceil(q / 2)``.
    """
    q = contour.reshape(-1, 2).astype(np.int64) - 1
    return (q + 1) // 2 + np.array([c0, r0], dtype=np.int64)


def mask_polygons(m: BoxMask) -> list[list[int]]:
    """Exact COCO polygons (flat ``[x0, y0, x1, y1, ...]`` lists) of a box mask; see module doc."""
    h, w = m.mask.shape
    if h == 0 or w == 0 or not m.mask.any():
        return [[m.c0, m.r0] * 3]
    up = np.zeros((2 * h + 2, 2 * w + 2), dtype=np.uint8)
    up[1:-1, 1:-1] = np.kron(m.mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hier = hierarchy[0]
    polygons = []
    for i, (_, _, child, parent) in enumerate(hier):
        if parent != -1:
            continue
        ring = _edge_points(contours[i], m.c0, m.r0)
        j = child
        while j != -1:  # cut each hole in at the ring vertex nearest to it
            hole = _edge_points(contours[j], m.c0, m.r0)
            d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
            a, b = np.unravel_index(int(np.argmin(d)), d.shape)
            hole = np.roll(hole, -int(b), axis=0)
            ring = np.concatenate([ring[:a + 1], hole, hole[:1], ring[a:]])
            j = hier[j][0]
        polygons.append(ring.reshape(-1).tolist())
    return polygons


def encode_segmentation(m: BoxMask, height: int, width: int, mode: str) -> Any:
    if mode == "rle":
        return to_rle(m, height, width)
    if mode == "polygon":
        return mask_polygons(m)
    raise ValueError(f"unknown segmentation mode {mode!r}; choose one of {SEGMENTATIONS}")
