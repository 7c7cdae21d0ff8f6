"""The auto-labeler (paper Sec. 3.4): an image and its boxes in, merged, scored, flagged masks
out, in memory. It knows nothing of files, ranks or output formats (``labeling.job`` does).

    from boxcaseg import BoxLabeler
    labeler = BoxLabeler.from_checkpoint("runs/real/final.pt")      # load once
    for m in labeler.label(image, boxes_xyxy):                        # one image's boxes
        m.mask (box-local BoxMask), m.full_mask(h, w), m.score, m.proxy_iou, m.keep

For every box: a raw mask from a :class:`~boxcaseg.labeling.sources.MaskSource` (the BoxCaseg
network, GrabCut, the filled box, SAM, your own), then, per image, merge ("smaller object
better"), drop ("proxy box agreement") and the score (``labeling.postprocess``). ``fixed``
masks (an image's ground-truth masks, mixed supervision) take part in merge and are not
returned: they stay as the user drew them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from boxcaseg.errors import ConfigError
from boxcaseg.labeling.config import METHODS, LabelConfig, resolve_crop_size
from boxcaseg.labeling.masks import BoxMask, encode_segmentation
from boxcaseg.labeling.postprocess import Decision, postprocess
from boxcaseg.labeling.sources import Boxcaseg, FilledBox, GrabCut, MaskSource


@dataclass
class LabeledMask:
    """The labeler's answer for one box (XYXY ``box``, pixels)."""

    box: tuple[float, float, float, float]
    mask: BoxMask          # box-local: ``mask.mask`` placed at column ``c0``, row ``r0``
    proxy_iou: float       # the paper's proxy box agreement
    score: float           # the predicted mask IoU (``labeling.score``)
    ignore: bool           # the ``ignore_mask`` decision (empty, or below the keep rule)
    source: str            # ``mask_source``

    @property
    def keep(self) -> bool:
        return not self.ignore

    @property
    def area(self) -> int:
        return self.mask.area

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask as bool [H, W] of the whole image."""
        return self.mask.to_full(height, width)

    def fields(self, height: int, width: int, segmentation: str = "rle") -> dict[str, Any]:
        """The annotation fields of the labels file (``labeling.schema``), in file order."""
        return {"segmentation": encode_segmentation(self.mask, height, width, segmentation),
                "area": self.area, "ignore_mask": self.ignore, "proxy_iou": self.proxy_iou,
                "score": self.score}


@dataclass
class ImageLabels:
    """All of one image's answers, in box order; ``fallbacks``: boxes the source answered
    with the filled box (GrabCut on degenerate boxes)."""

    masks: list[LabeledMask]
    fallbacks: int = 0
    height: int = 0
    width: int = 0

    def fields(self, segmentation: str = "rle") -> list[dict[str, Any]]:
        return [m.fields(self.height, self.width, segmentation) for m in self.masks]


Fixed = tuple[Sequence[BoxMask], np.ndarray]  # GT masks and their XYXY boxes [G, 4]


@dataclass
class BoxLabeler:
    """A mask source plus the ``LabelConfig`` that merges, drops and scores its masks."""

    source: MaskSource
    config: LabelConfig = field(default_factory=LabelConfig)

    @classmethod
    def for_method(cls, method: str, model: Any = None,
                   config: LabelConfig | None = None) -> BoxLabeler:
        """``"boxcaseg"`` (needs ``model``: a BoxCaseg nn.Module or a ``BoxcasegPredictor``),
        ``"grabcut"`` or ``"box"``; ``"sam"`` needs a ``SamSource`` (``labeling.sam``)."""
        cfg = config or LabelConfig()
        cfg.validate()
        if method not in METHODS:
            raise ConfigError(f"unknown labeling method {method!r}; choose one of "
                              f"{list(METHODS)}")
        if method == "box":
            return cls(FilledBox(), cfg)
        if method == "grabcut":
            return cls(GrabCut(cfg.grabcut_iters), cfg)
        if method == "boxcaseg":
            if model is None:
                raise ConfigError("method 'boxcaseg' needs a trained model (--checkpoint)")
            from boxcaseg.labeling.predictor import get_predictor
            cfg = resolve_crop_size(cfg, getattr(model, "model", model))
            return cls(Boxcaseg(get_predictor(model, cfg)), cfg)
        if isinstance(model, MaskSource) and model.name == method:
            return cls(model, cfg)
        raise ConfigError(f"method {method!r} needs its mask source (e.g. a SamSource)")

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, config: LabelConfig | None = None,
                        **overrides: Any) -> BoxLabeler:
        """Load a trained BoxCaseg checkpoint once; ``overrides``: ``LabelConfig`` fields
        (e.g. ``device="cpu"``, ``batch_size=32``)."""
        from boxcaseg.engine.distributed import resolve_device
        from boxcaseg.model import load_boxcaseg

        cfg = replace(config or LabelConfig(), **overrides)
        model, _ = load_boxcaseg(checkpoint, map_location=resolve_device(cfg.device))
        return cls.for_method("boxcaseg", model, cfg)

    @property
    def method(self) -> str:
        return self.source.name

    def label(self, image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]],
              fixed: Fixed | None = None) -> list[LabeledMask]:
        """One image: RGB uint8 [H, W, 3] and XYXY boxes [K, 4] in pixels -> K answers."""
        return self.label_batch([image], [np.asarray(boxes, dtype=np.float64)],
                                None if fixed is None else [fixed])[0].masks

    def label_batch(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                    fixed: Sequence[Fixed | None] | None = None) -> list[ImageLabels]:
        """Several images at once (a network batches their crops together)."""
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
        raw = self.source.masks(images, boxes)
        out = []
        for k, (image, b, r) in enumerate(zip(images, boxes, raw)):
            h, w = image.shape[:2]
            decisions = postprocess(r.masks, b, h, w, self.config, r.quality,
                                    None if fixed is None else fixed[k])
            out.append(ImageLabels([_answer(tuple(map(float, x)), d, self.method)
                                    for x, d in zip(b, decisions)], r.fallbacks, h, w))
        return out


def _answer(box: tuple[float, ...], d: Decision, source: str) -> LabeledMask:
    return LabeledMask(box, d.mask, d.proxy_iou, d.score, d.ignore, source)  # type: ignore[arg-type]
