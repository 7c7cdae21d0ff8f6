"""The augmented PASCAL VOC 2012 set (SBD + VOC 2012) as COCO-style JSON.

Split recipe (the standard "train_aug" of DeepLab / BBTP / BoxCaseg, 10,582 train images)::

    train = (SBD train ∪ SBD val ∪ VOC2012 Segmentation train) − VOC2012 Segmentation val
    val   = VOC2012 ImageSets/Segmentation/val.txt                      (1,449 images)

Outputs in ``out``:

* ``voc_aug_train.json`` — train BOXES from the VOC XML of each train id (``difficult``
  objects as ``iscrowd=1``, see :mod:`boxcaseg.data.voc`). An id with a VOC JPEG but no
  XML gets boxes from its SBD instance masks (tight boxes, SBD categories); an id without a
  VOC JPEG is skipped (SBD's images are VOC JPEGs, so it cannot be referenced).
* ``voc_2012_val_gt.json`` — val GT instance masks from ``SegmentationObject`` PNGs, matched to
  the XML boxes by overlap; void (255) pixels stored per image as ``void_rle``.
* ``voc_aug_train_gt.json`` (``train_gt=True``) — train GT masks for the oracle / for scoring
  proxy masks: the VOC PNG where one exists (finer, with void), else the SBD
  ``inst/<id>.mat`` (``GTinst.Segmentation`` instance map, ``GTinst.Categories``), matched to
  XML boxes the same way.
* ``train_aug.txt`` / ``val.txt`` (the id lists) and ``prepare_voc_report.json`` (counts).

``file_name`` is relative to ``VOC2012/JPEGImages``. All files are written atomically.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from boxcaseg.data.coco import parse_coco
from boxcaseg.data.voc import (VOC_CLASSES, categories, instances_to_annotations, parse_voc_xml,
                               read_id_list, read_voc_instances, voc_image_ids, voc_to_coco_dict)
from boxcaseg.errors import DataError
from boxcaseg.io import atomic_write_json, atomic_write_text, image_size
from boxcaseg.structures import mask_to_box, mask_to_rle, xyxy_to_xywh

log = logging.getLogger(__name__)


def find_sbd_root(sbd: str | os.PathLike) -> Path:
    """SBD's ``dataset`` folder: accepts ``benchmark_RELEASE`` or ``benchmark_RELEASE/dataset``."""
    root = Path(sbd)
    if not (root / "train.txt").is_file() and (root / "dataset" / "train.txt").is_file():
        return root / "dataset"
    return root


def check_trees(voc: Path, sbd: Path, need_inst: bool) -> None:
    """Raise one DataError listing every missing file/folder of both trees."""
    need = [voc / "JPEGImages", voc / "Annotations", voc / "SegmentationObject",
            voc / "SegmentationClass", voc / "ImageSets" / "Segmentation" / "train.txt",
            voc / "ImageSets" / "Segmentation" / "val.txt",
            sbd / "train.txt", sbd / "val.txt"]
    if need_inst:
        need.append(sbd / "inst")
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise DataError("augmented VOC inputs incomplete; missing: " + ", ".join(missing)
                        + " (--voc should be VOCdevkit/VOC2012, --sbd the SBD benchmark_RELEASE"
                          " or its dataset/ folder)")


