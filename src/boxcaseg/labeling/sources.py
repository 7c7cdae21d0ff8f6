"""Mask sources: where a box's raw mask comes from, behind one small interface.

A :class:`MaskSource` turns images and their boxes into one raw mask per box
(:class:`~boxcaseg.labeling.masks.BoxMask`, confined to the pixels the box covers) and,
where it has one, its own estimate of each mask's IoU with the true object
(``quality``: the network's soft IoU under its probability map, a SAM model's predicted IoU;
``None`` where the source has none). Merge, drop and the score (``labeling.postprocess``) are
the same for every source, so a new source (another network, a user's own model) is one
class: subclass :class:`MaskSource`, give it a ``name`` (written as ``mask_source``) and
implement :meth:`MaskSource.masks`.

Sources take a list of images at once so that a network can batch the crops of several
images into one forward pass; the labeler calls them with a chunk of images.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from boxcaseg.labeling.masks import BoxMask
from boxcaseg.structures import box_to_mask, snap_box

log = logging.getLogger(__name__)

GRABCUT_SEED = 0
MIN_RECT_SIDE = 2  # cv2.grabCut needs a rectangle of at least 2 x 2 pixels to fit its GMMs


@dataclass
class SourceMasks:
    """A source's answer for the K boxes of one image.

    ``masks``: K box masks, in box order. ``quality``: K floats in [0, 1] (the source's own
    expected IoU of each mask) or None. ``fallbacks``: boxes the source could not handle and
    answered with the filled box (GrabCut on degenerate boxes)."""

    masks: list[BoxMask]
    quality: list[float] | None = None
    fallbacks: int = 0


class MaskSource(ABC):
    """Images + XYXY boxes -> raw box masks (no merge, no drop, no score)."""

    #: written into the labels file as ``mask_source`` (``schema.MASK_SOURCES``)
    name: str = ""

    @abstractmethod
    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
              ) -> list[SourceMasks]:
        """``images``: RGB uint8 [H_i, W_i, 3]; ``boxes``: XYXY float [K_i, 4] in pixels
        (pixel-edge coordinates, ``boxcaseg.structures``). Returns one ``SourceMasks`` per
        image, each with K_i masks."""

    def settings(self) -> dict[str, Any]:
        """What, beyond the ``LabelConfig``, changes this source's masks (it is recorded in
        the output and bound by ``--resume``); e.g. a checkpoint's identity."""
        return {}


class FilledBox(MaskSource):
    """The filled-box baseline: every pixel the box covers."""

    name = "box"

    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
              ) -> list[SourceMasks]:
        out = []
        for image, b in zip(images, boxes):
            h, w = image.shape[:2]
            out.append(SourceMasks([BoxMask.filled(x, h, w) for x in _xyxy(b)]))
        return out


class GrabCut(MaskSource):
    """GrabCut (Rother et al. 2004) initialised by the box, ``iters`` iterations."""

    name = "grabcut"

    def __init__(self, iters: int = 5) -> None:
        self.iters = int(iters)

    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
              ) -> list[SourceMasks]:
        out = []
        for image, b in zip(images, boxes):
            masks, fallbacks = [], 0
            for x in _xyxy(b):  # GrabCut needs the whole image; one full mask at a time
                m, fell_back = grabcut_mask_status(image, x, self.iters)
                masks.append(BoxMask.from_full(m, x))
                fallbacks += fell_back
            out.append(SourceMasks(masks, None, fallbacks))
        return out


class Boxcaseg(MaskSource):
    """The BoxCaseg network on box crops (``labeling.predictor.BoxcasegPredictor``); its
    quality estimate is the soft IoU of each mask under the fused probability map."""

    name = "boxcaseg"

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self._weights: str | None = None

    def settings(self) -> dict[str, Any]:
        """The model's weights, hashed: ``--resume`` with another checkpoint is refused."""
        if self._weights is None:
            h = hashlib.sha256()
            for k, v in sorted(self.predictor.model.state_dict().items()):
                v = v.detach().cpu()
                v = v.float() if v.is_floating_point() else v
                h.update(k.encode("utf-8") + v.contiguous().numpy().tobytes())
            self._weights = "sha256:" + h.hexdigest()
        return {"model": self._weights}

    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
              ) -> list[SourceMasks]:
        from boxcaseg.labeling.predictor import soft_ious

        cfg = self.predictor.cfg
        return [SourceMasks(m, soft_ious(p, cfg.threshold, cfg.threshold_mode))
                for m, p in self.predictor.predict(images, boxes)]


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def grabcut_rect(box_xyxy: Sequence[float], height: int, width: int
                 ) -> tuple[int, int, int, int] | None:
    """OpenCV ``(x, y, w, h)`` rectangle of the snapped box, or None when GrabCut cannot run:
    a side below ``MIN_RECT_SIDE`` pixels, or a box covering the whole image (no pixel
    outside it to learn the background model from)."""
    c0, r0, c1, r1 = snap_box(box_xyxy, height, width)
    w, h = c1 - c0, r1 - r0
    if w < MIN_RECT_SIDE or h < MIN_RECT_SIDE or (w == width and h == height):
        return None
    return c0, r0, w, h


def grabcut_mask_status(image: np.ndarray, box_xyxy: Sequence[float], iters: int = 5,
                        seed: int = GRABCUT_SEED) -> tuple[np.ndarray, bool]:
    """GrabCut foreground (GC_FGD | GC_PR_FGD) inside the box: (bool [H, W], fell_back).

    image: RGB uint8 [H, W, 3] (GrabCut's colour models do not care about channel order).
    Boxes GrabCut cannot handle (``grabcut_rect``, or an OpenCV error on degenerate colours)
    fall back to the filled box and return ``fell_back=True``. OpenCV's RNG (k-means init of
    the colour GMMs) is re-seeded for every box, so results do not depend on box order.
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
