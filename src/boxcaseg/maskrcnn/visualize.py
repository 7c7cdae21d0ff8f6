"""Overlay drawing shared by ``predict``, the demo and the HTML report, so they look alike:
masks filled or outlined with ``torchvision.utils.draw_segmentation_masks``, boxes and
``"<class> <score>"`` labels with ``torchvision.utils.draw_bounding_boxes``."""

from __future__ import annotations

import colorsys
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from boxcaseg.structures import rle_to_mask

Colour = tuple[int, int, int]
GT_COLOUR: Colour = (255, 255, 255)
BOX_COLOUR: Colour = (255, 215, 0)
# black text on a box-coloured background where torchvision can draw one (>= 0.21)
_LABEL_STYLE = ({"fill_labels": True, "label_colors": (0, 0, 0)}
                if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters else {})


def palette(n: int) -> list[Colour]:
    """``n`` well-separated RGB colours (golden-ratio hue steps), deterministic."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).contiguous().numpy()


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean [H, W] band of ``width`` pixels just inside the mask's boundary (holes
    included). Pixels on the image border count as boundary."""
    m = np.pad(mask.astype(np.uint8), 1)
    inner = cv2.erode(m, np.ones((2 * width + 1, 2 * width + 1), np.uint8))[1:-1, 1:-1]
    return mask.astype(bool) & ~inner.astype(bool)


def draw_masks(rgb: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[Colour], *,
               alpha: float = 0.45, outline_width: int = 0) -> np.ndarray:
    """A copy of ``rgb`` (uint8 [H, W, 3]) with each boolean [H, W] mask blended in its colour
    (``alpha``; 0 draws no fill) and, with ``outline_width`` > 0, outlined opaquely."""
    if not len(masks):
        return rgb.copy()
    img = _chw(rgb)
    stack = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))
    cols = list(colours)
    if alpha > 0:
        img = draw_segmentation_masks(img, stack, alpha=alpha, colors=cols)
    if outline_width > 0:
        lines = torch.from_numpy(np.stack([outline(m, outline_width) for m in stack.numpy()]))
        img = draw_segmentation_masks(img, lines, alpha=1.0, colors=cols)
    return _hwc(img)


def draw_boxes(rgb: np.ndarray, boxes_xyxy: Sequence[Sequence[float]],
               colours: Sequence[Colour], labels: Sequence[str] | None = None,
               width: int = 1) -> np.ndarray:
    """A copy of ``rgb`` with XYXY boxes (pixel edges) outlined and optionally labelled."""
    if not len(boxes_xyxy):
        return rgb.copy()
    h, w = rgb.shape[:2]
    b = torch.tensor([[x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)]
                      for x1, y1, x2, y2 in boxes_xyxy], dtype=torch.float32)
    b[:, 0::2] = b[:, 0::2].clamp(0, w - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, h - 1)
    out = draw_bounding_boxes(_chw(rgb), b, labels=list(labels) if labels else None,
                              colors=list(colours), width=width,
                              **(_LABEL_STYLE if labels else {}))
    return _hwc(out)


def draw_instances(rgb: np.ndarray, results: Sequence[Mapping[str, Any]],
                   class_names: Mapping[int, str] | None = None, alpha: float = 0.45
                   ) -> np.ndarray:
    """A copy of ``rgb`` (uint8 [H,W,3]) with each result drawn: its RLE mask blended in a
    colour per instance (``alpha``), its ``bbox`` ([x,y,w,h]) outlined, and
    ``"<class> <score>"`` written in the box. Results are drawn lowest score first so the
    most confident ends on top."""
    h, w = rgb.shape[:2]
    order = sorted(range(len(results)), key=lambda i: float(results[i].get("score", 0.0)))
    colours = palette(max(len(results), 1))
    masks, mask_cols = [], []
    for rank, i in enumerate(order):
        seg = results[i].get("segmentation")
        if isinstance(seg, dict) and "counts" in seg:
            m = rle_to_mask(seg)
            if m.shape == (h, w):
                masks.append(m)
                mask_cols.append(colours[rank])
    out = draw_masks(rgb, masks, mask_cols, alpha=alpha)
    boxes, box_cols, labels = [], [], []
    for rank, i in enumerate(order):
        r = results[i]
        if "bbox" not in r:
            continue
        x, y, bw, bh = (float(v) for v in r["bbox"])
        cid = int(r.get("category_id", -1))
        name = class_names.get(cid, str(cid)) if class_names else str(cid)
        boxes.append((x, y, x + bw, y + bh))
        box_cols.append(colours[rank])
        labels.append(f"{name} {float(r.get('score', 0.0)):.2f}")
    return draw_boxes(out, boxes, box_cols, labels)
