"""COCO JSON reader with validation: the in-memory contract every later stage consumes.

``load_coco`` keeps the raw dict untouched (``CocoData.raw``) so writers can preserve every
field, and exposes a validated, typed view (``CocoData.images``) for the stages:

* unknown ``category_id`` / missing ``image_id`` / missing keys -> ``DataError`` naming the
  file and annotation id;
* a box sticking out of its image -> clipped, counted in ``report["clipped_box"]``, warned;
* zero or negative width/height in the file, a width or height below one pixel
  (``sub_pixel_box``), or a box lying wholly outside its image -> skipped, listed in
  ``skipped`` with the reason, counted in ``report``, warned;
* malformed entries (not an object, non-integer or quoted ("1") ids, ids outside the signed
  64-bit range, non-finite or boolean box values, duplicate image / annotation / category
  ids) -> ``DataError``;
* ``iscrowd`` annotations stay in the view (``BoxAnnotation.iscrowd``); training excludes them
  and evaluation handles them as COCO does;
* ``masks=`` ``"gt"`` / ``"truth"`` / ``"labels"``: the masks are checked too
  (:func:`boxcaseg.data.gt_masks.check_masks`): a malformed one -> ``DataError`` naming the
  annotation, its image and what to do.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxcaseg.errors import DataError
from boxcaseg.io import image_size, read_json, size_mismatch_message
from boxcaseg.structures import xywh_to_xyxy

log = logging.getLogger(__name__)


@dataclass
class BoxAnnotation:
    id: int
    image_id: int
    category_id: int
    box: tuple[float, float, float, float]  # XYXY, clipped to the image
    iscrowd: bool = False
    segmentation: Any = None  # raw COCO segmentation if the file has one


@dataclass
class ImageEntry:
    id: int
    file_name: str
    path: Path | None  # image_root / file_name, when a root was given
    width: int
    height: int
    annotations: list[BoxAnnotation] = field(default_factory=list)


@dataclass
class CocoData:
    source: str
    raw: dict[str, Any]
    images: list[ImageEntry]
    categories: dict[int, str]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (annotation id, reason)
    report: Counter = field(default_factory=Counter)

    @property
    def num_annotations(self) -> int:
        return sum(len(im.annotations) for im in self.images)

    def image_by_id(self) -> dict[int, ImageEntry]:
        return {im.id: im for im in self.images}


def _require(obj: dict[str, Any], keys: tuple[str, ...], what: str, source: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{source}: {what} is missing key(s) {missing}")


_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _int_id(value: Any, what: str, source: str) -> int:
    # a JSON string "1" is not an id: COCO tools would not match it to the integer 1
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{source}: {what} must be an integer, got {value!r} (write it as a "
                        "JSON number, without quotes)")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise DataError(f"{source}: {what} must be an integer, got {value!r}")
    number = int(value) if isinstance(value, int) else int(as_float)  # exact for big ints
    if not _INT64_MIN <= number <= _INT64_MAX:
        # the labeler keeps ids in int64 arrays, as numpy / torch / pycocotools users do
        raise DataError(f"{source}: {what} {value!r} does not fit a signed 64-bit integer "
                        f"(it must lie in -2**63 .. 2**63-1; renumber it)")
    return number


def _objects(data: dict[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    for i, entry in enumerate(data[key]):
        if not isinstance(entry, dict):
            raise DataError(f"{source}: {key}[{i}] must be a JSON object, got "
                            f"{type(entry).__name__}")
    return data[key]


def parse_coco(data: Any, source: str = "<memory>", image_root: str | os.PathLike | None = None,
               check_images: bool = False, masks: str | None = None) -> CocoData:
    if not isinstance(data, dict):
        raise DataError(f"{source}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{source}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise DataError(f"{source}: '{key}' must be a list")
    if check_images and image_root is None:
        raise ValueError("check_images=True needs image_root (where the images are)")
    categories: dict[int, str] = {}
    for c in _objects(data, "categories", source):
        _require(c, ("id",), "a category", source)
        cid = _int_id(c["id"], "category id", source)
        if cid in categories:
            raise DataError(f"{source}: duplicate category id {cid}")
        categories[cid] = str(c.get("name", c["id"]))
    root = Path(image_root) if image_root is not None else None
    images: dict[int, ImageEntry] = {}
    for im in _objects(data, "images", source):
        _require(im, ("id", "file_name", "width", "height"), f"image {im.get('id', '?')}", source)
        iid = _int_id(im["id"], "image id", source)
        if iid in images:
            raise DataError(f"{source}: duplicate image id {im['id']}")
        w = _int_id(im["width"], f"image {iid} width", source)
        h = _int_id(im["height"], f"image {iid} height", source)
        if w <= 0 or h <= 0:
            raise DataError(f"{source}: image {im['id']} ({im['file_name']}) has size {w}x{h}")
        path = root / im["file_name"] if root is not None else None
        if check_images and path is not None:
            disk = image_size(path)  # header only, EXIF orientation applied
            if disk != (w, h):
                raise DataError(size_mismatch_message(path, disk, (w, h),
                                                      f"{source} (image {iid})"))
        images[iid] = ImageEntry(iid, str(im["file_name"]), path, w, h)
    result = CocoData(source, data, list(images.values()), categories)
    seen: set[int] = set()
    for a in _objects(data, "annotations", source):
        aid = a.get("id", "?")
        _require(a, ("id", "image_id", "category_id", "bbox"), f"annotation {aid}", source)
        ann_id = _int_id(a["id"], "annotation id", source)
        if ann_id in seen:
            raise DataError(f"{source}: duplicate annotation id {aid}")
        seen.add(ann_id)
        image_id = _int_id(a["image_id"], f"annotation {aid} image_id", source)
        if image_id not in images:
            raise DataError(f"{source}: annotation {aid} refers to unknown image_id {a['image_id']}")
        category_id = _int_id(a["category_id"], f"annotation {aid} category_id", source)
        if category_id not in categories:
            raise DataError(f"{source}: annotation {aid} has unknown category_id {a['category_id']}")
        bbox = a["bbox"]
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in bbox)):
            raise DataError(f"{source}: annotation {aid} has malformed bbox {bbox!r} "
                            "(need 4 finite numbers x, y, w, h)")
        img = images[image_id]
        x1, y1, x2, y2 = xywh_to_xyxy(bbox)
        if bbox[2] <= 0 or bbox[3] <= 0:
            reason = f"zero or negative size box {list(bbox)}"
            result.skipped.append((ann_id, reason))
            result.report["zero_size_box"] += 1
            log.warning("%s: annotation %s skipped: %s", source, aid, reason)
            continue
        if bbox[2] < 1 or bbox[3] < 1:
            # no pixel-sized mask can be made or checked for it (an empty flagged mask would
            # look like a labeler failure)
            reason = f"sub-pixel box {list(bbox)} (width or height < 1 px)"
            result.skipped.append((ann_id, reason))
            result.report["sub_pixel_box"] += 1
            log.warning("%s: annotation %s skipped: %s", source, aid, reason)
            continue
        cx1, cy1 = min(max(x1, 0.0), img.width), min(max(y1, 0.0), img.height)
        cx2, cy2 = min(max(x2, 0.0), img.width), min(max(y2, 0.0), img.height)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            if cx2 <= cx1 or cy2 <= cy1:
                reason = f"box {list(bbox)} lies outside the {img.width}x{img.height} image"
                result.skipped.append((ann_id, reason))
                result.report["box_outside_image"] += 1
                log.warning("%s: annotation %s skipped: %s", source, aid, reason)
                continue
            result.report["clipped_box"] += 1
            log.warning("%s: annotation %s: box %s clipped to the %dx%d image", source, aid,
                        list(bbox), img.width, img.height)
        img.annotations.append(BoxAnnotation(
            id=ann_id, image_id=img.id, category_id=category_id,
            box=(cx1, cy1, cx2, cy2), iscrowd=bool(a.get("iscrowd", 0)),
            segmentation=a.get("segmentation") or None))
    result.report["images"] = len(result.images)
    result.report["annotations"] = result.num_annotations
    if masks is not None:
        from boxcaseg.data.gt_masks import check_masks  # cv2 & co. only when masks matter
        check_masks(result, masks)
    return result


def load_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
              check_images: bool = False, masks: str | None = None) -> CocoData:
    """Read and validate a COCO JSON file (boxes; masks optional). See module docstring."""
    return parse_coco(read_json(json_path), str(json_path), image_root, check_images, masks)
