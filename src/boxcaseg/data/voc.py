"""PASCAL VOC reader: ``Annotations/*.xml`` (+ optional instance PNGs) -> validated ``CocoData``.

Everything downstream consumes COCO, so a VOC tree is converted to a COCO dict in memory and
validated by :func:`boxcaseg.data.coco.parse_coco` (one validation path for both formats).

Conventions (see :mod:`boxcaseg.structures`):

* VOC ``bndbox`` values are 1-based *inclusive* pixel indices. Object pixels are columns
  ``xmin-1 .. xmax-1`` (0-based), so the COCO box is ``[xmin-1, ymin-1, xmax-xmin+1,
  ymax-ymin+1]``: under the pixel-centre rule it covers exactly those pixels, and the tight box
  (:func:`~boxcaseg.structures.mask_to_box`) of a mask filling them is the same box.
* ``difficult=1`` objects are written with ``iscrowd=1`` and ``difficult=1``: training keeps
  them out (crowd boxes are not trained on) and evaluation treats them as ignore regions, the
  COCO analogue of VOC's "difficult objects are neither TP nor FP".
* Image ids: VOC ids ``YYYY_NNNNNN`` become the integer ``YYYYNNNNNN`` (stable across every
  JSON made from the same VOC tree, so box / GT / proxy files agree); any other naming falls
  back to 1-based positions in the sorted id list. The original id is kept as ``voc_id``.
* Category ids are 1..K in ``class_names`` order (1..20 in :data:`VOC_CLASSES` order).
* Missing ``JPEGImages/<file>``, or one whose upright size differs from the XML's ``<size>``:
  a :class:`~boxcaseg.errors.DataError` naming the XML file and the image, raised while
  loading (a stat and a header read per image, cheap), unless ``check_files=False``.

With ``with_masks=True`` each image also needs ``SegmentationObject/<id>.png`` (palette
indices: instance ``i = 1..K``, 0 background, 255 void) and ``SegmentationClass/<id>.png``
(the class of every pixel). The instance numbering is *not* guaranteed to follow the XML
object order, so instances are matched to XML boxes by overlap (:func:`match_instances_to_boxes`):
Hungarian assignment on the IoU between each instance's tight box and each same-class XML
box, pairs below ``min_iou`` rejected. Then:

* matched box -> its annotation gets ``segmentation`` (compressed RLE) and ``area``;
* box without an instance -> kept as an ignore region (``iscrowd=1``, box-filled RLE,
  ``ignore_reason="no instance mask"``): a detection on it is not a false positive;
* instance without a box -> added as an ignore region too (its mask, its tight box,
  ``ignore_reason="no xml box"``);
* void (255) pixels belong to no instance; the image dict stores them as ``void_rle``
  (compressed RLE) and ``void_pixels`` so evaluation can ignore them (VOC's protocol).
Unmatched boxes / instances are counted in ``CocoData.report`` and warned about.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from boxcaseg.data.coco import CocoData, parse_coco
from boxcaseg.errors import DataError
from boxcaseg.io import image_size, read_mask_png, size_mismatch_message
from boxcaseg.structures import box_iou, box_to_mask, mask_to_box, mask_to_rle, xyxy_to_xywh

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID_INDEX = 255
_VOC_ID = re.compile(r"^(\d{4})_(\d{6})$")


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # XYXY, pixel edges (xmin-1, ymin-1, xmax, ymax)
    difficult: bool = False
    truncated: bool = False


@dataclass
class VocAnnotation:
    image_id: str          # VOC id, e.g. "2007_000032"
    file_name: str | None  # <filename> from the XML, if any
    width: int | None      # <size>, None when absent or zero
    height: int | None
    objects: list[VocObject] = field(default_factory=list)


def _text(node: ET.Element, tag: str, path: Path, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DataError(f"{path}: <{node.tag}> has no <{tag}>")
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    raw = _text(node, tag, path)
    try:
        return float(raw)  # some VOC-style tools write "273.0"
    except ValueError:
        raise DataError(f"{path}: <{tag}> is not a number: {raw!r}") from None


def parse_voc_xml(path: str | os.PathLike, class_names: Sequence[str] = VOC_CLASSES
                  ) -> VocAnnotation:
    """Parse one VOC XML file. Raises DataError naming ``path`` on any malformed content.

    Boxes come back as XYXY pixel edges: ``(xmin-1, ymin-1, xmax, ymax)`` for the 1-based
    inclusive VOC values. An inverted box (xmax < xmin) is an error; clipping to the image
    happens later in ``parse_coco`` (counted there).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from e
    if root.tag != "annotation":
        raise DataError(f"{path}: top-level element is <{root.tag}>, expected <annotation>")
    width = height = None
    size = root.find("size")
    if size is not None:
        w, h = _text(size, "width", path, False), _text(size, "height", path, False)
        try:
            width, height = (int(float(w)) or None if w else None,
                             int(float(h)) or None if h else None)
        except ValueError:
            raise DataError(f"{path}: <size> is not numeric ({w!r} x {h!r})") from None
    known = set(class_names)
    objects: list[VocObject] = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name", path)
        if name not in known:
            raise DataError(f"{path}: object {k} has unknown class {name!r}; "
                            f"known classes: {', '.join(class_names)}")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{path}: object {k} ({name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bnd, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise DataError(f"{path}: object {k} ({name}) has an inverted box "
                            f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}")
        flag = lambda t: (_text(obj, t, path, False) or "0") not in ("0", "0.0")  # noqa: E731
        objects.append(VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax),
                                 difficult=flag("difficult"), truncated=flag("truncated")))
    return VocAnnotation(path.stem, _text(root, "filename", path, False), width, height, objects)


