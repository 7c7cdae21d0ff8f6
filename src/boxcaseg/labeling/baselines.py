"""Box-to-mask baselines: the filled box and GrabCut (Rother et al. 2004) initialised by the box.

Both return ``bool`` [H, W] masks confined to the pixels the box covers
(``boxcaseg.structures.snap_box``: pixel centres inside the box), so they go through the same
merge/drop post-processing as BoxCaseg masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from boxcaseg.structures import box_to_mask, snap_box

log = logging.getLogger(__name__)

GRABCUT_SEED = 0
MIN_RECT_SIDE = 2  # cv2.grabCut needs a rectangle of at least 2 x 2 pixels to fit its GMMs


def box_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """The filled-box mask: bool [H, W] of the pixels the XYXY box covers."""
    return box_to_mask(box_xyxy, height, width)


def grabcut_rect(box_xyxy: Sequence[float], height: int, width: int
                 ) -> tuple[int, int, int, int] | None:
    """OpenCV ``(x, y, w, h)`` rectangle of the snapped box, or None when GrabCut cannot run.

    GrabCut cannot run when a side is below ``MIN_RECT_SIDE`` pixels, or when the box covers
    the whole image (no pixel outside it to learn the background model from).
    """
    c0, r0, c1, r1 = snap_box(box_xyxy, height, width)
    w, h = c1 - c0, r1 - r0
    if w < MIN_RECT_SIDE or h < MIN_RECT_SIDE or (w == width and h == height):
        return None
    return c0, r0, w, h


def grabcut_mask(image: np.ndarray, box_xyxy: Sequence[float], iters: int = 5,
                 seed: int = GRABCUT_SEED) -> np.ndarray:
    """GrabCut foreground inside the box; bool [H, W]. See ``grabcut_mask_status``."""
    return grabcut_mask_status(image, box_xyxy, iters, seed)[0]


def grabcut_mask_status(image: np.ndarray, box_xyxy: Sequence[float], iters: int = 5,
                        seed: int = GRABCUT_SEED) -> tuple[np.ndarray, bool]:
    """GrabCut foreground (GC_FGD | GC_PR_FGD) inside the box: (bool [H, W], fell_back).

    image: RGB uint8 [H, W, 3] (GrabCut's colour models do not care about channel order).
    Boxes GrabCut cannot handle (see ``grabcut_rect``, or an OpenCV error on degenerate
    colours) fall back to the filled box and return ``fell_back=True``. OpenCV's RNG (k-means
    init of the colour GMMs) is re-seeded for every box, so results do not depend on the order
    the boxes are done in.
    """
    height, width = image.shape[:2]
    rect = grabcut_rect(box_xyxy, height, width)
    if rect is None:
        return box_to_mask(box_xyxy, height, width), True
    img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    gc = np.zeros((height, width), dtype=np.uint8)
    bgd = np.zeros((1, 65), dtype=np.float64)
    fgd = np.zeros((1, 65), dtype=np.float64)
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(img, gc, rect, bgd, fgd, int(iters), cv2.GC_INIT_WITH_RECT)
    except cv2.error as e:  # degenerate colour statistics (e.g. a constant image)
        log.debug("grabCut failed on box %s (%s); using the filled box", list(box_xyxy), e)
        return box_to_mask(box_xyxy, height, width), True
    fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    return fg & box_to_mask(box_xyxy, height, width), False
