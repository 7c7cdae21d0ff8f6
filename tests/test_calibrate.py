"""Calibration: a hand-made case with a known answer, the CLI round trip, and the consumers
(eval --only-kept, Mask R-CNN's dataset) reading the calibrated ignore_mask."""

import json

import numpy as np
import pytest
import yaml

from boxcaseg.cli import main as cli_main
from boxcaseg.config import load_config
from boxcaseg.errors import ConfigError, DataError
from boxcaseg.evaluation.instance_iou import mask_quality
from boxcaseg.labeling.calibrate import apply_rule, fit, kept_curve
from boxcaseg.labeling.postprocess import ignores as rule_ignores
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.structures import mask_to_rle

# five masks, best score first; true IoUs not monotone in the score
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
IOUS = [0.9, 0.85, 0.8, 0.4, 0.3]
# the curve logic by hand, on five masks: below the sample-size floors a real fit enforces
HAND = {"min_masks": 1, "min_kept": 1}


def test_curve_by_hand():
    curve = kept_curve(SCORES, IOUS)
    assert [p.kept for p in curve] == [0, 1, 2, 3, 4, 5]
    assert [p.kept_mean_iou for p in curve[1:]] == pytest.approx(
        [0.9, 0.875, 0.85, 0.7375, 0.65])
    ties = kept_curve([0.5, 0.5, 0.2], [1.0, 0.0, 0.3])  # tied scores are kept together
    assert [(p.threshold, p.kept) for p in ties[1:]] == [(0.5, 2), (0.2, 3)]


def test_fit_min_kept_iou_and_keep_by_hand():
    c = fit(SCORES, IOUS, min_kept_iou=0.8, **HAND)
    assert c.chosen.threshold == 0.7 and c.chosen.kept == 3
    assert c.chosen.kept_mean_iou == pytest.approx(0.85)
    assert c.rule() == {"drop": False, "min_score": 0.7}
    lo, hi = c.interval  # bootstrap range of the kept mean: inside the kept IoUs' span
    assert 0.8 <= lo < 0.85 < hi <= 0.9
    c = fit(SCORES, IOUS, keep=0.8, **HAND)
    assert c.chosen.threshold == 0.6 and c.chosen.kept_mean_iou == pytest.approx(0.7375)
    # 0.7 is reached only by keeping everything after a dip (0.65 < 0.7375): the largest kept
    # set whose mean clears the goal wins
    c = fit(SCORES, IOUS, min_kept_iou=0.7, **HAND)
    assert c.chosen.kept == 4
    c = fit(SCORES, IOUS, min_kept_iou=0.95, **HAND)
    assert not c.reached and c.chosen.kept == 1
    c = fit(SCORES, IOUS, keep=0.8, name="proxy_iou", **HAND)
    assert c.rule() == {"drop": True, "drop_iou": 0.6, "min_score": None}
    with pytest.raises(ConfigError):
        fit(SCORES, IOUS)
    with pytest.raises(ConfigError):
        fit(SCORES, IOUS, keep=0.8, min_kept_iou=0.5)


def test_rule_ignores():
    cfg = LabelConfig(drop=False, min_score=0.6)
    assert rule_ignores(10, 0.1, 0.6, cfg) is False   # equal to the threshold: kept
    assert rule_ignores(10, 1.0, 0.59, cfg) is True
    assert rule_ignores(0, 1.0, 1.0, cfg) is True     # empty masks are never kept
    assert rule_ignores(10, 0.9, None, LabelConfig(drop_iou=0.95)) is True


def _files(tmp_path, copies=1):
    """``copies`` 40x40 images, 5 objects each; predictions whose IoUs are IOUS exactly,
    scores SCORES (the same curve for any number of copies)."""
    gt_anns, pred_anns = [], []
    for c, i in ((c, i) for c in range(copies) for i in range(len(SCORES))):
        s, iou = SCORES[i], IOUS[i]
        g = np.zeros((40, 40), bool)
        g[8 * i:8 * i + 5, 0:20] = True          # 100 px
        p = np.zeros_like(g)
        n = round(100 * iou)                     # a subset of the GT: IoU = n / 100
        rows, cols = np.nonzero(g)
        p[rows[:n], cols[:n]] = True
        box = [0, 8 * i, 20, 5]
        aid = 5 * c + i + 1
        gt_anns.append({"id": aid, "image_id": c + 1, "category_id": 1, "bbox": box,
                        "iscrowd": 0, "area": 100, "segmentation": mask_to_rle(g)})
        pred_anns.append({"id": aid, "image_id": c + 1, "category_id": 1, "bbox": box,
                          "iscrowd": 0, "area": n, "segmentation": mask_to_rle(p),
                          "ignore_mask": False, "proxy_iou": 1.0, "score": s,
                          "mask_source": "boxcaseg"})
    base = {"images": [{"id": c + 1, "file_name": f"{c}.png", "width": 40, "height": 40}
                       for c in range(copies)],
            "categories": [{"id": 1, "name": "x"}]}
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps({**base, "annotations": gt_anns}))
    pred.write_text(json.dumps({**base, "annotations": pred_anns,
                                "boxcaseg_label": {"config": {"crop_size": 96}}}))
    return gt, pred


