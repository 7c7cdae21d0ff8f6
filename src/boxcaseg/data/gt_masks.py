"""Mixed supervision: the few ground-truth masks a user already has, next to the boxes.

Which annotations carry a *ground-truth* mask (:func:`is_gt_annotation`): those with a
non-empty ``segmentation`` that was not written by ``boxcaseg label``. The labeler marks its
own masks with ``mask_source`` (``"boxcaseg"``, ``"grabcut"``, ``"box"``, ``"sam"``) and the
masks it passed through with ``"gt"``; a file labeled before ``mask_source`` existed is
recognised by its ``proxy_iou`` field. So a labels file fed back in is never mistaken for ground truth.

Where they are used:

* ``label`` keeps them byte-identical (``mask_source: "gt"``), labels only the other boxes,
  and merge lets a GT mask keep all its pixels (``labeling.labeler``);
* ``train`` turns a box crop that carries a GT mask into a pixel-supervised sample, exactly
  like a salient crop (:func:`box_crop_with_mask`; ``data.train_sets.BoxCropDataset``).
  A labels file's own masks do so only when named as ``teacher_labels`` (``data.teacher``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from boxcaseg.data.crops import _warp, box_augmentation, clip_crop_box, crop_affine, transform_box
from boxcaseg.errors import DataError
from boxcaseg.structures import NO_MASK_KEY, segmentation_to_mask

GT = "gt"  # mask_source of a mask the user gave
PROXY_SOURCES = ("boxcaseg", "grabcut", "box", "sam")  # mask_source of the labeler's own masks


def is_gt_annotation(ann: Mapping[str, Any]) -> bool:
    """True iff the raw COCO annotation carries a user-given (ground-truth) mask."""
    if ann.get("iscrowd") or ann.get(NO_MASK_KEY):  # the empty mask boxcaseg writes for
        return False                                  # boxes it could not label
    if not ann.get("segmentation"):
        return False
    source = ann.get("mask_source")
    if source is None:
        return "proxy_iou" not in ann  # a labels file from before mask_source existed
    return source == GT


def gt_annotation_ids(annotations: Sequence[Mapping[str, Any]]) -> set[int]:
    """Ids of the annotations of a raw COCO list that carry a ground-truth mask."""
    return {int(a["id"]) for a in annotations if is_gt_annotation(a)}


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
