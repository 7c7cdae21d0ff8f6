"""Deterministic synthetic data for the demo: a salient set and a box-supervised set whose
ground-truth masks are kept aside, so every stage can be measured against the truth.

Layout written by :func:`make_demo_data` (``OUT`` = ``out_dir``)::

    OUT/salient/images/NNNNN.jpg   one large object per image (20-60 % of the image)
    OUT/salient/masks/NNNNN.png    its mask, 0/255 (read by boxcaseg.data.salient.SalientFolder)
    OUT/boxes/images/NNNNN.jpg     train images 00000.. then val images (numbering continues)
    OUT/boxes/train.json           COCO, boxes only (bbox, area = box area, iscrowd 0)
    OUT/boxes/train_gt.json        the same ids + segmentation (compressed RLE), area = mask area
    OUT/boxes/val_gt.json          val images with boxes and GT masks
    OUT/README.txt, OUT/meta.json  description; seed, sizes, counts (written last)

Design choices (the data measures the method, so it must not be trivial):

* Salient objects and box objects come from *different* shape families and textures, so what
  transfers is class-agnostic "objectness", as with DUTS -> VOC/COCO. Salient shapes: smooth
  radial-Fourier blobs, convex polygons, stars, blobs with a thin limb or a handle. Box
  categories: disc, ring, cross, crescent.
* Foreground and background are both textured (two-colour patterns with lighting and grain),
  objects cast soft shadows and are shaded, and the colour contrast between object and what
  lies under it ranges from easy to low, so neither colour thresholding nor GrabCut solves it.
* Box images hold 1-8 objects that overlap; some put a small object inside a large object's
  box (person-on-motorbike). Later objects are drawn on top; each GT mask is the object's
  *visible* part (as in COCO) and its box is the tight box of that mask
  (:func:`boxcaseg.structures.mask_to_box`), so ``box_to_mask(bbox)`` contains the mask
  exactly. A placement that would leave any object with a visible part below
  ``MIN_VISIBLE_FRACTION`` of its full area or below ``MIN_VISIBLE_PIXELS`` pixels is redrawn
  (or the new object is left out), so no drawn object goes unannotated.
* Every image comes from its own generator seeded by ``(seed, split, index)``: the same seed
  gives byte-identical JSON and identical pixels, and changing one split's count does not
  change the other splits' images. JPEGs are written by Pillow at quality 92.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from boxcaseg.io import atomic_write, atomic_write_json, atomic_write_text
from boxcaseg.structures import mask_to_box, mask_to_rle

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
JPEG_QUALITY = 92
CATEGORIES = ("disc", "ring", "cross", "crescent")
SALIENT_SHAPES = ("blob", "polygon", "star", "limb", "handle")
SALIENT_TEXTURES = ("noise", "stripes", "gradient", "checker", "blotches")
BOX_TEXTURES = ("dots", "crosshatch", "waves", "cells", "speckle")
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 30
SALIENT_AREA = (0.2, 0.6)
_SPLIT_IDS = {"salient": 0, "train": 1, "val": 2}
_SHIFT = 4  # cv2 sub-pixel bits for polygon vertices
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------- textures

def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx, yy


def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1], float32 [H, W]: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, int(math.ceil(h / cell)) + 2), max(2, int(math.ceil(w / cell)) + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo + 1e-6)


def _rotated(xx: np.ndarray, yy: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    return xx * c + yy * s, -xx * s + yy * c


def _pattern(rng: np.random.Generator, kind: str, h: int, w: int, scale: float) -> np.ndarray:
    """A two-colour mixing pattern in [0, 1], float32 [H, W]. ``scale`` ~ image side / 256."""
    xx, yy = _coords(h, w)
    theta = rng.uniform(0, math.pi)
    if kind == "noise":
        return _lowfreq(rng, h, w, rng.uniform(3, 10) * scale)
    if kind == "stripes":
        u, _ = _rotated(xx, yy, theta)
        p = 0.5 + 0.5 * np.sin(2 * math.pi * u / (rng.uniform(5, 22) * scale) + rng.uniform(0, 6.3))
        return (p > 0.5).astype(np.float32) * 0.8 + p * 0.2 if rng.random() < 0.5 else p
    if kind == "gradient":
        u, _ = _rotated(xx, yy, rng.uniform(0, 2 * math.pi))
        return (u - u.min()) / (u.max() - u.min() + 1e-6)
    if kind == "checker":
        u, v = _rotated(xx, yy, theta)
        period = rng.uniform(6, 24) * scale
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "blotches":
        n = _lowfreq(rng, h, w, rng.uniform(10, 30) * scale)
        return np.clip((n - rng.uniform(0.35, 0.65)) * 8 + 0.5, 0, 1)
    if kind == "dots":
        u, v = _rotated(xx, yy, theta)
        period = rng.uniform(6, 16) * scale
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return (du * du + dv * dv < (rng.uniform(0.2, 0.4) * period) ** 2).astype(np.float32)
    if kind == "crosshatch":
        u, v = _rotated(xx, yy, theta)
        period = rng.uniform(5, 12) * scale
        width = rng.uniform(0.15, 0.35) * period
        return ((u % period < width) | (v % period < width)).astype(np.float32)
    if kind == "waves":
        cx, cy = rng.uniform(-0.5, 1.5) * w, rng.uniform(-0.5, 1.5) * h
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        return 0.5 + 0.5 * np.sin(2 * math.pi * r / (rng.uniform(4, 14) * scale))
    if kind == "cells":
        k = int(np.clip(h * w / (rng.uniform(80, 300) * scale * scale), 2, 64))
        px, py = rng.uniform(0, w, k).astype(np.float32), rng.uniform(0, h, k).astype(np.float32)
        d = (xx[..., None] - px) ** 2 + (yy[..., None] - py) ** 2
        return rng.random(k, dtype=np.float32)[np.argmin(d, axis=-1)]
    if kind == "speckle":
        p = (rng.random((h, w), dtype=np.float32) < rng.uniform(0.2, 0.5)).astype(np.float32)
        return cv2.GaussianBlur(p, (0, 0), 0.7)
    raise ValueError(f"unknown texture {kind!r}")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(30, 225, 3).astype(np.float32)


def _offset_colour(rng: np.random.Generator, base: np.ndarray, dist: float) -> np.ndarray:
    """A colour about ``dist`` (RGB Euclidean) from ``base``, kept inside [10, 245]."""
    d = rng.normal(size=3).astype(np.float32)
    d *= dist / (np.linalg.norm(d) + 1e-6)
    return np.clip(base + d, 10, 245)


@dataclass
class Palette:
    """The two colours of a texture plus its pattern kind."""

    kind: str
    c1: np.ndarray
    c2: np.ndarray


def _render(rng: np.random.Generator, pal: Palette, h: int, w: int, scale: float,
            shading: float = 0.0, grain: float = 4.0) -> np.ndarray:
    """float32 [H, W, 3] texture: pattern-mixed colours, lighting variation, pixel grain."""
    p = _pattern(rng, pal.kind, h, w, scale)
    img = pal.c1 + (pal.c2 - pal.c1) * p[..., None]
    light = 1.0 + 0.18 * (_lowfreq(rng, h, w, 40 * scale) - 0.5)
    if shading > 0:  # a directional light ramp so one colour model does not fit the object
        xx, yy = _coords(h, w)
        u, _ = _rotated(xx, yy, rng.uniform(0, 2 * math.pi))
        light = light + shading * ((u - u.min()) / (u.max() - u.min() + 1e-6) - 0.5)
    img = img * light[..., None]
    img += rng.normal(0.0, grain, (h, w, 1)).astype(np.float32)  # luminance grain
    return img


def _object_palette(rng: np.random.Generator, kinds: tuple[str, ...], under: Palette,
                    contrast: float) -> Palette:
    """Object colours ``contrast``-far from the colours beneath (0 = hard, 1 = easy)."""
    dist = 12 + 95 * contrast
    ref = under.c1 if rng.random() < 0.5 else under.c2
    c1 = _offset_colour(rng, ref, dist)
    # The second colour sometimes re-uses the other background colour: then no single
    # colour separates object from background.
    c2 = (_offset_colour(rng, under.c2 if ref is under.c1 else under.c1, 0.5 * dist)
          if rng.random() < 0.4 else _offset_colour(rng, c1, rng.uniform(25, 80)))
    return Palette(str(rng.choice(kinds)), c1, c2)


def _background_palette(rng: np.random.Generator, kinds: tuple[str, ...]) -> Palette:
    c1 = _colour(rng)
    return Palette(str(rng.choice(kinds)), c1, _offset_colour(rng, c1, rng.uniform(30, 110)))


# --------------------------------------------------------------------------- shapes

@dataclass
class Shape:
    """A shape in unit coordinates (about radius 1 around the origin).

    ``parts`` are drawn in order: ``("fill", pts)`` / ``("erase", pts)`` closed polygons,
    ``("line", pts, thickness)`` open polylines with a thickness in unit coordinates.
    """

    parts: list[tuple] = field(default_factory=list)

    def extent(self) -> tuple[float, float, float, float]:
        pts, pad = [], 0.0
        for part in self.parts:
            if part[0] != "erase":
                pts.append(part[1])
            if part[0] == "line":
                pad = max(pad, part[2] / 2)
        allp = np.concatenate(pts)
        return (float(allp[:, 0].min() - pad), float(allp[:, 1].min() - pad),
                float(allp[:, 0].max() + pad), float(allp[:, 1].max() + pad))

    def raster(self, h: int, w: int, cx: float, cy: float, scale: float) -> np.ndarray:
        """bool [H, W]: the shape scaled by ``scale`` pixels per unit, centred at (cx, cy)."""
        m = np.zeros((h, w), np.uint8)
        for part in self.parts:
            pts = np.round((part[1] * scale + (cx, cy)) * _ONE).astype(np.int32)
            if part[0] == "line":
                t = max(2, int(round(part[2] * scale)))
                cv2.polylines(m, [pts], False, 1, thickness=t, lineType=cv2.LINE_8, shift=_SHIFT)
            else:
                cv2.fillPoly(m, [pts], 1 if part[0] == "fill" else 0, lineType=cv2.LINE_8,
                             shift=_SHIFT)
        return m.astype(bool)


def _rot(pts: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return pts @ np.array([[c, s], [-s, c]], np.float64)


def _polar(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _ellipse(a: float, b: float, theta: float = 0.0, centre=(0.0, 0.0), n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return _rot(np.stack([a * np.cos(t), b * np.sin(t)], axis=1), theta) + centre


def _fourier_blob(rng: np.random.Generator, strength: float) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 160, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 8):
        r += rng.uniform(0, strength / k ** 0.7) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    return _polar(np.clip(r, 0.3, None), t) * rng.uniform(0.8, 1.0, 2)  # mild anisotropy


def salient_shape(rng: np.random.Generator, kind: str) -> Shape:
    """One salient object: ``blob``, ``polygon`` (convex), ``star`` (concave), ``limb`` (blob +
    thin bent limbs) or ``handle`` (blob + thin arc attached at both ends)."""
    theta = rng.uniform(0, 2 * math.pi)
    if kind == "blob":
        return Shape([("fill", _rot(_fourier_blob(rng, 0.45), theta))])
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        return Shape([("fill", _rot(_polar(rng.uniform(0.85, 1.0, n), t), theta))])
    if kind == "star":
        n = int(rng.integers(4, 9))
        t = np.arange(2 * n) * math.pi / n + rng.uniform(-0.15, 0.15, 2 * n) * math.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.7))
        return Shape([("fill", _rot(_polar(r * rng.uniform(0.9, 1.0, 2 * n), t), theta))])
    if kind in ("limb", "handle"):
        body = _fourier_blob(rng, 0.25) * 0.75
        parts: list[tuple] = [("fill", body)]
        if kind == "limb":
            for _ in range(int(rng.integers(1, 3))):
                a = rng.uniform(0, 2 * math.pi)
                bend = a + rng.uniform(-0.9, 0.9)
                l1, l2 = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.7)
                p1 = np.array([math.cos(a), math.sin(a)]) * l1
                p2 = p1 + np.array([math.cos(bend), math.sin(bend)]) * l2
                parts.append(("line", np.stack([np.zeros(2), p1, p2]), rng.uniform(0.05, 0.12)))
        else:
            a = rng.uniform(0, 2 * math.pi)
            centre = np.array([math.cos(a), math.sin(a)]) * 0.7
            t = a + np.linspace(-1.6, 1.6, 40)
            arc = centre + _polar(np.full_like(t, rng.uniform(0.35, 0.55)), t)
            parts.append(("line", arc, rng.uniform(0.05, 0.1)))
        return Shape([(p[0], _rot(p[1], theta), *p[2:]) for p in parts])
    raise ValueError(f"unknown salient shape {kind!r}")


def box_shape(rng: np.random.Generator, category: str) -> Shape:
    """One box-set object of ``category`` (see :data:`CATEGORIES`)."""
    theta = rng.uniform(0, 2 * math.pi)
    if category == "disc":
        return Shape([("fill", _ellipse(1.0, rng.uniform(0.6, 1.0), theta))])
    if category == "ring":
        b = rng.uniform(0.7, 1.0)
        k = rng.uniform(0.35, 0.6)
        return Shape([("fill", _ellipse(1.0, b, theta)), ("erase", _ellipse(k, k * b, theta))])
    if category == "cross":
        t = rng.uniform(0.28, 0.45)
        la, lb = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)
        pts = np.array([[t, t], [la, t], [la, -t], [t, -t], [t, -lb], [-t, -lb], [-t, -t],
                        [-la, -t], [-la, t], [-t, t], [-t, lb], [t, lb]], np.float64)
        return Shape([("fill", _rot(pts, theta))])
    if category == "crescent":
        r2 = rng.uniform(0.7, 0.9)
        off = _rot(np.array([[rng.uniform(0.5, 0.75), 0.0]]), theta)[0]
        return Shape([("fill", _ellipse(1.0, 1.0)), ("erase", _ellipse(r2, r2, centre=off))])
    raise ValueError(f"unknown category {category!r}")


def _place(rng: np.random.Generator, shape: Shape, h: int, w: int, scale: float,
           region: tuple[float, float, float, float] | None = None) -> tuple[float, float] | None:
    """A random centre that keeps the scaled shape's extent inside ``region`` (default: the
    image, 1 px margin); ``None`` if it does not fit."""
    x0, y0, x1, y1 = shape.extent()
    rx0, ry0, rx1, ry1 = region if region is not None else (1.0, 1.0, w - 1.0, h - 1.0)
    lo_x, hi_x = rx0 - x0 * scale, rx1 - x1 * scale
    lo_y, hi_y = ry0 - y0 * scale, ry1 - y1 * scale
    if lo_x > hi_x or lo_y > hi_y:
        return None
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


# --------------------------------------------------------------------------- composition

def _composite(canvas: np.ndarray, tex: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
               scale: float, shadow: bool) -> None:
    """Draw a textured object onto ``canvas`` (float32 [H, W, 3]) in place: optional soft drop
    shadow, then the object with slightly soft (anti-aliased) edges."""
    m = mask.astype(np.float32)
    if shadow:
        dx, dy = rng.uniform(-5, 5, 2) * scale
        sh = cv2.warpAffine(m, np.float32([[1, 0, dx], [0, 1, dy]]), (m.shape[1], m.shape[0]))
        sh = cv2.GaussianBlur(sh, (0, 0), rng.uniform(1.5, 4.0) * scale)
        canvas *= (1.0 - rng.uniform(0.2, 0.45) * sh)[..., None]
    alpha = cv2.GaussianBlur(m, (0, 0), 0.6)[..., None]
    canvas *= 1.0 - alpha
    canvas += tex * alpha


def _finish(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def salient_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb uint8 [S, S, 3], mask bool [S, S])``: one connected object covering 20-60 %."""
    scale = size / 256
    for _ in range(50):
        shape = salient_shape(rng, str(rng.choice(SALIENT_SHAPES)))
        target = rng.uniform(*SALIENT_AREA) * size * size
        s0 = 0.3 * size
        a0 = shape.raster(size, size, size / 2, size / 2, s0).sum()
        if a0 == 0:
            continue
        x0, y0, x1, y1 = shape.extent()
        s = min(s0 * math.sqrt(target / a0), 0.96 * size / max(x1 - x0, y1 - y0))
        centre = _place(rng, shape, size, size, s)
        if centre is None:
            continue
        mask = shape.raster(size, size, centre[0], centre[1], s)
        frac = mask.mean()
        n_comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
        if SALIENT_AREA[0] <= frac <= SALIENT_AREA[1] and n_comp == 1:
            break
    else:  # pragma: no cover - 50 misses in a row does not happen with these parameters
        raise RuntimeError("could not draw a salient object")
    bg = _background_palette(rng, SALIENT_TEXTURES)
    canvas = _render(rng, bg, size, size, scale, shading=rng.uniform(0, 0.3),
                     grain=rng.uniform(2, 7))
    fg = _object_palette(rng, SALIENT_TEXTURES, bg, rng.uniform(0, 1) ** 1.3)
    tex = _render(rng, fg, size, size, scale, shading=rng.uniform(0.1, 0.45),
                  grain=rng.uniform(2, 7))
    _composite(canvas, tex, mask, rng, scale, shadow=rng.random() < 0.5)
    return _finish(canvas), mask


