"""Image-driven refinement of a box's probability map at full resolution.

The network answers on a coarse grid (a 160-pixel crop at stride 4: 40 x 40 cells for the
whole box), so on a large box each cell spans many pixels and the upsampled mask cannot follow
the object's edge; GrabCut's colour model can. Two refinements use the photo itself:

* ``guided``: a guided filter (He et al., TPAMI 2013) of the probability map with the image
  as guide: the map keeps its values in flat regions and takes the image's edges where it
  changes. Box filters only: about as cheap as the paste itself.
* ``grabcut``: GrabCut initialised with the network's map instead of a rectangle: confident
  pixels are fixed, the rest is "probably" foreground or background by the 0.5 threshold,
  and the margin around the box is background. Slower (a quality mode).

Both return a bool mask over the box's pixels (``p`` is box-local, float in [0, 1]).
"""

from __future__ import annotations

import cv2
import numpy as np

SURE = 0.9          # grabcut: p >= SURE is fixed foreground, p <= 1 - SURE fixed background
MARGIN = 0.25       # grabcut: background context around the box, as a fraction of its size
GRABCUT_ITERS = 3
GUIDED_EPS = 1e-2   # guided filter regularisation (image in [0, 1])


def refine_mask(mode: str, image: np.ndarray, c0: int, r0: int, p: np.ndarray,
                threshold: float) -> np.ndarray:
    if mode == "guided":
        return guided(image, c0, r0, p) >= threshold
    if mode == "grabcut":
        return grabcut(image, c0, r0, p, threshold)
    raise ValueError(f"unknown refinement {mode!r}")


def guided(image: np.ndarray, c0: int, r0: int, p: np.ndarray) -> np.ndarray:
    """Guided filter of ``p`` with the grey image under the box as guide; the radius is one
    network cell (1/40 of the box's longer side), so only edges within a cell move."""
    h, w = p.shape
    guide = cv2.cvtColor(np.ascontiguousarray(image[r0:r0 + h, c0:c0 + w]),
                         cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    r = max(1, int(round(max(h, w) / 40)))
    k = (2 * r + 1, 2 * r + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    p = p.astype(np.float32)
    mi, mp = mean(guide), mean(p)
    var = mean(guide * guide) - mi * mi
    cov = mean(guide * p) - mi * mp
    a = cov / (var + GUIDED_EPS)
    b = mp - a * mi
    return mean(a) * guide + mean(b)


def grabcut(image: np.ndarray, c0: int, r0: int, p: np.ndarray, threshold: float) -> np.ndarray:
    """GrabCut over the box plus a background margin, seeded by ``p``; the plain threshold
    where GrabCut cannot run (a seed without foreground or background)."""
    h, w = p.shape
    H, W = image.shape[:2]
    mx, my = max(2, int(round(w * MARGIN))), max(2, int(round(h * MARGIN)))
    x0, y0, x1, y1 = max(c0 - mx, 0), max(r0 - my, 0), min(c0 + w + mx, W), min(r0 + h + my, H)
    seed = np.full((y1 - y0, x1 - x0), cv2.GC_BGD, dtype=np.uint8)
    inner = np.where(p >= threshold, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    inner[p >= SURE] = cv2.GC_FGD
    inner[p <= 1 - SURE] = cv2.GC_PR_BGD  # the object may reach where the net doubts it
    seed[r0 - y0:r0 - y0 + h, c0 - x0:c0 - x0 + w] = inner
    fg = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
    if fg.sum() < 2 or (~fg).sum() < 2 or min(h, w) < 2:
        return p >= threshold
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(np.ascontiguousarray(image[y0:y1, x0:x1, :3]), seed, None, bgd, fgd,
                    GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour statistics
        return p >= threshold
    out = seed[r0 - y0:r0 - y0 + h, c0 - x0:c0 - x0 + w]
    return (out == cv2.GC_FGD) | (out == cv2.GC_PR_FGD)
