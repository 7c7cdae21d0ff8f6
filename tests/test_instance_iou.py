"""Box->mask quality (IoU@k, mIoU*) on hand-made masks with hand-computed IoUs."""

from __future__ import annotations

import numpy as np
import pytest

from boxcaseg.errors import DataError
from boxcaseg.evaluation.instance_iou import instance_ious, mask_quality
from boxcaseg.structures import mask_to_box, mask_to_rle, segmentation_to_mask, xyxy_to_xywh


def square(h, w, r0, c0, rh, cw):
    m = np.zeros((h, w), dtype=bool)
    m[r0:r0 + rh, c0:c0 + cw] = True
    return m


def build(items, h=20, w=20, categories=((1, "cat"), (2, "dog"))):
    """items: (ann_id, category_id, gt_mask, pred) with pred a mask, None (absent), or a dict
    of extra pred fields {"mask": .., "ignore_mask": ..}; crowd via category_id < 0."""
    gt_anns, pred_anns = [], []
    for aid, cid, gm, pred in items:
        crowd = cid < 0
        box = xyxy_to_xywh(mask_to_box(gm))
        gt_anns.append({"id": aid, "image_id": 1, "category_id": abs(cid), "bbox": box,
                        "iscrowd": int(crowd), "segmentation": mask_to_rle(gm)})
        if pred is None:
            continue
        fields = pred if isinstance(pred, dict) else {"mask": pred}
        p = {"id": aid, "image_id": 1, "category_id": abs(cid), "bbox": box, "iscrowd": int(crowd)}
        m = fields.get("mask")
        p["segmentation"] = mask_to_rle(m) if isinstance(m, np.ndarray) else m
        if "ignore_mask" in fields:
            p["ignore_mask"] = fields["ignore_mask"]
        pred_anns.append(p)
    base = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
            "categories": [{"id": i, "name": n} for i, n in categories]}
    return {**base, "annotations": gt_anns}, {**base, "annotations": pred_anns}


def test_hand_computed_ious_and_class_balanced_mean():
    g1 = square(20, 20, 0, 0, 4, 4)
    p1 = square(20, 20, 0, 1, 4, 4)        # shift 1 column: 12 / 20 = 0.6
    g2 = square(20, 20, 10, 10, 4, 4)
    g3 = square(20, 20, 0, 10, 4, 4)
    p3 = square(20, 20, 0, 12, 4, 4)       # shift 2 columns: 8 / 24 = 1/3
    gt, pred = build([(1, 1, g1, p1), (2, 1, g2, g2), (3, 2, g3, p3)])
    ious = instance_ious(gt, pred)
    assert ious == pytest.approx({1: 0.6, 2: 1.0, 3: 1 / 3})
    q = mask_quality(gt, pred)
    # per class: cat (0.6 + 1) / 2 = 0.8, dog 1/3 -> mIoU* differs from the plain mean
    assert q["miou_star"] == pytest.approx((0.8 + 1 / 3) / 2)
    assert q["mean_iou"] == pytest.approx((0.6 + 1 + 1 / 3) / 3)
    assert q["miou_star"] != pytest.approx(q["mean_iou"])
    assert q["per_class"]["cat"] == {"miou": pytest.approx(0.8), "n": 2}
    assert q["per_class"]["dog"] == {"miou": pytest.approx(1 / 3), "n": 1}
    assert q["iou50"] == pytest.approx(2 / 3) and q["iou75"] == pytest.approx(1 / 3)
    assert q["num_instances"] == 3 and q["missing"] == 0 and q["drop_rate"] == 0.0


def test_strict_greater_than_at_thresholds():
    g = square(20, 20, 2, 2, 4, 4)
    half = square(20, 20, 2, 2, 4, 2)      # 8 / 16 = 0.5 exactly
    three_q = square(20, 20, 2, 2, 4, 3)   # 12 / 16 = 0.75 exactly
    gt, pred = build([(1, 1, g, half), (2, 1, g.copy(), three_q)])
    assert instance_ious(gt, pred) == {1: 0.5, 2: 0.75}
    q = mask_quality(gt, pred)
    assert q["iou50"] == pytest.approx(0.5)  # 0.75 > 0.5 counts, 0.5 does not
    assert q["iou75"] == 0.0                 # 0.75 is not > 0.75


def test_missing_predictions_score_zero():
    g = square(20, 20, 0, 0, 4, 4)
    empty = np.zeros((20, 20), dtype=bool)
    gt, pred = build([(1, 1, g, g), (2, 1, g, None), (3, 1, g, {"mask": None}),
                      (4, 2, g, empty)])
    ious = instance_ious(gt, pred)
    assert ious == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0}
    q = mask_quality(gt, pred)
    assert q["missing"] == 3 and q["num_instances"] == 4
    assert q["mean_iou"] == pytest.approx(0.25)
    assert q["miou_star"] == pytest.approx((1 / 3 + 0) / 2)


def test_crowd_excluded():
    g = square(20, 20, 0, 0, 4, 4)
    far = square(20, 20, 10, 10, 4, 4)
    gt, pred = build([(1, 1, g, g), (2, -1, g, far), (3, -2, g, None)])
    assert set(instance_ious(gt, pred)) == {1}
    q = mask_quality(gt, pred)
    assert q["num_instances"] == 1 and q["miou_star"] == 1.0 and q["missing"] == 0
    assert set(q["per_class"]) == {"cat"}


