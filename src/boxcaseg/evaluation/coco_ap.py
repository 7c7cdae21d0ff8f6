"""COCO mask (or box) AP with pycocotools' ``COCOeval``, entirely in memory.

``coco_mask_ap(gt, results)`` returns ``AP`` (IoU .50:.05:.95), ``AP50``, ``AP75``, ``APs``,
``APm``, ``APl`` as fractions in ``[0, 1]`` (maxDets 100, COCO's defaults). Where COCOeval
reports ``-1`` -- no GT instance in that area range -- the value is ``None`` (undefined, not
zero), so tables show "-" and JSON stays valid.

Conventions, as detectron2's COCO evaluator:

* for ``segm`` the results' ``bbox`` is dropped before ``loadRes``, so a detection's area (and
  thus its small/medium/large bucket) is its *mask* area, like the GT's;
* GT without ``area`` gets the mask area (``segm``) or box area (``bbox``);
* crowd GT (``iscrowd=1``, VOC difficult) are ignore regions, as COCOeval does;
* no results at all -> AP 0 wherever GT exists (``loadRes`` cannot take an empty list, so the
  empty result set is built directly).
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxcaseg.data.coco import CocoData
from boxcaseg.errors import DataError
from boxcaseg.evaluation.instance_iou import to_rle

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def prepare_gt(gt: dict | CocoData, iou_type: str = "segm") -> dict[str, Any]:
    """A copy of the GT dict that COCOeval accepts: ``iscrowd`` and ``area`` filled in, every
    non-crowd annotation checked to have a ``segmentation`` (for ``segm``)."""
    raw = gt.raw if isinstance(gt, CocoData) else gt
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise DataError(f"ground truth: missing top-level list '{key}'")
    images = {int(im["id"]): im for im in raw["images"]}
    anns = []
    for a in raw["annotations"]:
        a = dict(a)
        a["iscrowd"] = int(bool(a.get("iscrowd", 0)))
        im = images.get(int(a["image_id"]))
        if im is None:
            raise DataError(f"ground truth: annotation {a.get('id')} refers to unknown image_id "
                            f"{a['image_id']}")
        if iou_type == "segm":
            if not a.get("segmentation"):
                if not a["iscrowd"]:
                    raise DataError(f"ground truth: annotation {a.get('id')} has no "
                                    "'segmentation'; mask AP needs GT masks")
                # a crowd box without a mask: its box is the ignore region
                x, y, w, h = a["bbox"]
                a["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
            if "area" not in a:
                rle = to_rle(a["segmentation"], int(im["height"]), int(im["width"]),
                             f"ground truth annotation {a.get('id')}")
                a["area"] = float(mask_utils.area(rle))
        elif "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        anns.append(a)
    return {"images": list(raw["images"]), "categories": list(raw["categories"]),
            "annotations": anns}


def prepare_results(gt: dict[str, Any], results: list[dict], iou_type: str = "segm"
                    ) -> list[dict[str, Any]]:
    """Validated shallow copies of COCO results (``loadRes`` mutates what it is given)."""
    if not isinstance(results, list):
        raise DataError("results must be a list of COCO result objects")
    image_ids = {int(im["id"]) for im in gt["images"]}
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    out = []
    need = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise DataError(f"result #{i} is not an object")
        missing = [k for k in need if k not in r]
        if missing:
            raise DataError(f"result #{i} is missing key(s) {missing}")
        if int(r["image_id"]) not in image_ids:
            raise DataError(f"result #{i} refers to image_id {r['image_id']}, "
                            "not in the ground truth")
        if int(r["category_id"]) not in cat_ids:
            raise DataError(f"result #{i} has category_id {r['category_id']}, "
                            "not in the ground truth")
        r = dict(r)
        if iou_type == "segm":
            # mask area, not box area, decides the size bucket (as detectron2 does)
            r.pop("bbox", None)
            seg = r["segmentation"]
            if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
                raise DataError(f"result #{i}: 'segmentation' must be an RLE dict")
            if isinstance(seg["counts"], list):
                r["segmentation"] = mask_utils.frPyObjects(seg, *seg["size"])
        out.append(r)
    return out


def coco_eval(gt: dict | CocoData, results: list[dict], iou_type: str = "segm", *,
              verbose: bool = False) -> COCOeval:
    """Run COCOeval (evaluate + accumulate + summarize) on in-memory GT and results."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    gt_dict = prepare_gt(gt, iou_type)
    res = prepare_results(gt_dict, results, iou_type)
    with _quiet(verbose):
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        if res:
            coco_dt = coco_gt.loadRes(res)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt_dict["images"]),
                               "categories": copy.deepcopy(gt_dict["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_mask_ap(gt: dict | CocoData, results: list[dict], iou_type: str = "segm", *,
                 verbose: bool = False) -> dict[str, float | None]:
    """COCO AP of ``results`` against ``gt``; see the module docstring.

    Args:
        gt: COCO dict (or ``CocoData``) with ``segmentation`` on every non-crowd annotation.
        results: COCO results ``{"image_id", "category_id", "segmentation": RLE (str or
            bytes counts), "score", optional "bbox"}``.
        iou_type: ``"segm"`` (mask AP) or ``"bbox"``.
        verbose: let COCOeval print its usual summary.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``: fractions, ``None`` where the area
        range has no GT.
    """
    ev = coco_eval(gt, results, iou_type, verbose=verbose)
    stats = np.asarray(ev.stats[:6], dtype=np.float64)
    return {k: (None if v < 0 else float(v)) for k, v in zip(AP_KEYS, stats)}