def resolve_image_set(voc_root: str | os.PathLike, image_set: str | os.PathLike,
                      prefer: str = "Segmentation") -> Path:
    """The list file for ``image_set``: an existing path, else ``ImageSets/<prefer>/<set>.txt``
    (falling back to the other of Segmentation / Main)."""
    p = Path(image_set)
    if p.suffix == ".txt" or p.is_file():
        if not p.is_file():
            raise DataError(f"{p}: image-set list file not found")
        return p
    root = Path(voc_root)
    order = [prefer] + [d for d in ("Segmentation", "Main") if d != prefer]
    tried = [root / "ImageSets" / d / f"{image_set}.txt" for d in order]
    for t in tried:
        if t.is_file():
            return t
    raise DataError(f"image set {str(image_set)!r} not found; looked for "
                    + ", ".join(str(t) for t in tried))


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids from a VOC/SBD list file: first token per line (Main/<cls>_train.txt has a second
    ``1``/``-1`` column), blank lines and ``#`` comments skipped, order kept, duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: id list file not found")
    ids: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.setdefault(line.split()[0], None)
    return list(ids)


def voc_image_ids(ids: Sequence[str]) -> dict[str, int]:
    """Integer COCO image ids for VOC ids (``2007_000032`` -> ``2007000032``) or positions."""
    if all(_VOC_ID.match(i) for i in ids):
        return {i: int(i[:4]) * 1_000_000 + int(i[5:]) for i in ids}
    return {i: n + 1 for n, i in enumerate(sorted(ids))}


def match_instances_to_boxes(instance_masks: Sequence[np.ndarray], instance_classes: Sequence[Any],
                             boxes: Sequence[Sequence[float]], box_classes: Sequence[Any],
                             min_iou: float = 0.5) -> list[tuple[int, int]]:
    """Pair instance masks with boxes by overlap (one-to-one), never by order.

    instance_masks: K bool [H, W] masks; boxes: N XYXY boxes (pixel edges). The score of a
    pair is the IoU between the mask's tight box and the box, zero across classes. Hungarian
    assignment maximises the total IoU; pairs below ``min_iou`` are dropped.
    Returns ``[(instance_index, box_index), ...]`` sorted by instance index.
    """
    if not instance_masks or not boxes:
        return []
    iou = np.zeros((len(instance_masks), len(boxes)), dtype=np.float64)
    for i, (m, c) in enumerate(zip(instance_masks, instance_classes)):
        tight = mask_to_box(m)
        if tight is None:
            continue
        for j, (b, bc) in enumerate(zip(boxes, box_classes)):
            if bc == c:
                iou[i, j] = box_iou(tight, b)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return sorted((int(i), int(j)) for i, j in zip(rows, cols) if iou[i, j] >= min_iou)