def test_only_kept_and_drop_rate():
    g = square(20, 20, 0, 0, 4, 4)
    bad = square(20, 20, 0, 2, 4, 4)       # 8 / 24 = 1/3
    gt, pred = build([(1, 1, g, g), (2, 1, g, {"mask": bad, "ignore_mask": True}),
                      (3, 2, g, {"mask": g, "ignore_mask": False}), (4, 2, g, g)])
    all_q = mask_quality(gt, pred)
    kept = mask_quality(gt, pred, only_kept=True)
    assert all_q["drop_rate"] == pytest.approx(0.25) and kept["drop_rate"] == pytest.approx(0.25)
    assert all_q["num_dropped"] == 1 and kept["num_dropped"] == 1
    assert all_q["num_instances"] == 4 and kept["num_instances"] == 3
    assert all_q["mean_iou"] == pytest.approx((3 + 1 / 3) / 4)
    assert kept["mean_iou"] == 1.0 and kept["miou_star"] == 1.0 and kept["only_kept"]


def test_size_buckets_use_gt_mask_area():
    h = w = 128
    small = square(h, w, 0, 0, 31, 33)     # 1023 < 32^2 -> small
    medium = square(h, w, 0, 40, 32, 32)   # 1024 = 32^2 -> medium
    med2 = square(h, w, 40, 0, 48, 192 // 2)  # 4608 -> medium
    large = square(h, w, 20, 20, 96, 96)   # 9216 = 96^2 -> large
    # predictions: small perfect, medium half (IoU 0.5), med2 perfect, large missing
    gt, pred = build([(1, 1, small, small), (2, 1, medium, square(h, w, 0, 40, 32, 16)),
                      (3, 2, med2, med2), (4, 2, large, None)], h=h, w=w)
    q = mask_quality(gt, pred)
    bs = q["by_size"]
    assert (bs["small"]["n"], bs["medium"]["n"], bs["large"]["n"]) == (1, 2, 1)
    assert bs["small"]["miou_star"] == 1.0
    assert bs["medium"]["miou_star"] == pytest.approx((0.5 + 1.0) / 2)  # two classes, one each
    assert bs["medium"]["iou50"] == pytest.approx(0.5)
    assert bs["large"] == {"miou_star": 0.0, "iou50": 0.0, "iou75": 0.0, "n": 1}


def test_empty_bucket_is_none():
    g = square(20, 20, 0, 0, 4, 4)
    gt, pred = build([(1, 1, g, g)])
    q = mask_quality(gt, pred)
    assert q["by_size"]["large"] == {"miou_star": None, "iou50": None, "iou75": None, "n": 0}


def test_matches_dense_reference_with_polygon_gt():
    rng = np.random.default_rng(0)
    h, w = 40, 50
    gt_anns, pred_anns, expected = [], [], {}
    for aid in range(1, 16):
        x, y = rng.uniform(0, 30), rng.uniform(0, 20)
        bw, bh = rng.uniform(3, 18), rng.uniform(3, 18)
        poly = [x, y, x + bw, y + rng.uniform(0, 5), x + bw * 0.7, y + bh, x, y + bh * 0.8]
        gm = segmentation_to_mask([poly], h, w)
        pm = rng.random((h, w)) < 0.2
        pm |= np.roll(gm, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
        gt_anns.append({"id": aid, "image_id": 7, "category_id": 1 + aid % 2,
                        "bbox": [x, y, bw, bh], "iscrowd": 0, "segmentation": [poly]})
        pred_anns.append({"id": aid, "image_id": 7, "category_id": 1 + aid % 2,
                          "bbox": [x, y, bw, bh], "segmentation": mask_to_rle(pm)})
        expected[aid] = (gm & pm).sum() / (gm | pm).sum()
    base = {"images": [{"id": 7, "file_name": "x.png", "width": w, "height": h}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    ious = instance_ious({**base, "annotations": gt_anns}, {**base, "annotations": pred_anns})
    assert ious.keys() == expected.keys()
    for aid, v in expected.items():
        assert ious[aid] == pytest.approx(v, abs=1e-9)


def test_bad_inputs_raise_clear_errors():
    g = square(20, 20, 0, 0, 4, 4)
    gt, pred = build([(5, 1, g, g)])
    pred["annotations"][0]["segmentation"] = mask_to_rle(np.zeros((10, 10), dtype=bool))
    with pytest.raises(DataError, match="annotation 5.*does not match"):
        mask_quality(gt, pred)
    gt2, pred2 = build([(6, 1, g, g)])
    del gt2["annotations"][0]["segmentation"]
    with pytest.raises(DataError, match="annotation 6"):
        mask_quality(gt2, pred2)


def test_eval_command_masks(tmp_path, capsys):
    import json

    from boxcaseg.cli import main

    g = square(20, 20, 0, 0, 4, 4)
    gt, pred = build([(1, 1, g, square(20, 20, 0, 1, 4, 4)),
                      (2, 2, g, {"mask": g, "ignore_mask": True})])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    out = tmp_path / "sub" / "m.json"
    rc = main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"),
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mIoU*" in text and "80.0" in text  # (0.6 + 1.0) / 2
    m = json.loads(out.read_text())
    assert m["kind"] == "masks" and m["miou_star"] == pytest.approx(0.8)
    assert m["drop_rate"] == pytest.approx(0.5)
    rc = main(["eval", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"),
               "--only-kept", "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["num_instances"] == 1
    assert main(["eval", "--gt", str(tmp_path / "missing.json"),
                 "--pred", str(tmp_path / "pred.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_format_table_alignment_and_missing_values():
    from boxcaseg.evaluation.report import format_table

    text = format_table([{"name": "box", "v": 0.718, "n": 3}, {"name": "grabcut", "v": None}],
                        [("name", "method", "s"), ("v", "mIoU*", "pct"), ("n", "N", "d")],
                        title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    assert lines[1].split() == ["method", "mIoU*", "N"]
    assert lines[3] == "box       71.8  3"
    assert lines[4] == "grabcut      -  -"
    assert len({len(lines[2])} | {len(line) for line in lines[3:]}) == 1
