"""VOC-protocol mask AP: hand-computed cases, the difficult rule, the interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from boxcaseg.evaluation.voc_ap import voc_ap_from_pr, voc_mask_ap
from boxcaseg.structures import mask_to_box, mask_to_rle, xyxy_to_xywh

H = W = 40


def square(r0, c0, rh, cw):
    m = np.zeros((H, W), dtype=bool)
    m[r0:r0 + rh, c0:c0 + cw] = True
    return m


def gt_dict(objs, num_images=2):
    """objs: (image_id, category_id, mask, extra fields)."""
    anns = []
    for k, (i, c, m, extra) in enumerate(objs):
        anns.append({"id": k + 1, "image_id": i, "category_id": c, "iscrowd": 0,
                     "segmentation": mask_to_rle(m), "bbox": xyxy_to_xywh(mask_to_box(m)),
                     **extra})
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": W, "height": H}
                       for i in range(1, num_images + 1)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                           {"id": 3, "name": "c"}],
            "annotations": anns}


def det(i, c, m, s):
    return {"image_id": i, "category_id": c, "segmentation": mask_to_rle(m), "score": s}


def test_hand_computed_two_classes_with_duplicate_and_miss():
    a1, a2, a3 = square(0, 0, 8, 8), square(20, 20, 8, 8), square(0, 0, 10, 10)
    b1 = square(10, 25, 10, 10)
    gt = gt_dict([(1, 1, a1, {}), (1, 1, a2, {}), (2, 1, a3, {}), (1, 2, b1, {})])
    b_det = square(10, 27, 10, 10)    # cols overlap 8 -> 80 / 120 = 0.667
    assert (b_det & b1).sum() / (b_det | b1).sum() == pytest.approx(2 / 3)
    dets = [det(1, 1, a1, 0.9),                     # TP
            det(1, 1, a1, 0.8),                     # duplicate -> FP
            det(2, 1, a3, 0.7),                     # TP; a2 is never found
            det(1, 2, square(30, 0, 8, 8), 0.95),   # b: far away -> FP
            det(1, 2, b_det, 0.6)]                  # b: IoU 2/3 -> TP at .25/.50 only
    out = voc_mask_ap(gt, dets)
    # class a: TP FP TP over 3 GT: rec 1/3 1/3 2/3, prec 1 1/2 2/3 -> 1/3*1 + 1/3*2/3 = 5/9
    # class b: FP TP over 1 GT: rec 0 1, prec 0 1/2 -> 1/2 (t <= 2/3), else 0
    assert out["per_class"]["a"]["AP50"] == pytest.approx(5 / 9)
    assert out["per_class"]["b"]["AP50"] == pytest.approx(0.5)
    assert out["per_class"]["b"]["AP70"] == 0.0
    assert out["AP25"] == pytest.approx((5 / 9 + 0.5) / 2)
    assert out["AP50"] == pytest.approx((5 / 9 + 0.5) / 2)
    assert out["AP70"] == pytest.approx(5 / 18)
    assert out["AP75"] == pytest.approx(5 / 18)
    # class c has no GT: not in the mean
    assert out["per_class"]["c"]["AP50"] is None and out["num_classes"] == 2
    assert out["per_class"]["a"]["num_gt"] == 3 and out["per_class"]["a"]["num_det"] == 3


def test_match_goes_to_best_unmatched_gt():
    ga, gb = square(0, 0, 10, 10), square(0, 3, 10, 10)
    d2 = square(0, 1, 10, 10)  # IoU with ga 90/110, with gb 80/120
    gt = gt_dict([(1, 1, ga, {}), (1, 1, gb, {})])
    out = voc_mask_ap(gt, [det(1, 1, ga, 0.9), det(1, 1, d2, 0.8)], thresholds=(0.5, 0.7))
    assert out["AP50"] == pytest.approx(1.0)   # d2 takes the still-free gb (2/3 >= .5)
    assert out["AP70"] == pytest.approx(0.5)   # 2/3 < .7: FP, recall stops at 1/2


@pytest.mark.parametrize("flag", [{"iscrowd": 1}, {"difficult": 1}, {"ignore": 1}])
def test_difficult_gt_neither_tp_nor_fp(flag):
    reg, hard = square(0, 0, 10, 10), square(20, 20, 10, 10)
    gt = gt_dict([(1, 1, reg, {}), (1, 1, hard, flag)])
    dets = [det(1, 1, hard, 0.99), det(1, 1, hard, 0.98), det(1, 1, reg, 0.5)]
    out = voc_mask_ap(gt, dets)
    assert out["AP50"] == pytest.approx(1.0)           # detections on 'hard' are not FP
    assert out["per_class"]["a"]["num_gt"] == 1         # ... and 'hard' is no positive
    only_hard = voc_mask_ap(gt, [det(1, 1, hard, 0.99)])
    assert only_hard["AP50"] == 0.0                     # 'reg' missed, 'hard' gives no TP
    # the same region as a regular GT makes those detections a TP and a duplicate FP
    gt_reg = gt_dict([(1, 1, reg, {}), (1, 1, hard, {})])
    assert voc_mask_ap(gt_reg, dets)["AP50"] < 0.99


def test_no_detections_and_no_gt():
    gt = gt_dict([(1, 1, square(0, 0, 5, 5), {})])
    out = voc_mask_ap(gt, [])
    assert out["AP50"] == 0.0 and out["num_classes"] == 1
    empty = voc_mask_ap({**gt, "annotations": []}, [det(1, 1, square(0, 0, 5, 5), 0.5)])
    assert empty["AP50"] is None and empty["num_classes"] == 0


@pytest.mark.parametrize("seed", range(4))
def test_threshold_ordering(seed):
    rng = np.random.default_rng(seed)
    objs, dets = [], []
    for i in (1, 2):
        for _ in range(4):
            m = square(int(rng.integers(0, 28)), int(rng.integers(0, 28)),
                       int(rng.integers(4, 12)), int(rng.integers(4, 12)))
            c = int(rng.integers(1, 3))
            objs.append((i, c, m, {"iscrowd": int(rng.random() < 0.15)}))
            for _ in range(int(rng.integers(0, 3))):
                pm = np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1))
                dets.append(det(i, c, pm, float(rng.random())))
    out = voc_mask_ap(gt_dict(objs), dets)
    assert out["AP25"] >= out["AP50"] >= out["AP70"] >= out["AP75"]
    assert out["AP25"] > out["AP75"]  # the jitter makes the thresholds matter


def _brute_force_ap(rec, prec, npos, sub=8):
    """Integrate the precision envelope on a midpoint grid finer than the recall steps."""
    n = npos * sub
    total = 0.0
    for k in range(n):
        r = (k + 0.5) / n
        total += max([p for q, p in zip(rec, prec) if q >= r], default=0.0) / n
    return total


@pytest.mark.parametrize("seed", range(20))
def test_all_point_interpolation_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    npos = int(rng.integers(1, 8))
    n = int(rng.integers(1, 15))
    tp = rng.random(n) < 0.5
    # at most npos true positives down the ranking
    tp &= np.cumsum(tp) <= npos
    ctp = np.cumsum(tp)
    rec = ctp / npos
    prec = ctp / np.arange(1, n + 1)
    assert voc_ap_from_pr(rec, prec) == pytest.approx(_brute_force_ap(rec, prec, npos),
                                                      abs=1e-12)


def test_interpolation_edge_cases():
    assert voc_ap_from_pr([1.0], [1.0]) == 1.0
    assert voc_ap_from_pr([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert voc_ap_from_pr([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 0.5 * 2 / 3)
