"""Box-sized masks, exact polygons and the output formats, each read back with pycocotools."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxcaseg.cli import main as cli_main
from boxcaseg.data.coco import load_coco
import reference_impl as merge_drop
from boxcaseg.labeling import masks as boxmask, postprocess
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.masks import mask_polygons
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.structures import box_to_mask, mask_to_rle, rle_to_mask
from test_labeler import _make_dataset


def _random_box_masks(rng, n):
    for _ in range(n):
        H, W = (int(v) for v in rng.integers(1, 24, 2))
        c0, r0 = int(rng.integers(0, W)), int(rng.integers(0, H))
        c1, r1 = int(rng.integers(c0, W + 1)), int(rng.integers(r0, H + 1))
        m = rng.random((r1 - r0, c1 - c0)) < rng.random()
        yield H, W, BoxMask(c0, r0, m)


def test_box_mask_rle_equals_full_image_rle():
    for H, W, m in _random_box_masks(np.random.default_rng(0), 3000):
        assert boxmask.to_rle(m, H, W) == mask_to_rle(m.to_full(H, W))


def test_box_mask_merge_and_drop_equal_the_full_image_versions():
    rng = np.random.default_rng(1)
    for _ in range(200):
        H, W = 20, 24
        boxes = np.sort(rng.uniform(0, 20, size=(5, 2, 2)), axis=1).reshape(5, 4)[:, [0, 2, 1, 3]]
        masks = [BoxMask.from_full(box_to_mask(b, H, W) & (rng.random((H, W)) < 0.7),
                                   b) for b in boxes]
        full = np.stack([m.to_full(H, W) for m in masks])
        want = merge_drop.merge_smaller_first(full, boxes)
        got = postprocess.merge_smaller_first(masks, boxes, H, W)
        assert np.array_equal(np.stack([m.to_full(H, W) for m in got]), want)
        ious = [postprocess.proxy_iou(m, b, H, W) for m, b in zip(got, boxes)]
        cfg = LabelConfig(drop_iou=0.9)
        assert (ious, [postprocess.ignores(m.area, i, None, cfg) for m, i in zip(got, ious)]) \
            == merge_drop.drop_decisions(want, boxes, 0.9)


def _rasterize(polygons, H, W):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, H, W))).astype(bool)


def test_polygons_are_exact_including_holes():
    holes = 0
    for H, W, m in _random_box_masks(np.random.default_rng(2), 2000):
        polys = mask_polygons(m)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
        assert np.array_equal(_rasterize(polys, H, W), m.to_full(H, W))
        holes += any(len(p) > 8 for p in polys)
    # a ring: one polygon whose hole is cut in by a zero-width bridge
    ring = np.ones((7, 7), bool)
    ring[2:5, 2:5] = False
    (poly,) = mask_polygons(BoxMask(3, 1, ring))
    assert np.array_equal(_rasterize([poly], 10, 12), BoxMask(3, 1, ring).to_full(10, 12))
    assert holes > 100
    # an empty mask: one zero-area triangle, so annToMask still works on it
    empty = BoxMask(2, 3, np.zeros((4, 4), bool))
    assert not _rasterize(mask_polygons(empty), 10, 10).any()


@pytest.fixture
def labeled(tmp_path):
    path, root, data = _make_dataset(tmp_path)
    outs = {}
    for fmt in ("dataset", "results", "jsonl"):
        for segm in ("rle", "polygon"):
            out = tmp_path / f"{fmt}-{segm}.json"
            label_dataset(load_coco(path, root), out, "grabcut",
                          LabelConfig(grabcut_iters=1, segmentation=segm), fmt=fmt,
                          progress=False)
            outs[fmt, segm] = out
    return path, data, outs


def test_dataset_format_round_trips_and_polygons_match_rle(labeled):
    path, data, outs = labeled
    rle, poly = COCO(str(outs["dataset", "rle"])), COCO(str(outs["dataset", "polygon"]))
    labeled_ids = [a["id"] for a in data["annotations"] if a["id"] < 900]
    for aid in labeled_ids:
        a, b = rle.anns[aid], poly.anns[aid]
        assert isinstance(b["segmentation"], list)
        assert np.array_equal(rle.annToMask(a), poly.annToMask(b))  # exact, holes included
        assert a["area"] == b["area"] == rle.annToMask(a).sum()
        assert (a["ignore_mask"], a["proxy_iou"]) == (b["ignore_mask"], b["proxy_iou"])


def test_results_format_loads_with_loadRes(labeled):
    path, data, outs = labeled
    gt = COCO(str(path))
    ref = COCO(str(outs["dataset", "rle"]))
    for segm in ("rle", "polygon"):
        results = json.loads(outs["results", segm].read_text())
        assert isinstance(results, list) and len(results) == 15
        assert {r["annotation_id"] for r in results} == {a["id"] for a in data["annotations"]
                                                         if a["id"] < 900}
        dt = gt.loadRes(results)
        for r in results:
            ann = ref.anns[r["annotation_id"]]
            assert r["score"] == ann["score"] and r["mask_source"] == "grabcut"
            assert (r["image_id"], r["category_id"], r["bbox"]) == \
                (ann["image_id"], ann["category_id"], ann["bbox"])
        for d in dt.anns.values():
            want = ref.annToMask(ref.anns[d["annotation_id"]])
            assert np.array_equal(dt.annToMask(d), want)


def test_jsonl_format_is_one_image_per_line_and_rebuilds_the_dataset(labeled):
    path, data, outs = labeled
    ref = json.loads(outs["dataset", "rle"].read_text())
    lines = outs["jsonl", "rle"].read_text().splitlines()
    meta = json.loads(lines[0])["dataset"]
    rows = [json.loads(line) for line in lines[1:]]
    assert [r["image"] for r in rows] == data["images"]
    assert meta["categories"] == data["categories"] and "boxcaseg_label" in meta
    rebuilt = {"images": [r["image"] for r in rows], "categories": meta["categories"],
               "annotations": [a for r in rows for a in r["annotations"]]}
    assert sorted(rebuilt["annotations"], key=lambda a: a["id"]) == \
        sorted(ref["annotations"], key=lambda a: a["id"])
    coco = COCO()
    coco.dataset = rebuilt
    coco.createIndex()
    for a in ref["annotations"]:
        if a["id"] < 900:
            assert np.array_equal(coco.annToMask(coco.anns[a["id"]]),
                                  rle_to_mask(a["segmentation"]))


def test_cli_format_and_segmentation_flags(tmp_path):
    path, root, _ = _make_dataset(tmp_path)
    out = tmp_path / "r.json"
    rc = cli_main(["label", "--method", "box", "--images", str(root), "--boxes", str(path),
                   "--out", str(out), "--no-progress", "--format", "results",
                   "--segmentation", "polygon"])
    assert rc == 0
    results = json.loads(out.read_text())
    assert all(isinstance(r["segmentation"], list) for r in results)
    COCO(str(path)).loadRes(results)
    # COCOeval scores the polygons against the RLE dataset output of the same run: AP 1
    ds = tmp_path / "d.json"
    assert cli_main(["label", "--method", "box", "--images", str(root), "--boxes", str(path),
                     "--out", str(ds), "--no-progress"]) == 0
    gt = COCO()
    gt.dataset = json.loads(ds.read_text())
    # (the skipped box has an empty mask marked boxcaseg_no_mask: not ground truth)
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"]
                                 if not a.get("boxcaseg_no_mask")]
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
