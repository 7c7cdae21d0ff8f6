"""Class-agnostic box->mask quality: IoU@k and mIoU* (paper Sec. 4, "Evaluation metric").

The labeler writes one mask per GT box, with the *same annotation id* as the box. Quality is
the IoU between that mask and the GT instance mask of the same id:

* ``IoU@k`` -- fraction of instances whose IoU is *larger than* ``k%`` (strict ``>``,
  as the paper words it), ``k in {50, 75}``;
* ``mIoU*`` -- mean IoU per class, then the mean over classes (the paper's class-balanced
  number); ``mean_iou`` is the plain mean over instances for comparison.

Rules:

* only non-crowd GT instances are scored (crowd / VOC-difficult boxes are never labelled);
* a GT instance whose prediction is absent, has no ``segmentation``, or has an empty mask
  scores IoU 0 and is counted in ``missing``;
* ``only_kept=True`` leaves out instances whose prediction has ``ignore_mask: true`` (the
  masks the drop rule removed), for "mIoU* of kept masks" tables;
* a GT instance with an empty GT mask has no defined IoU: skipped, counted in
  ``skipped_empty_gt`` and warned about;
* size buckets use COCO's ranges on the GT *mask* area: small ``< 32^2``, medium ``< 96^2``,
  large ``>= 96^2`` pixels.

Every fraction is in ``[0, 1]``; a fraction over zero instances is ``None``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.data.coco import CocoData, parse_coco
from boxcaseg.errors import DataError

log = logging.getLogger(__name__)

SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0 ** 2),
    "medium": (32.0 ** 2, 96.0 ** 2),
    "large": (96.0 ** 2, float("inf")),
}


@dataclass
class InstanceRecord:
    """One scored GT instance."""
    ann_id: int
    category_id: int
    iou: float
    gt_area: int
    missing: bool   # no prediction / no segmentation / empty predicted mask
    ignored: bool   # prediction carries ignore_mask: true


def to_rle(segm: Any, height: int, width: int, what: str) -> dict[str, Any]:
    """Any COCO ``segmentation`` -> compressed RLE (bytes counts) of size ``[height, width]``.

    Polygons and uncompressed RLE are converted with pycocotools (no dense decode); a
    compressed RLE of another size raises ``DataError`` naming ``what``."""
    try:
        if isinstance(segm, list):
            rles = mask_utils.frPyObjects(segm, height, width)
            rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, height, width)
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            rle = {"size": list(segm["size"]), "counts": segm["counts"]}
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise DataError(f"{what}: unsupported segmentation {type(segm).__name__}")
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(f"{what}: malformed segmentation ({e})") from e
    if [int(v) for v in rle["size"]] != [height, width]:
        raise DataError(f"{what}: mask size {list(rle['size'])} does not match the "
                        f"{height}x{width} image")
    return rle


def _as_coco(gt: dict | CocoData) -> CocoData:
    return gt if isinstance(gt, CocoData) else parse_coco(gt, "<gt>")


def _pred_annotations(pred: dict | CocoData) -> dict[int, dict[str, Any]]:
    raw = pred.raw if isinstance(pred, CocoData) else pred
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise DataError("predicted masks must be a COCO dict with an 'annotations' list")
    out: dict[int, dict[str, Any]] = {}
    for a in raw["annotations"]:
        if not isinstance(a, dict) or "id" not in a:
            raise DataError(f"predicted annotation without an 'id': {str(a)[:80]}")
        out[int(a["id"])] = a
    return out


def instance_records(gt: dict | CocoData, pred: dict | CocoData) -> list[InstanceRecord]:
    """Score every non-crowd GT instance against the prediction with the same annotation id.

    IoUs are computed per image on RLEs (pycocotools ``mask.iou`` with ``iscrowd=0``, the
    plain IoU), never on dense masks."""
    return _score(_as_coco(gt), pred)[0]


def _score(coco: CocoData, pred: dict | CocoData) -> tuple[list[InstanceRecord], int]:
    """(records, number of GT instances skipped for an empty GT mask)."""
    preds = _pred_annotations(pred)
    records: list[InstanceRecord] = []
    empty_gt = 0
    for img in coco.images:
        h, w = img.height, img.width
        gt_rles, pred_rles, metas = [], [], []
        for a in img.annotations:
            if a.iscrowd:
                continue
            if a.segmentation is None:
                raise DataError(f"{coco.source}: GT annotation {a.id} (image {img.id}) has no "
                                "'segmentation'; mask quality needs GT masks")
            g = to_rle(a.segmentation, h, w, f"{coco.source}: GT annotation {a.id}")
            g_area = int(mask_utils.area(g))
            if g_area == 0:
                empty_gt += 1
                log.debug("%s: GT annotation %d has an empty mask; not scored", coco.source, a.id)
                continue
            p = preds.get(a.id)
            ignored = bool(p.get("ignore_mask", False)) if p is not None else False
            segm = p.get("segmentation") if p is not None else None
            p_rle = to_rle(segm, h, w, f"predicted annotation {a.id}") if segm else None
            if p_rle is not None and int(mask_utils.area(p_rle)) == 0:
                p_rle = None
            metas.append((a.id, a.category_id, g_area, p_rle is None, ignored))
            gt_rles.append(g)
            pred_rles.append(p_rle)
        scored = [i for i, p in enumerate(pred_rles) if p is not None]
        ious = np.zeros(len(metas))
        if scored:
            # iscrowd=0 for every GT: the standard IoU. Only the diagonal is needed; the
            # matrix is small (instances of one image) and computed in C.
            mat = mask_utils.iou([pred_rles[i] for i in scored], [gt_rles[i] for i in scored],
                                 [0] * len(scored))
            ious[scored] = np.diagonal(np.asarray(mat, dtype=np.float64))
        for (aid, cid, area, missing, ignored), iou in zip(metas, ious):
            records.append(InstanceRecord(aid, cid, float(iou), area, missing, ignored))
    if empty_gt:
        log.warning("%s: %d GT instance(s) with empty masks were not scored", coco.source, empty_gt)
    return records, empty_gt


def instance_ious(gt: dict | CocoData, pred: dict | CocoData) -> dict[int, float]:
    """``{annotation id: IoU}`` for every scored (non-crowd, non-empty) GT instance."""
    return {r.ann_id: r.iou for r in instance_records(gt, pred)}


def _frac(values: np.ndarray, thr: float) -> float | None:
    return float((values > thr).mean()) if values.size else None


def _summary(recs: list[InstanceRecord]) -> dict[str, Any]:
    ious = np.array([r.iou for r in recs], dtype=np.float64)
    by_cat: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        by_cat[r.category_id].append(r.iou)
    class_means = [float(np.mean(v)) for v in by_cat.values()]
    return {
        "miou_star": float(np.mean(class_means)) if class_means else None,
        "mean_iou": float(ious.mean()) if ious.size else None,
        "iou50": _frac(ious, 0.5),
        "iou75": _frac(ious, 0.75),
        "n": len(recs),
    }


def summarize(records: list[InstanceRecord], categories: dict[int, str], *,
              only_kept: bool = False, skipped_empty_gt: int = 0) -> dict[str, Any]:
    """Aggregate instance records into the metrics dict described in the module docstring."""
    n_all = len(records)
    n_ignored = sum(r.ignored for r in records)
    recs = [r for r in records if not (only_kept and r.ignored)]
    overall = _summary(recs)
    per_class: dict[str, dict[str, Any]] = {}
    by_cat: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        by_cat[r.category_id].append(r.iou)
    for cid in sorted(by_cat):
        name = categories.get(cid, str(cid))
        if name in per_class:  # two categories with one name: keep both visible
            name = f"{name} ({cid})"
        per_class[name] = {"miou": float(np.mean(by_cat[cid])), "n": len(by_cat[cid])}
    by_size = {}
    for size, (lo, hi) in SIZE_RANGES.items():
        s = _summary([r for r in recs if lo <= r.gt_area < hi])
        by_size[size] = {"miou_star": s["miou_star"], "iou50": s["iou50"],
                         "iou75": s["iou75"], "n": s["n"]}
    return {
        "miou_star": overall["miou_star"],
        "mean_iou": overall["mean_iou"],
        "iou50": overall["iou50"],
        "iou75": overall["iou75"],
        "num_instances": len(recs),
        "missing": sum(r.missing for r in recs),
        "num_dropped": n_ignored,
        "drop_rate": n_ignored / n_all if n_all else 0.0,
        "only_kept": only_kept,
        "skipped_empty_gt": skipped_empty_gt,
        "per_class": per_class,
        "by_size": by_size,
    }


def mask_quality(gt: dict | CocoData, pred: dict | CocoData, *,
                 only_kept: bool = False) -> dict[str, Any]:
    """Box->mask quality of a labeler's output ``pred`` against GT masks ``gt``.

    Args:
        gt: COCO dict (validated with :func:`parse_coco`) or ``CocoData`` with GT masks
            (polygons or RLE) for every non-crowd annotation.
        pred: COCO dict with the same annotation ids; each annotation may carry
            ``segmentation`` (RLE of the image size), ``ignore_mask`` and ``proxy_iou``.
        only_kept: score only the instances whose prediction is not ``ignore_mask``.

    Returns:
        ``miou_star``, ``mean_iou``, ``iou50``, ``iou75`` (fractions, ``None`` over zero
        instances), ``num_instances`` (scored), ``missing``, ``num_dropped`` and
        ``drop_rate`` (instances whose prediction has ``ignore_mask``, over all scored GT
        instances, whatever ``only_kept``), ``per_class`` ``{name: {miou, n}}``,
        ``by_size`` ``{small|medium|large: {miou_star, iou50, iou75, n}}``.
    """
    coco = _as_coco(gt)
    records, empty = _score(coco, pred)
    return summarize(records, coco.categories, only_kept=only_kept, skipped_empty_gt=empty)
