"""PASCAL VOC mask AP at IoU 0.25 / 0.50 / 0.70 / 0.75 (paper Tab. 1, the protocol of SDS/BBTP).

Protocol, per class ``c`` and IoU threshold ``t``:

1. Detections of class ``c`` from all images are sorted by score, highest first (ties keep
   input order: a stable sort).
2. Each detection in turn, within its own image, looks at the GT instances of class ``c``:

   * among the *regular* GT not yet matched, take the one with the highest mask IoU; if that
     IoU ``>= t`` the detection is a true positive and that GT is now matched (each GT is
     matched at most once);
   * otherwise, if some *difficult* GT (``iscrowd``, ``difficult`` or ``ignore`` set -- the
     VOC reader writes difficult objects with ``iscrowd=1``) has IoU ``>= t``, the detection
     is neither TP nor FP: it is dropped from the ranking (VOC's difficult rule);
   * otherwise it is a false positive -- including a duplicate on an already matched GT.

3. ``recall = TP / #regular GT``, ``precision = TP / (TP + FP)`` down the ranking; AP is the
   area under the precision/recall curve with VOC2010+ all-point interpolation: precision is
   replaced by its monotone envelope ``p_interp(r) = max_{r' >= r} p(r')`` and integrated
   exactly over recall (:func:`voc_ap_from_pr`).
4. The reported number is the mean AP over the classes with at least one regular GT; a class
   with GT but no detection scores 0.

Mask IoU is the plain pixel IoU (pycocotools RLE ``iou`` with ``iscrowd=0``). VOC ``void``
pixels (``void_rle`` in the reader's image dicts) are *not* excluded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.data.coco import CocoData
from boxcaseg.errors import DataError
from boxcaseg.evaluation.coco_ap import prepare_results
from boxcaseg.evaluation.instance_iou import to_rle

DEFAULT_THRESHOLDS = (0.25, 0.5, 0.7, 0.75)


def threshold_key(t: float) -> str:
    """``0.5 -> "AP50"``, ``0.25 -> "AP25"``."""
    return f"AP{int(round(t * 100))}"


def voc_ap_from_pr(recall: Sequence[float], precision: Sequence[float]) -> float:
    """All-point interpolated AP (VOC2010+) of a ranked list's recall/precision sequences.

    ``recall`` must be non-decreasing (as down a ranking). The curve is padded with
    ``(0, 0)`` and ``(1, 0)``, precision is made monotone from the right, and the area is
    summed over the recall steps."""
    rec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    pre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    pre = np.maximum.accumulate(pre[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * pre[steps]))


def _is_difficult(a: dict[str, Any]) -> bool:
    return bool(a.get("iscrowd", 0) or a.get("difficult", 0) or a.get("ignore", 0))


def _gt_by_image_class(raw: dict[str, Any]) -> dict[tuple[int, int], tuple[list, np.ndarray]]:
    """``{(image_id, category_id): ([RLE, ...], difficult bool array)}``."""
    images = {int(im["id"]): im for im in raw["images"]}
    groups: dict[tuple[int, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    for a in raw["annotations"]:
        im = images.get(int(a["image_id"]))
        if im is None:
            raise DataError(f"ground truth: annotation {a.get('id')} refers to unknown image_id "
                            f"{a['image_id']}")
        h, w = int(im["height"]), int(im["width"])
        difficult = _is_difficult(a)
        segm = a.get("segmentation")
        if not segm:
            if not difficult:
                raise DataError(f"ground truth: annotation {a.get('id')} has no 'segmentation'; "
                                "mask AP needs GT masks")
            x, y, bw, bh = a["bbox"]  # an ignore box without a mask: the box is the region
            segm = [[x, y, x, y + bh, x + bw, y + bh, x + bw, y]]
        rles, diffs = groups[(int(a["image_id"]), int(a["category_id"]))]
        rles.append(to_rle(segm, h, w, f"ground truth annotation {a.get('id')}"))
        diffs.append(difficult)
    return {k: (r, np.array(d, dtype=bool)) for k, (r, d) in groups.items()}


def _match(order: np.ndarray, det_keys: list[tuple[int, int]], det_rows: np.ndarray,
           ious: dict[tuple[int, int], np.ndarray],
           gts: dict[tuple[int, int], tuple[list, np.ndarray]], t: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """TP / FP flags (ranking order, difficult-matched detections removed) at threshold ``t``."""
    matched = {k: np.zeros(len(g[1]), dtype=bool) for k, g in gts.items()}
    tp, fp = [], []
    for d in order:
        key = det_keys[d]
        if key not in gts:
            tp.append(False)
            fp.append(True)
            continue
        row = ious[key][det_rows[d]]
        difficult = gts[key][1]
        regular_free = ~difficult & ~matched[key]
        if regular_free.any():
            cand = np.where(regular_free, row, -1.0)
            best = int(np.argmax(cand))
            if cand[best] >= t:
                matched[key][best] = True
                tp.append(True)
                fp.append(False)
                continue
        if (difficult & (row >= t)).any():
            continue  # VOC difficult rule: neither TP nor FP
        tp.append(False)
        fp.append(True)
    return np.array(tp, dtype=bool), np.array(fp, dtype=bool)


def voc_mask_ap(gt: dict | CocoData, results: list[dict],
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """VOC-protocol mask AP of COCO-format ``results`` against ``gt`` (module docstring).

    Args:
        gt: COCO dict (or ``CocoData``) with masks on every regular annotation; ``iscrowd``/
            ``difficult``/``ignore`` annotations are difficult (ignore) regions.
        results: COCO results ``{"image_id", "category_id", "segmentation" (RLE), "score"}``.
        thresholds: IoU thresholds.

    Returns:
        ``{"AP25": .., "AP50": .., "AP70": .., "AP75": .., "per_class": {name: {"AP25": ..,
        ..., "num_gt": n, "num_det": d}}, "num_classes": k}``: fractions; mean over classes
        with at least one regular GT (``None`` if there is no such class; a class without
        regular GT has ``None`` APs in ``per_class``).
    """
    raw = gt.raw if isinstance(gt, CocoData) else gt
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise DataError(f"ground truth: missing top-level list '{key}'")
    thresholds = tuple(float(t) for t in thresholds)
    res = prepare_results(raw, results, "segm")
    gts = _gt_by_image_class(raw)
    images = {int(im["id"]): im for im in raw["images"]}

    # IoU matrices once per (image, class), shared by every threshold
    by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, r in enumerate(res):
        by_key[(int(r["image_id"]), int(r["category_id"]))].append(i)
    det_keys: list[tuple[int, int]] = [(int(r["image_id"]), int(r["category_id"])) for r in res]
    det_rows = np.zeros(len(res), dtype=np.int64)
    ious: dict[tuple[int, int], np.ndarray] = {}
    for key, idx in by_key.items():
        det_rows[idx] = np.arange(len(idx))
        if key not in gts:
            continue
        im = images[key[0]]
        h, w = int(im["height"]), int(im["width"])
        d_rles = [to_rle(res[i]["segmentation"], h, w, f"result #{i}") for i in idx]
        g_rles = gts[key][0]
        ious[key] = np.asarray(mask_utils.iou(d_rles, g_rles, [0] * len(g_rles)),
                               dtype=np.float64).reshape(len(d_rles), len(g_rles))

    scores = np.array([float(r["score"]) for r in res], dtype=np.float64)
    det_cats = np.array([k[1] for k in det_keys], dtype=np.int64)
    per_class: dict[str, dict[str, Any]] = {}
    aps: dict[float, list[float]] = {t: [] for t in thresholds}
    for c in raw["categories"]:
        cid, name = int(c["id"]), str(c.get("name", c["id"]))
        cls_gts = {k: v for k, v in gts.items() if k[1] == cid}
        npos = int(sum((~d).sum() for _, d in cls_gts.values()))
        dets = np.flatnonzero(det_cats == cid)
        order = dets[np.argsort(-scores[dets], kind="stable")]
        entry: dict[str, Any] = {"num_gt": npos, "num_det": int(len(dets))}
        for t in thresholds:
            if npos == 0:
                entry[threshold_key(t)] = None
                continue
            tp, fp = _match(order, det_keys, det_rows, ious, cls_gts, t)
            if len(tp) == 0:
                ap = 0.0
            else:
                ctp, cfp = np.cumsum(tp), np.cumsum(fp)
                ap = voc_ap_from_pr(ctp / npos, ctp / np.maximum(ctp + cfp, 1))
            entry[threshold_key(t)] = ap
            aps[t].append(ap)
        if name in per_class:
            name = f"{name} ({cid})"
        per_class[name] = entry
    out: dict[str, Any] = {threshold_key(t): (float(np.mean(v)) if v else None)
                           for t, v in aps.items()}
    out["per_class"] = per_class
    out["num_classes"] = len(next(iter(aps.values()))) if aps else 0
    return out