@dataclass
class BoxObject:
    category: int          # 1-based category id (CATEGORIES order)
    full: np.ndarray       # bool [H, W], the whole object
    visible: np.ndarray    # bool [H, W], the part not covered by later objects


def _visible_ok(objects: list[BoxObject]) -> bool:
    return all(o.visible.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * o.full.sum())
               for o in objects)


def _try_add(objects: list[BoxObject], new: np.ndarray, cat: int) -> bool:
    """Put ``new`` on top of ``objects`` if everyone stays visible enough; True if added."""
    if new.sum() < MIN_VISIBLE_PIXELS:
        return False
    trial = [BoxObject(o.category, o.full, o.visible & ~new) for o in objects]
    if not _visible_ok(trial):
        return False
    objects[:] = trial + [BoxObject(cat, new, new.copy())]
    return True


def _object_size(rng: np.random.Generator, side: int) -> float:
    """Longer side (px) of an object's box: ~20 % small (< 32 px at 256), the rest up to 0.6 S."""
    if rng.random() < 0.2:
        return rng.uniform(max(10.0, 0.05 * side), max(12.0, 0.125 * side))
    return math.exp(rng.uniform(math.log(0.125 * side), math.log(0.6 * side)))


def box_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[BoxObject]]:
    """``(rgb uint8 [H, W, 3], objects)`` with ``W = size`` and ``H`` in ``[0.75, 1] * size``.
    Objects are in drawing order (later on top); ``visible`` is the GT mask."""
    w = size
    h = int(round(size * rng.uniform(0.75, 1.0)))
    scale = size / 256
    n_wanted = int(rng.choice(np.arange(1, 9), p=[.12, .18, .18, .16, .12, .1, .08, .06]))
    nested = n_wanted >= 2 and rng.random() < 0.4
    objects: list[BoxObject] = []
    for k in range(n_wanted):
        cat = int(rng.integers(len(CATEGORIES)))
        for _ in range(20):
            shape = box_shape(rng, CATEGORIES[cat])
            x0, y0, x1, y1 = shape.extent()
            region = None
            if nested and k == 0:  # the large "motorbike"
                side = rng.uniform(0.45, 0.8) * min(h, w)
            elif nested and k == 1:  # the small "person" inside the motorbike's box
                big = mask_to_box(objects[0].full) if objects else None
                if big is None:
                    break
                side = rng.uniform(0.15, 0.4) * min(big[2] - big[0], big[3] - big[1])
                region = tuple(float(v) for v in big)
            else:
                side = _object_size(rng, min(h, w))
            s = side / max(x1 - x0, y1 - y0)
            centre = _place(rng, shape, h, w, s, region)  # type: ignore[arg-type]
            if centre is None:
                continue
            if _try_add(objects, shape.raster(h, w, centre[0], centre[1], s), cat + 1):
                break

    bg = _background_palette(rng, SALIENT_TEXTURES[:3] + BOX_TEXTURES)
    canvas = _render(rng, bg, h, w, scale, shading=rng.uniform(0, 0.3), grain=rng.uniform(2, 7))
    for obj in objects:
        box = mask_to_box(obj.full)
        assert box is not None
        c0, r0, c1, r1 = box
        pal = _object_palette(rng, BOX_TEXTURES, bg, rng.uniform(0, 1))
        tex = np.zeros_like(canvas)
        tex[r0:r1, c0:c1] = _render(rng, pal, r1 - r0, c1 - c0, scale,
                                    shading=rng.uniform(0.1, 0.45), grain=rng.uniform(2, 7))
        _composite(canvas, tex, obj.full, rng, scale, shadow=rng.random() < 0.5)
    return _finish(canvas), objects


