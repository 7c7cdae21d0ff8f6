"""Mixed supervision: the few ground-truth masks a user already has, next to the boxes.

Which annotations carry a *ground-truth* mask: ``labeling.schema.is_gt_annotation`` (those
with a non-empty ``segmentation`` that was not written by ``boxcaseg label``).

Where they are used:

* ``label`` keeps them byte-identical (``mask_source: "gt"``), labels only the other boxes,
  and merge lets a GT mask keep all its pixels (``labeling.postprocess``);
* ``train`` turns a box crop that carries a GT mask into a pixel-supervised sample, exactly
  like a salient crop (:func:`box_crop_with_mask`; ``data.train_sets.BoxCropDataset``).
  A labels file's own masks do so only when named as ``teacher_labels`` (``data.teacher``).

Validation (:func:`segmentation_problem`, :func:`check_masks`) runs when a file is read, before
any work: a user who gives GT masks wants them trusted, so a malformed one is an error naming
the annotation, never relabeled in silence (that would hide a data bug) nor passed through to
break ``report`` / ``export`` / training later. pycocotools accepts much that is wrong (odd
polygon lengths, RLE counts of another total, polygons off the image) and crashes on some of
the rest (a 2-number polygon, a far-off point), so the checks are done here, in Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.data.crops import _warp, box_augmentation, clip_crop_box, crop_affine, transform_box
from boxcaseg.errors import DataError
from boxcaseg.labeling.schema import NO_MASK, is_gt_annotation
from boxcaseg.structures import segmentation_to_mask

if TYPE_CHECKING:
    from boxcaseg.data.coco import CocoData


def decode_gt_mask(segmentation: Any, height: int, width: int, what: str) -> np.ndarray:
    """A ground-truth ``segmentation`` -> bool [H, W]; ``DataError`` naming ``what`` if it is
    malformed or of another size than its image."""
    try:
        mask = segmentation_to_mask(segmentation, height, width)
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(f"{what}: cannot decode its ground-truth segmentation "
                        f"({type(e).__name__}: {e})") from e
    if mask.shape != (height, width):
        raise DataError(f"{what}: ground-truth mask is {mask.shape[1]}x{mask.shape[0]} but its "
                        f"image is {width}x{height}")
    return mask


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def compressed_rle_counts(counts: str) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in
    numpy), or ``None`` if the string is not a valid encoding. pycocotools itself decodes any
    string without a check, so a truncated or edited one gives a wrong mask, or worse."""
    try:
        raw = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if raw.size == 0:
        return np.zeros(0, np.int64)
    if raw.min() < 0 or raw.max() > 63 or raw[-1] & 0x20:  # outside the alphabet, or cut off
        return None
    # each value is 5-bit groups, low first, continued while bit 0x20 is set
    last = np.flatnonzero((raw & 0x20) == 0)
    start = np.concatenate(([0], last[:-1] + 1))
    length = last - start + 1
    if length.max() > 7:  # more than 35 bits: not a count pycocotools can hold
        return None
    k = np.arange(raw.size) - np.repeat(start, length)
    x = np.add.reduceat((raw & 0x1F) << (5 * k), start)
    negative = (raw[last] & 0x10) != 0  # sign bit of the last group
    x = np.where(negative, x - (np.int64(1) << (5 * length)), x)
    # from the fourth on, each is a difference to the count two before (pycocotools' m > 2)
    out = x.copy()
    out[3::2] = np.cumsum(x[3::2]) + (out[1] if len(out) > 1 else 0)
    out[4::2] = np.cumsum(x[4::2]) + (out[2] if len(out) > 2 else 0)
    return out


def segmentation_problem(segm: Any, height: int, width: int, need_pixels: bool = False
                         ) -> str | None:
    """What is wrong with a COCO ``segmentation`` on a ``width`` x ``height`` image, or None.

    Polygons: a list of polygons, each a list of finite numbers ``x y x y ...`` (an even
    count, at least 3 points), at least one of them touching the image and none with a point
    more than an image size away from it (pycocotools would rasterise the whole span: seconds,
    or a crash). RLE: a dict with ``size == [height, width]`` and ``counts`` either a valid
    compressed string or a list of non-negative integers, summing to ``height * width``.
    ``need_pixels``: the mask must also cover at least one pixel (a GT mask for a box; a
    ground-truth *file* may hold COCO's tiny objects that rasterise to nothing).
    """
    if isinstance(segm, list):
        if not segm:
            return "an empty polygon list"
        touches = False
        for k, poly in enumerate(segm):
            if not isinstance(poly, list):
                return (f"polygon {k} is a {type(poly).__name__}, not a list of numbers "
                        "(write [[x1, y1, x2, y2, ...]], numbers not strings)")
            bad = [v for v in poly if not _number(v)]
            if bad:
                return (f"polygon {k} holds {bad[0]!r}, not a finite number (write "
                        "coordinates as JSON numbers)")
            if len(poly) < 6 or len(poly) % 2:
                return (f"polygon {k} has {len(poly)} numbers; a polygon is x y pairs of at "
                        "least 3 points (an even count >= 6)")
            xs, ys = poly[0::2], poly[1::2]
            if (min(xs) < -width or max(xs) > 2 * width or min(ys) < -height
                    or max(ys) > 2 * height):
                return (f"polygon {k} has a point far outside the {width}x{height} image "
                        f"(x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}; pixel "
                        "coordinates of this image expected)")
            # inclusive: the labeler's empty-mask placeholder is a zero-area triangle at its
            # box corner, which may be the image corner (0, 0)
            touches |= (max(xs) >= 0 and min(xs) <= width and max(ys) >= 0
                        and min(ys) <= height)
        if not touches:
            return f"its polygons lie wholly outside the {width}x{height} image"
        if need_pixels:
            area = int(mask_utils.area(mask_utils.merge(
                mask_utils.frPyObjects(segm, height, width))))
            if area == 0:
                return f"its polygons cover no pixel of the {width}x{height} image"
        return None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            return f"RLE without a valid 'size' [height, width] (got {size!r})"
        if size != [height, width]:
            return (f"RLE of size {size[1]}x{size[0]} (size is [height, width]) on a "
                    f"{width}x{height} image")
        if isinstance(counts, str):
            runs = compressed_rle_counts(counts)
            if runs is None or (runs < 0).any():
                return "RLE 'counts' string that is not a valid compressed COCO RLE"
            kind = "compressed"
        elif isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in counts):
                return "RLE 'counts' list with other than non-negative integers"
            runs, kind = np.asarray(counts, dtype=np.int64), "uncompressed"
        else:
            return (f"RLE 'counts' of type {type(counts).__name__} (a compressed string or a "
                    "list of run lengths expected)")
        total = int(runs.sum())
        if total != height * width:
            return (f"{kind} RLE whose counts sum to {total}, not height x width = "
                    f"{height * width}")
        if need_pixels and not runs[1::2].any():
            return f"RLE that covers no pixel of the {width}x{height} image"
        return None
    return (f"a segmentation of type {type(segm).__name__} (a COCO segmentation is a list of "
            "polygons or an RLE dict)")