def test_cli_fit_apply_and_consumers(tmp_path, capsys):
    gt, pred = _files(tmp_path, copies=2)  # 10 masks: the least calibrate fits a rule on
    rule = tmp_path / "rule.yaml"
    assert cli_main(["calibrate", "--gt", str(gt), "--pred", str(pred), "--min-kept-iou",
                     "0.8", "--out", str(rule)]) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and "0.8500" in out
    cfg = load_config(LabelConfig, rule, [])  # a label config `label --config` accepts
    assert cfg.min_score == 0.7 and cfg.drop is False and cfg.crop_size == 96
    assert yaml.safe_load(rule.read_text())["min_score"] == 0.7

    new = tmp_path / "calibrated.json"
    assert cli_main(["calibrate", "--apply", str(rule), "--pred", str(pred),
                     "--out", str(new)]) == 0
    labels = json.loads(new.read_text())
    assert [a["ignore_mask"] for a in labels["annotations"]] == [False, False, False, True,
                                                                  True] * 2
    # eval --only-kept scores exactly the kept ones
    kept = mask_quality(json.loads(gt.read_text()), labels, only_kept=True)
    assert kept["mean_iou"] == pytest.approx(0.85)
    # Mask R-CNN's training set leaves the ignored masks out of the mask loss
    from boxcaseg.data.coco import parse_coco
    from boxcaseg.maskrcnn.dataset import MaskRCNNDataset
    ds = MaskRCNNDataset(parse_coco(labels, "calibrated"), train=False)
    assert [valid for _, valid in ds.entries[0][1]] == [True, True, True, False, False]

def test_calibration_refuses_gt_passthrough_and_missing_scores(tmp_path):
    gt, pred = _files(tmp_path)
    data = json.loads(pred.read_text())
    data["annotations"][0]["mask_source"] = "gt"
    pred.write_text(json.dumps(data))
    with pytest.raises(DataError, match="keep_gt_masks=false"):
        from boxcaseg.labeling.calibrate import calibration_pairs
        calibration_pairs(json.loads(gt.read_text()), data)
    del data["annotations"][1]["score"]
    data["annotations"][0]["mask_source"] = "boxcaseg"
    with pytest.raises(DataError, match="no 'score'"):
        calibration_pairs(json.loads(gt.read_text()), data)
    with pytest.raises(DataError, match="no 'score'"):
        apply_rule(data, LabelConfig(drop=False, min_score=0.5))


def test_apply_on_labels_equals_relabeling_and_other_formats_are_refused(tmp_path, capsys):
    from test_labeler import _make_dataset

    path, root, _ = _make_dataset(tmp_path)
    common = ["label", "--method", "box", "--images", str(root), "--boxes", str(path),
              "--no-progress"]
    labels = tmp_path / "labels.json"
    assert cli_main([*common, "--out", str(labels)]) == 0
    scores = sorted({a["score"] for a in json.loads(labels.read_text())["annotations"]
                     if "score" in a})
    assert len(scores) > 1  # merge lowers some: a threshold in between splits them
    rule = tmp_path / "rule.yaml"
    rule.write_text(yaml.safe_dump({"drop": False, "min_score": (scores[0] + scores[-1]) / 2}))
    applied = tmp_path / "applied.json"
    assert cli_main(["calibrate", "--apply", str(rule), "--pred", str(labels),
                     "--out", str(applied)]) == 0
    relabeled = tmp_path / "relabeled.json"
    assert cli_main([*common, "--config", str(rule), "--out", str(relabeled)]) == 0
    flags = [[a.get("ignore_mask") for a in json.loads(f.read_text())["annotations"]]
             for f in (applied, relabeled)]
    assert flags[0] == flags[1] and True in flags[0] and False in flags[0]
    capsys.readouterr()
    for fmt in ("results", "jsonl"):
        other = tmp_path / f"labels.{fmt}"
        assert cli_main([*common, "--format", fmt, "--out", str(other)]) == 0
        for args in (["--apply", str(rule)], ["--gt", str(path), "--keep", "0.5"]):
            rc = cli_main(["calibrate", *args, "--pred", str(other), "--out",
                           str(tmp_path / "x.json")])
            err = capsys.readouterr().err
            assert rc != 0 and f"label --format {fmt}" in err and "--format dataset" in err
        assert not (tmp_path / "x.json").exists()
