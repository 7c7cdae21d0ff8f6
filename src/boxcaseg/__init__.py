"""boxcaseg: box-supervised class-agnostic segmentation (BoxCaseg, CVPR 2021).

Data flows one way: readers -> model -> labeler -> trainer -> evaluation.

The Python API (names load on first use)::

    from boxcaseg import BoxLabeler, iter_labels, label_dataset
    labeler = BoxLabeler.from_checkpoint("final.pt")
    answers = labeler.label(image_rgb_uint8, boxes_xyxy)   # per box: mask, score, keep
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("BoxLabeler", "LabeledMask", "ImageLabels", "LabelConfig", "MaskSource", "SourceMasks",
        "BoxMask", "iter_labels", "ImageResult", "label_dataset", "LabelSummary", "load_labels",
        "read_labels")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from boxcaseg import labeling
        return getattr(labeling, name)
    raise AttributeError(f"module 'boxcaseg' has no attribute {name!r}")