MASK_CHECKS = ("gt", "truth", "labels")


def check_masks(coco: CocoData, which: str) -> None:
    """Check the masks of a read file up front; ``DataError`` naming the first bad one.

    ``which``: ``"gt"`` the user-given masks among the boxes of a ``label`` input
    (``labeling.schema.is_gt_annotation``; each must cover a pixel), ``"truth"`` every segmentation of a
    ground-truth file (``eval`` / ``report`` / ``calibrate --gt``; crowd regions included),
    ``"labels"`` every segmentation of a labels file (``report`` / ``export``). Annotations
    the reader skipped (zero-size boxes and the like) are not checked: they pass through
    untouched and their masks are never used (COCO's own train2017 has such a box, id 918,
    whose polygon covers no pixel).
    """
    if which not in MASK_CHECKS:
        raise ValueError(f"which must be one of {MASK_CHECKS}, got {which!r}")
    images = coco.image_by_id()
    used = {b.id for im in coco.images for b in im.annotations}
    bad: list[tuple[Any, Any, str]] = []
    for a in coco.raw["annotations"]:
        if int(a["id"]) not in used:
            continue
        segm = a.get("segmentation")
        if which == "gt":
            if not is_gt_annotation(a):
                continue
        elif not segm or a.get(NO_MASK):
            continue
        im = images[int(a["image_id"])]
        problem = segmentation_problem(segm, im.height, im.width, need_pixels=which == "gt")
        if problem is not None:
            bad.append((a["id"], im, problem))
    if not bad:
        return
    aid, im, problem = bad[0]
    more = (f" ({len(bad) - 1} more bad mask(s), e.g. annotation "
            f"{', '.join(str(b[0]) for b in bad[1:4])})" if len(bad) > 1 else "")
    fix = {"gt": "fix it, delete its 'segmentation' to have the box labeled, or label with "
                 "keep_gt_masks=false to label every box and ignore the given masks",
           "truth": "fix it, or remove that annotation from the ground-truth file",
           "labels": "fix or delete that segmentation, or relabel the boxes"}[which]
    what = "ground-truth mask" if which != "labels" else "mask"
    raise DataError(f"{coco.source}: annotation {aid} (image {im.id}, {im.file_name}): bad "
                    f"{what}: {problem}{more}; {fix}")


def box_crop_with_mask(image: np.ndarray, mask: np.ndarray, gt_box_xyxy: Sequence[float],
                       out_size: int, rng: np.random.Generator, augment: bool = True,
                       jitter: str = "centre", clip: bool | None = None
                       ) -> tuple[np.ndarray, tuple[float, float, float, float], np.ndarray]:
    """:func:`boxcaseg.data.crops.augmented_box_crop` plus the object's mask in the same crop.

    Draws from ``rng`` exactly as ``augmented_box_crop`` does, so for one seed the image crop
    and the MIL box are the ones a box-only run sees (tested); the mask is warped with the same
    map (bilinear on 0/255, thresholded at half, as salient masks are). Returns
    ``(crop uint8 [S, S, 3], GT box XYXY in the crop, mask bool [S, S])``.
    """
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    x1, y1, x2, y2 = (float(v) for v in gt_box_xyxy)
    cx, cy, cw, ch = (box_augmentation((x1, y1, x2 - x1, y2 - y1), rng, jitter) if augment
                      else (x1, y1, x2 - x1, y2 - y1))
    crop_box = (cx, cy, cx + cw, cy + ch)
    if augment and (clip if clip is not None else jitter == "centre"):
        crop_box = clip_crop_box(crop_box, image.shape[1], image.shape[0])
    m = crop_affine(crop_box, out_size)
    crop = _warp(image, m, out_size, cv2.INTER_LINEAR)
    cmask = _warp(mask.astype(np.uint8) * 255, m, out_size, cv2.INTER_LINEAR) >= 128
    return crop, transform_box(gt_box_xyxy, crop_box, out_size), cmask
