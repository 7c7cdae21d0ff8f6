"""Overlay drawing for predictions: semi-transparent masks, boxes, class names and scores."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from boxcaseg.structures import rle_to_mask


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hue steps), deterministic."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_instances(rgb: np.ndarray, results: Sequence[Mapping[str, Any]],
                   class_names: Mapping[int, str] | None = None, alpha: float = 0.45
                   ) -> np.ndarray:
    """A copy of ``rgb`` (uint8 [H,W,3]) with each result drawn: its RLE mask blended in a
    colour per instance (``alpha``), its ``bbox`` ([x,y,w,h]) outlined, and
    ``"<class> <score>"`` written above the box. Results are drawn lowest score first so the
    most confident ends on top."""
    canvas = rgb.astype(np.float32).copy()
    h, w = rgb.shape[:2]
    order = sorted(range(len(results)), key=lambda i: float(results[i].get("score", 0.0)))
    colours = palette(max(len(results), 1))
    for rank, i in enumerate(order):
        r = results[i]
        colour = np.array(colours[rank], dtype=np.float32)
        seg = r.get("segmentation")
        if seg is not None:
            m = rle_to_mask(seg)
            if m.shape == (h, w):
                canvas[m] = (1 - alpha) * canvas[m] + alpha * colour
    out = np.clip(canvas, 0, 255).astype(np.uint8)
    scale = max(0.3, min(h, w) / 600.0)
    for rank, i in enumerate(order):
        r = results[i]
        colour = tuple(int(c) for c in colours[rank])
        if "bbox" in r:
            x, y, bw, bh = (float(v) for v in r["bbox"])
            p1 = (int(round(x)), int(round(y)))
            p2 = (int(round(x + bw)) - 1, int(round(y + bh)) - 1)
            cv2.rectangle(out, p1, p2, colour, 1, cv2.LINE_AA)
            cid = int(r.get("category_id", -1))
            name = class_names.get(cid, str(cid)) if class_names else str(cid)
            label = f"{name} {float(r.get('score', 0.0)):.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else min(h - 1, p1[1] + th + 2)
            cv2.rectangle(out, (p1[0], ty - th - 1), (p1[0] + tw, ty + base - 1), colour, -1)
            cv2.putText(out, label, (p1[0], ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (0, 0, 0), 1, cv2.LINE_AA)
    return out
