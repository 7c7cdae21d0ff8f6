"""COCO mask AP in memory: hand-checked cases and agreement with COCOeval run on files."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxcaseg.errors import DataError
from boxcaseg.evaluation.coco_ap import AP_KEYS, coco_mask_ap
from boxcaseg.structures import mask_to_box, mask_to_rle, xyxy_to_xywh


def square(h, w, r0, c0, rh, cw):
    m = np.zeros((h, w), dtype=bool)
    m[r0:r0 + rh, c0:c0 + cw] = True
    return m


def gt_dict(masks, h=40, w=40, crowd=()):
    """masks: list of (image_id, category_id, mask)."""
    image_ids = sorted({i for i, _, _ in masks} | {1})
    anns = [{"id": k + 1, "image_id": i, "category_id": c, "segmentation": mask_to_rle(m),
             "bbox": xyxy_to_xywh(mask_to_box(m)), "area": int(m.sum()),
             "iscrowd": int(k in crowd)} for k, (i, c, m) in enumerate(masks)]
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h}
                       for i in image_ids],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": anns}


def result(image_id, cat, mask, score):
    return {"image_id": image_id, "category_id": cat, "segmentation": mask_to_rle(mask),
            "score": score, "bbox": xyxy_to_xywh(mask_to_box(mask))}


def test_perfect_predictions_score_one():
    g1, g2 = square(40, 40, 0, 0, 10, 10), square(40, 40, 20, 20, 12, 8)
    gt = gt_dict([(1, 1, g1), (1, 2, g2)])
    ap = coco_mask_ap(gt, [result(1, 1, g1, 0.9), result(1, 2, g2, 0.8)])
    for k in ("AP", "AP50", "AP75", "APs"):
        assert ap[k] == pytest.approx(1.0)
    assert ap["APm"] is None and ap["APl"] is None  # no GT of those sizes


def test_shifted_mask_between_thresholds():
    g = square(40, 40, 5, 5, 10, 10)
    p = square(40, 40, 5, 7, 10, 10)   # IoU 80 / 120 = 0.667: matches at .50-.65 only
    ap = coco_mask_ap(gt_dict([(1, 1, g)]), [result(1, 1, p, 0.9)])
    assert ap["AP50"] == pytest.approx(1.0)
    assert ap["AP75"] == pytest.approx(0.0)
    assert ap["AP"] == pytest.approx(0.4)  # 4 of the 10 thresholds .50:.05:.95


def test_empty_results_give_zero():
    g = square(40, 40, 5, 5, 10, 10)
    ap = coco_mask_ap(gt_dict([(1, 1, g)]), [])
    assert ap == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": None, "APl": None}


def test_detection_on_crowd_region_is_not_a_false_positive():
    g = square(40, 40, 0, 0, 10, 10)
    crowd = square(40, 40, 20, 20, 10, 10)
    gt = gt_dict([(1, 1, g), (1, 1, crowd)], crowd=(1,))
    dets = [result(1, 1, crowd, 0.95), result(1, 1, g, 0.9)]
    assert coco_mask_ap(gt, dets)["AP50"] == pytest.approx(1.0)
    gt_no_crowd = gt_dict([(1, 1, g), (1, 2, crowd)])  # same region, now a class-2 object
    assert coco_mask_ap(gt_no_crowd, dets)["AP50"] < 0.99


def test_results_not_mutated_and_errors_named():
    g = square(40, 40, 5, 5, 10, 10)
    gt = gt_dict([(1, 1, g)])
    dets = [result(1, 1, g, 0.9)]
    before = copy.deepcopy(dets)
    coco_mask_ap(gt, dets)
    assert dets == before
    with pytest.raises(DataError, match="image_id 99"):
        coco_mask_ap(gt, [result(99, 1, g, 0.5)])
    with pytest.raises(DataError, match="category_id 7"):
        coco_mask_ap(gt, [result(1, 7, g, 0.5)])
    bad = copy.deepcopy(gt)
    del bad["annotations"][0]["segmentation"]
    with pytest.raises(DataError, match="annotation 1"):
        coco_mask_ap(bad, dets)


def _random_case(rng):
    h, w = 96, 128
    masks, dets = [], []
    for image_id in (1, 2, 3):
        for _ in range(int(rng.integers(1, 5))):
            r0, c0 = int(rng.integers(0, 50)), int(rng.integers(0, 70))
            m = square(h, w, r0, c0, int(rng.integers(4, 45)), int(rng.integers(4, 55)))
            cat = int(rng.integers(1, 3))
            masks.append((image_id, cat, m))
            for _ in range(int(rng.integers(0, 3))):  # jittered detections, some wrong class
                pm = np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1))
                pm |= rng.random((h, w)) < 0.001
                dets.append(result(image_id, cat if rng.random() < 0.8 else 3 - cat, pm,
                                   float(rng.random())))
        dets.append(result(image_id, 1, rng.random((h, w)) < 0.1, float(rng.random())))
    return gt_dict(masks, h, w, crowd=(0,)), dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_cocoeval_on_files(tmp_path, seed):
    gt, dets = _random_case(np.random.default_rng(seed))
    mine = coco_mask_ap(gt, dets)
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    # the documented convention: mask AP buckets detections by mask area (bbox dropped)
    res_path.write_text(json.dumps([{k: v for k, v in d.items() if k != "bbox"} for d in dets]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_path)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for k, ref in zip(AP_KEYS, ev.stats[:6]):
        if ref < 0:
            assert mine[k] is None
        else:
            assert mine[k] == pytest.approx(ref, abs=1e-12), k
    assert 0 < mine["AP50"] < 1 and 0 < mine["AP"] < 1  # the case is not degenerate


def test_eval_command_results(tmp_path, capsys):
    from boxcaseg.cli import main

    g = square(40, 40, 5, 5, 10, 10)
    p = square(40, 40, 5, 7, 10, 10)  # IoU 2/3
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict([(1, 1, g)])))
    (tmp_path / "res.json").write_text(json.dumps([result(1, 1, p, 0.9)]))
    out = tmp_path / "r.json"
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "COCO mask AP" in text and "VOC mask AP" in text
    m = json.loads(out.read_text())
    assert m["kind"] == "results"
    assert m["coco"]["AP"] == pytest.approx(0.4) and m["coco"]["APm"] is None
    assert m["voc"]["AP50"] == pytest.approx(1.0) and m["voc"]["AP70"] == 0.0
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 5, "category_id": 1,
                                                    "score": 1.0, "segmentation": mask_to_rle(p)}]))
    assert main(["eval", "--gt", str(tmp_path / "gt.json"),
                 "--pred", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