def read_voc_instances(object_png: str | os.PathLike, class_png: str | os.PathLike,
                       class_names: Sequence[str] = VOC_CLASSES
                       ) -> tuple[list[np.ndarray], list[str | None], np.ndarray]:
    """Instance masks of one VOC image.

    Returns (masks: K bool [H, W] for instance indices 1..K present in ``object_png``, in
    increasing index order; classes: the VOC class name of each — the majority value of
    ``class_png`` over its pixels, None if that class is not in ``class_names``; void: bool
    [H, W] of the 255 pixels).
    """
    obj = read_mask_png(object_png)
    cls = read_mask_png(class_png)
    if obj.shape != cls.shape:
        raise DataError(f"{object_png}: size {obj.shape[::-1]} differs from {class_png} "
                        f"{cls.shape[::-1]}")
    known = set(class_names)
    masks, classes = [], []
    for idx in np.unique(obj):
        if idx == 0 or idx == VOID_INDEX:
            continue
        m = obj == idx
        values = cls[m]
        values = values[(values != 0) & (values != VOID_INDEX)]
        name = None
        if values.size:
            c = int(np.bincount(values).argmax())
            if 1 <= c <= len(VOC_CLASSES) and VOC_CLASSES[c - 1] in known:
                name = VOC_CLASSES[c - 1]
        masks.append(m)
        classes.append(name)
    return masks, classes, obj == VOID_INDEX


def _image_size(ann: VocAnnotation, path: Path | None, xml_path: Path) -> tuple[int, int]:
    if ann.width and ann.height:
        return ann.width, ann.height
    if path is None or not path.is_file():
        raise DataError(f"{xml_path}: no <size> and no image to read the size from")
    return image_size(path)  # header only, upright (EXIF applied) like every reader


def instances_to_annotations(masks: Sequence[np.ndarray], classes: Sequence[str | None],
                             objects: Sequence[VocObject], cat_ids: dict[str, int],
                             height: int, width: int, min_iou: float, where: str,
                             report: Counter) -> list[dict[str, Any]]:
    """COCO annotation dicts (without ids) for XML ``objects`` + instance ``masks`` (see module
    docstring for matching and ignore rules). ``report`` counts matched / unmatched."""
    keep = [i for i, c in enumerate(classes) if c is not None]
    if len(keep) < len(masks):
        report["instance_unknown_class"] += len(masks) - len(keep)
        log.warning("%s: %d instance(s) with no known class ignored", where, len(masks) - len(keep))
    pairs = match_instances_to_boxes([masks[i] for i in keep], [classes[i] for i in keep],
                                     [o.box for o in objects], [o.name for o in objects], min_iou)
    by_box = {j: keep[i] for i, j in pairs}
    anns: list[dict[str, Any]] = []
    for j, o in enumerate(objects):
        a: dict[str, Any] = {"category_id": cat_ids[o.name], "bbox": xyxy_to_xywh(o.box),
                             "iscrowd": int(o.difficult), "difficult": int(o.difficult)}
        if j in by_box:
            m = masks[by_box[j]]
            a["segmentation"], a["area"] = mask_to_rle(m), int(m.sum())
            report["matched_instance"] += 1
        else:
            m = box_to_mask(o.box, height, width)
            a.update(segmentation=mask_to_rle(m), area=int(m.sum()), iscrowd=1,
                     ignore_reason="no instance mask")
            report["box_without_instance"] += 1
            log.warning("%s: box %d (%s) has no matching instance mask; kept as ignore region",
                        where, j, o.name)
        anns.append(a)
    matched = set(by_box.values())
    for i in keep:
        if i in matched:
            continue
        m = masks[i]
        box = mask_to_box(m)
        anns.append({"category_id": cat_ids[classes[i]], "bbox": xyxy_to_xywh(box),
                     "segmentation": mask_to_rle(m), "area": int(m.sum()), "iscrowd": 1,
                     "difficult": 0, "ignore_reason": "no xml box"})
        report["instance_without_box"] += 1
        log.warning("%s: instance %d (%s) has no matching XML box; kept as ignore region",
                    where, i + 1, classes[i])
    return anns