def read_sbd_instances(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str | None]]:
    """Instance masks (bool [H, W], instance ids 1..K in order) and VOC class names of an SBD
    ``inst/<id>.mat`` (struct ``GTinst`` with ``Segmentation`` and ``Categories``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: SBD instance file not found")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
        gt = mat["GTinst"]
        seg = np.asarray(gt.Segmentation)
        cats = np.atleast_1d(np.asarray(gt.Categories)).astype(int).ravel()
    except (KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        raise DataError(f"{path}: not an SBD GTinst file ({type(e).__name__}: {e})") from e
    if seg.ndim != 2:
        raise DataError(f"{path}: GTinst.Segmentation has shape {seg.shape}, expected [H, W]")
    masks, classes = [], []
    for idx in range(1, len(cats) + 1):
        m = seg == idx
        if not m.any():
            continue
        c = int(cats[idx - 1])
        masks.append(m)
        classes.append(VOC_CLASSES[c - 1] if 1 <= c <= len(VOC_CLASSES) else None)
    return masks, classes


def split_ids(voc: Path, sbd: Path) -> tuple[list[str], list[str], dict[str, int]]:
    """(train ids sorted, val ids in list order, sizes of the four source lists)."""
    lists = {"sbd_train": read_id_list(sbd / "train.txt"), "sbd_val": read_id_list(sbd / "val.txt"),
             "voc_train": read_id_list(voc / "ImageSets" / "Segmentation" / "train.txt"),
             "voc_val": read_id_list(voc / "ImageSets" / "Segmentation" / "val.txt")}
    val = lists["voc_val"]
    train = sorted((set(lists["sbd_train"]) | set(lists["sbd_val"]) | set(lists["voc_train"]))
                   - set(val))
    return train, val, {k: len(v) for k, v in lists.items()}


def _jpeg_size(path: Path) -> tuple[int, int]:
    return image_size(path)  # header only, upright (EXIF applied) like every reader


def _sbd_only_annotations(masks: list[np.ndarray], classes: list[str | None],
                          cat_ids: dict[str, int], with_masks: bool) -> list[dict[str, Any]]:
    anns = []
    for m, c in zip(masks, classes):
        if c is None:
            continue
        box = mask_to_box(m)
        a: dict[str, Any] = {"category_id": cat_ids[c], "bbox": xyxy_to_xywh(box), "iscrowd": 0,
                             "difficult": 0, "box_source": "sbd_mask"}
        if with_masks:
            a["segmentation"], a["area"] = mask_to_rle(m), int(m.sum())
        else:
            a["area"] = float((box[2] - box[0]) * (box[3] - box[1]))
        anns.append(a)
    return anns


def build_train(voc: Path, sbd: Path, ids: list[str], with_masks: bool, min_iou: float,
                report: Counter, progress: bool) -> dict[str, Any]:
    """COCO dict of the train ids: boxes only, or (``with_masks``) GT instance masks."""
    from tqdm import tqdm

    cat_ids = {n: k + 1 for k, n in enumerate(VOC_CLASSES)}
    int_ids = voc_image_ids(ids)
    images, anns = [], []
    for vid in tqdm(ids, desc="train GT masks" if with_masks else "train boxes", unit="img",
                    disable=not progress):
        jpg = voc / "JPEGImages" / f"{vid}.jpg"
        if not jpg.is_file():
            report["skipped_no_voc_jpeg"] += 1
            log.warning("%s: no VOC JPEG for SBD id %s; skipped", jpg, vid)
            continue
        xml = voc / "Annotations" / f"{vid}.xml"
        voc_png = voc / "SegmentationObject" / f"{vid}.png"
        mat = sbd / "inst" / f"{vid}.mat"
        image: dict[str, Any] = {"id": int_ids[vid], "file_name": jpg.name, "voc_id": vid}
        if xml.is_file():
            if not with_masks:
                sub = voc_to_coco_dict(voc, [vid], report=report)
                new = sub["annotations"]
                image.update(width=sub["images"][0]["width"], height=sub["images"][0]["height"])
            else:
                ann = parse_voc_xml(xml)
                if voc_png.is_file():
                    masks, classes, void = read_voc_instances(
                        voc_png, voc / "SegmentationClass" / f"{vid}.png")
                    image.update(void_rle=mask_to_rle(void), void_pixels=int(void.sum()),
                                 mask_source="voc")
                elif mat.is_file():
                    masks, classes = read_sbd_instances(mat)
                    image["mask_source"] = "sbd"
                else:
                    report["skipped_no_instance_masks"] += 1
                    log.warning("%s: no VOC SegmentationObject PNG and no SBD %s; skipped",
                                vid, mat)
                    continue
                w, h = _jpeg_size(jpg)
                if masks and masks[0].shape != (h, w):
                    raise DataError(f"{vid}: instance masks are {masks[0].shape[1]}x"
                                    f"{masks[0].shape[0]} but {jpg} is {w}x{h}")
                image.update(width=w, height=h)
                new = instances_to_annotations(masks, classes, ann.objects, cat_ids, int(h),
                                               int(w), min_iou, vid, report)
                report["difficult"] += sum(o.difficult for o in ann.objects)
        elif mat.is_file():
            masks, classes = read_sbd_instances(mat)
            report["boxes_from_sbd_masks"] += 1
            if not masks:
                report["skipped_empty"] += 1
                log.warning("%s: no XML and no instance in %s; skipped", vid, mat)
                continue
            w, h = _jpeg_size(jpg)
            if masks[0].shape != (h, w):
                raise DataError(f"{mat}: instance map is {masks[0].shape[1]}x{masks[0].shape[0]}"
                                f" but {jpg} is {w}x{h}")
            image.update(width=w, height=h, mask_source="sbd")
            new = _sbd_only_annotations(masks, classes, cat_ids, with_masks)
        else:
            report["skipped_no_annotation"] += 1
            log.warning("%s: neither %s nor %s exists; skipped", vid, xml, mat)
            continue
        for a in new:
            a["id"] = len(anns) + 1
            a["image_id"] = image["id"]
            anns.append(a)
        images.append(image)
    return {"info": {"description": "augmented PASCAL VOC 2012 train (SBD + VOC), "
                                    + ("GT instance masks" if with_masks else "boxes")},
            "images": images, "annotations": anns, "categories": categories(VOC_CLASSES)}


def prepare_voc_aug(voc: str | os.PathLike, sbd: str | os.PathLike, out: str | os.PathLike, *,
                    train_gt: bool = False, min_iou: float = 0.5,
                    progress: bool = True) -> dict[str, Any]:
    """Write the augmented VOC JSON files into ``out`` (see module docstring); returns the
    report dict (also written as ``prepare_voc_report.json``)."""
    voc, sbd_root, out = Path(voc), find_sbd_root(sbd), Path(out)
    check_trees(voc, sbd_root, need_inst=train_gt)
    train_ids, val_ids, list_sizes = split_ids(voc, sbd_root)
    report: dict[str, Any] = {"voc": str(voc.resolve()), "sbd": str(sbd_root.resolve()),
                              "recipe": "train = (SBD train | SBD val | VOC seg train) "
                                        "- VOC seg val",
                              "list_sizes": list_sizes, "train_ids": len(train_ids),
                              "val_ids": len(val_ids)}
    files = {}

    def write(name: str, data: dict[str, Any], counters: Counter) -> None:
        coco = parse_coco(data, str(out / name), voc / "JPEGImages")  # validate before writing
        atomic_write_json(out / name, data)
        files[name] = {"images": len(coco.images), "annotations": len(data["annotations"]),
                       "counters": dict(sorted((counters + coco.report).items()))}
        log.info("wrote %s: %d images, %d annotations", out / name, len(coco.images),
                 len(data["annotations"]))

    c_train: Counter = Counter()
    write("voc_aug_train.json",
          build_train(voc, sbd_root, train_ids, False, min_iou, c_train, progress), c_train)
    c_val: Counter = Counter()
    write("voc_2012_val_gt.json",
          voc_to_coco_dict(voc, val_ids, with_masks=True, min_iou=min_iou, report=c_val,
                           progress=progress), c_val)
    if train_gt:
        c_gt: Counter = Counter()
        write("voc_aug_train_gt.json",
              build_train(voc, sbd_root, train_ids, True, min_iou, c_gt, progress), c_gt)
    atomic_write_text(out / "train_aug.txt", "".join(f"{i}\n" for i in train_ids))
    atomic_write_text(out / "val.txt", "".join(f"{i}\n" for i in val_ids))
    report["files"] = files
    atomic_write_json(out / "prepare_voc_report.json", report, indent=1)
    return report