# --------------------------------------------------------------------------- writing

def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="JPEG",
                                                            quality=JPEG_QUALITY))


def _save_png(path: Path, gray: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(gray).save(tmp, format="PNG"))


def _meta_args(seed: int, n_salient: int, n_train: int, n_val: int, image_size: int,
               salient_size: int) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "seed": int(seed), "n_salient": int(n_salient),
            "n_train": int(n_train), "n_val": int(n_val), "image_size": int(image_size),
            "salient_size": int(salient_size)}


def _paths(out: Path) -> dict[str, Path]:
    return {"root": out, "salient": out / "salient",
            "salient_images": out / "salient" / "images",
            "salient_masks": out / "salient" / "masks",
            "boxes": out / "boxes", "images": out / "boxes" / "images",
            "train": out / "boxes" / "train.json", "train_gt": out / "boxes" / "train_gt.json",
            "val_gt": out / "boxes" / "val_gt.json", "readme": out / "README.txt",
            "meta": out / "meta.json"}


def _reusable(paths: dict[str, Path], args: dict[str, Any]) -> bool:
    try:
        meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or {k: meta.get(k) for k in args} != args:
        return False
    return all(paths[k].is_file() for k in ("train", "train_gt", "val_gt"))


def _remove_old_images(paths: dict[str, Path]) -> None:
    """Delete images an earlier run (other arguments) wrote, so no stale file is read as data.
    Only our own ``NNNNN.jpg|png`` names in our own folders are touched."""
    for key in ("salient_images", "salient_masks", "images"):
        if paths[key].is_dir():
            for p in paths[key].iterdir():
                if re.fullmatch(r"\d{5}\.(jpg|png)", p.name) and p.is_file():
                    p.unlink()


