"""``boxcaseg demo --quick`` end to end: every stage runs, results.json has the schema other
tools read, and a re-run reuses the finished stages instead of recomputing them."""

from __future__ import annotations

import json

import pytest

from boxcaseg.cli import main
from boxcaseg.demo import LABEL_METHODS, MASKRCNN_DEFAULT, format_results


pytestmark = pytest.mark.slow  # runs the quick demo end to end


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def _fraction(v):
    return v is not None and 0.0 <= v <= 1.0


def test_quick_demo_writes_the_results_schema(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    assert set(res["proxy_masks"]) == set(LABEL_METHODS)
    for m, r in res["proxy_masks"].items():
        assert all(_fraction(r[k]) for k in ("miou_star", "iou50", "iou75")), (m, r)
        assert r["instances_per_s"] > 0
    assert list(res["maskrcnn"]) == list(MASKRCNN_DEFAULT) == ["boxcaseg", "gt"]
    for s, r in res["maskrcnn"].items():
        assert all(_fraction(r[k]) for k in ("AP", "AP50", "AP75")), (s, r)
    assert res["seconds"] > 0
    stages = res["stage_seconds"]
    assert list(stages) == ["data", "boxcaseg_training", "labeling", "maskrcnn", "overlays"]
    # each stage rounded to 0.1 s
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= res["seconds"] + 0.3
    # the filled box covers every GT mask, so its IoU is area(mask)/area(box): never 0, and
    # the trained labelers differ from it (they really predicted something)
    assert res["proxy_masks"]["box"]["miou_star"] > 0.3
    assert res["proxy_masks"]["boxcaseg"]["miou_star"] != res["proxy_masks"]["box"]["miou_star"]
    for p in res["overlays"]:
        assert (quick_demo / "overlays").joinpath(p.rsplit("/", 1)[-1]).stat().st_size > 1000
    table = format_results(res)
    assert "GrabCut" in table and "ground truth (oracle)" in table


def test_rerun_reuses_finished_stages(quick_demo, capsys, monkeypatch):
    before = json.loads((quick_demo / "results.json").read_text())

    def no_training(*a, **k):
        raise AssertionError("a finished stage was run again")

    monkeypatch.setattr("boxcaseg.engine.trainer.train", no_training)
    monkeypatch.setattr("boxcaseg.maskrcnn.train.train_maskrcnn", no_training)
    monkeypatch.setattr("boxcaseg.labeling.job.run.label_dataset", no_training)
    assert main(["demo", "--quick", "--out", str(quick_demo), "--no-progress"]) == 0
    after = json.loads((quick_demo / "results.json").read_text())
    assert after["proxy_masks"] == before["proxy_masks"]
    assert after["maskrcnn"] == before["maskrcnn"]
    assert "reused" in capsys.readouterr().out


def test_demo_writes_the_report(quick_demo):
    index = quick_demo / "report" / "index.html"
    html = index.read_text(encoding="utf-8")
    for name in ("boxcaseg", "boxcaseg_weak", "grabcut", "box", "mIoU*"):
        assert name in html
    n_boxes = len(json.loads((quick_demo / "data" / "boxes" / "train_gt.json").read_text())
                  ["annotations"])
    pages = [index, *(quick_demo / "report").glob("gallery-*.html")]
    items = sum(p.read_text(encoding="utf-8").count('class="item"') for p in pages)
    assert items == n_boxes
    # one crop per instance for the GT and each of the four labelers
    assert len(list((quick_demo / "report" / "img").iterdir())) == 5 * n_boxes