def categories(class_names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": k + 1, "name": n, "supercategory": "voc"} for k, n in enumerate(class_names)]


def voc_to_coco_dict(voc_root: str | os.PathLike, ids: Sequence[str], *, with_masks: bool = False,
                     class_names: Sequence[str] = VOC_CLASSES, check_files: bool = True,
                     min_iou: float = 0.5, report: Counter | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """COCO dict for the VOC ``ids`` under ``voc_root`` (``file_name`` relative to JPEGImages).

    See the module docstring for conventions. ``report`` (if given) receives counters."""
    from tqdm import tqdm

    root = Path(voc_root)
    report = report if report is not None else Counter()
    cat_ids = {n: k + 1 for k, n in enumerate(class_names)}
    int_ids = voc_image_ids(ids)
    images, anns = [], []
    for vid in tqdm(ids, desc="VOC annotations", unit="img", disable=not progress):
        xml_path = root / "Annotations" / f"{vid}.xml"
        ann = parse_voc_xml(xml_path, class_names)
        names = [n for n in (ann.file_name, f"{vid}.jpg") if n]
        file_name = next((n for n in names if (root / "JPEGImages" / n).is_file()), names[-1])
        img_path = root / "JPEGImages" / file_name
        if check_files and not img_path.is_file():
            raise DataError(f"{xml_path}: image {img_path} not found")
        width, height = _image_size(ann, img_path, xml_path)
        if check_files and ann.width and ann.height:
            # here, where the XML is known: a later reader could only blame "the JSON"
            disk = image_size(img_path)
            if disk != (width, height):
                raise DataError(size_mismatch_message(
                    img_path, disk, (width, height), f"{xml_path} <size>",
                    f"fix <width>/<height> in {xml_path.name}, or the image in "
                    f"{root / 'JPEGImages'}"))
        image: dict[str, Any] = {"id": int_ids[vid], "file_name": file_name, "width": width,
                                 "height": height, "voc_id": vid}
        if with_masks:
            obj_png = root / "SegmentationObject" / f"{vid}.png"
            cls_png = root / "SegmentationClass" / f"{vid}.png"
            masks, classes, void = read_voc_instances(obj_png, cls_png, class_names)
            if void.shape != (height, width):
                raise DataError(f"{obj_png}: mask is {void.shape[1]}x{void.shape[0]} but "
                                f"{xml_path} says {width}x{height}")
            image["void_rle"], image["void_pixels"] = mask_to_rle(void), int(void.sum())
            new = instances_to_annotations(masks, classes, ann.objects, cat_ids, height, width,
                                           min_iou, str(obj_png), report)
        else:
            new = [{"category_id": cat_ids[o.name], "bbox": xyxy_to_xywh(o.box),
                    "area": (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]),
                    "iscrowd": int(o.difficult), "difficult": int(o.difficult)}
                   for o in ann.objects]
        report["difficult"] += sum(o.difficult for o in ann.objects)
        for a in new:
            a["id"] = len(anns) + 1
            a["image_id"] = image["id"]
            anns.append(a)
        images.append(image)
    return {"info": {"description": f"PASCAL VOC from {root}"}, "images": images,
            "annotations": anns, "categories": categories(class_names)}


def load_voc(voc_root: str | os.PathLike, image_set: str | os.PathLike = "train", *,
             with_masks: bool = False, class_names: Sequence[str] = VOC_CLASSES,
             check_files: bool = True, min_iou: float = 0.5) -> CocoData:
    """Load a VOC split as validated ``CocoData`` (image paths under ``voc_root/JPEGImages``).

    image_set: ``"train"``, ``"val"``, ``"trainval"``... (looked up in ImageSets/Segmentation
    when ``with_masks`` else ImageSets/Main, falling back to the other) or a list-file path.
    Counters (difficult, matched_instance, box_without_instance, ...) are added to ``.report``.
    """
    root = Path(voc_root)
    for sub in ("Annotations", "JPEGImages") + (("SegmentationObject", "SegmentationClass")
                                                if with_masks else ()):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: not a VOC tree, missing folder {root / sub}")
    list_file = resolve_image_set(root, image_set, "Segmentation" if with_masks else "Main")
    ids = read_id_list(list_file)
    report: Counter = Counter()
    data = voc_to_coco_dict(root, ids, with_masks=with_masks, class_names=class_names,
                            check_files=check_files, min_iou=min_iou, report=report)
    result = parse_coco(data, f"{root} ({list_file.name})", root / "JPEGImages")
    result.report.update(report)
    return result