def _coco(images: list[dict], anns: list[dict], with_masks: bool) -> dict[str, Any]:
    out_anns = []
    for a in anns:
        b = {k: a[k] for k in ("id", "image_id", "category_id", "bbox")}
        b["iscrowd"] = 0
        if with_masks:
            b["area"] = a["mask_area"]
            b["segmentation"] = a["segmentation"]
        else:
            b["area"] = a["bbox"][2] * a["bbox"][3]
        out_anns.append(b)
    return {"info": {"description": "boxcaseg synthetic demo data", "version": FORMAT_VERSION},
            "images": images, "annotations": out_anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(CATEGORIES)]}


README = """boxcaseg synthetic demo data (written by `boxcaseg make-demo-data`, seed {seed})

salient/images/NNNNN.jpg   {n_salient} salient images ({salient_size}x{salient_size}), one object each
salient/masks/NNNNN.png    their masks, 0 = background, 255 = object
boxes/images/NNNNN.jpg     box-supervised images: 00000..{last_train} train, then {n_val} val;
                           width {image_size}, height 0.75-1.0 x width
boxes/train.json           COCO boxes of the train images (no masks): what a method may use
boxes/train_gt.json        the same ids with GT masks (RLE): only for measuring proxy masks
boxes/val_gt.json          val images with boxes and GT masks: for mask AP
meta.json                  generator arguments and counts

Categories: {categories}. GT masks are the visible parts of the objects (later objects occlude
earlier ones, as in COCO); every bbox is the tight box of its mask.
Salient shapes (blobs, polygons, stars, limbs, handles) and textures differ from the box
categories and their textures on purpose: the transfer is class-agnostic.
"""


