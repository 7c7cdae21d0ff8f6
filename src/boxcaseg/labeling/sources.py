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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from boxcaseg.labeling.masks import BoxMask


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