def make_demo_data(out_dir: str | os.PathLike, seed: int = 0, *, n_salient: int = 300,
                   n_train: int = 120, n_val: int = 40, image_size: int = 256,
                   salient_size: int = 224, progress: bool = False) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` (layout: module docstring).

    Returns the paths by name: ``root``, ``salient`` (a SalientFolder root),
    ``salient_images``, ``salient_masks``, ``boxes``, ``images`` (COCO image root of all box
    JSONs), ``train``, ``train_gt``, ``val_gt``, ``readme``, ``meta``. If ``out_dir/meta.json``
    already records the same arguments the existing data is reused and nothing is written.
    """
    for name, v, lo in (("n_salient", n_salient, 1), ("n_train", n_train, 1), ("n_val", n_val, 0),
                        ("image_size", image_size, 48), ("salient_size", salient_size, 48)):
        if int(v) < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    out = Path(out_dir)
    paths = _paths(out)
    args = _meta_args(seed, n_salient, n_train, n_val, image_size, salient_size)
    if _reusable(paths, args):
        log.info("%s: demo data with the same arguments already there, reused", out)
        return paths
    paths["meta"].unlink(missing_ok=True)  # incomplete until the new meta.json is written
    _remove_old_images(paths)

    counts: Counter = Counter()
    bar = tqdm(total=n_salient + n_train + n_val, desc="demo data", unit="img",
               disable=not progress)
    for i in range(n_salient):
        rgb, mask = salient_image(_image_rng(seed, "salient", i), salient_size)
        _save_jpeg(paths["salient_images"] / f"{i:05d}.jpg", rgb)
        _save_png(paths["salient_masks"] / f"{i:05d}.png", mask.astype(np.uint8) * 255)
        counts["salient_images"] += 1
        bar.update()

    splits: dict[str, tuple[list[dict], list[dict]]] = {"train": ([], []), "val": ([], [])}
    ann_id = 0
    for split, n, first in (("train", n_train, 0), ("val", n_val, n_train)):
        images, anns = splits[split]
        for i in range(n):
            rgb, objects = box_image(_image_rng(seed, split, i), image_size)
            file_name = f"{first + i:05d}.jpg"
            _save_jpeg(paths["images"] / file_name, rgb)
            image_id = first + i + 1
            images.append({"id": image_id, "file_name": file_name,
                           "width": int(rgb.shape[1]), "height": int(rgb.shape[0])})
            for obj in objects:
                box = mask_to_box(obj.visible)
                assert box is not None
                ann_id += 1
                anns.append({"id": ann_id, "image_id": image_id, "category_id": obj.category,
                             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                             "mask_area": int(obj.visible.sum()),
                             "segmentation": mask_to_rle(obj.visible)})
                counts[f"{split}_objects"] += 1
            counts[f"{split}_images"] += 1
            bar.update()
    bar.close()

    atomic_write_json(paths["train"], _coco(*splits["train"], with_masks=False))
    atomic_write_json(paths["train_gt"], _coco(*splits["train"], with_masks=True))
    atomic_write_json(paths["val_gt"], _coco(*splits["val"], with_masks=True))
    atomic_write_text(paths["readme"], README.format(
        seed=seed, n_salient=n_salient, salient_size=salient_size, last_train=f"{n_train - 1:05d}",
        n_val=n_val, image_size=image_size, categories=", ".join(CATEGORIES)))
    atomic_write_json(paths["meta"], {**args, "counts": dict(sorted(counts.items())),
                                      "categories": list(CATEGORIES)}, indent=2)
    log.info("%s: wrote %s", out, dict(counts))
    return paths


__all__: list[str] = ["CATEGORIES", "make_demo_data", "salient_image", "box_image",
                      "salient_shape", "box_shape", "Shape", "BoxObject"]
