"""bench/real_overlap.py: the oracle removes exactly other instances' pixels, and boxes are
split by how much of them they hold."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def overlap():
    spec = importlib.util.spec_from_file_location("real_overlap",
                                                  REPO / "bench" / "real_overlap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def _two_instances(tmp_path, gt_masks, boxes, pred_masks):
    """Write a one-image GT file (instance i+1 of class i+1) and a labels file with
    ``pred_masks`` for the same annotations; returns their paths."""
    h, w = gt_masks[0].shape
    anns = [{"id": i + 1, "image_id": 1, "category_id": i + 1, "iscrowd": 0, "bbox": box,
             "segmentation": _rle(m)} for i, (m, box) in enumerate(zip(gt_masks, boxes))]
    gt = {"images": [{"id": 1, "width": w, "height": h, "file_name": "x.png"}],
          "annotations": anns,
          "categories": [{"id": a["id"], "name": str(a["id"])} for a in anns]}
    pred = [{**a, "segmentation": _rle(m)} for a, m in zip(anns, pred_masks)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred}))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def test_oracle_and_crowd_split(overlap, tmp_path):
    h = w = 64
    b = np.zeros((h, w), bool); b[20:50, 30:60] = True   # a bike in front of...
    a = np.zeros((h, w), bool); a[10:40, 10:40] = True   # ...a person, whose box holds part of it
    a &= ~b
    c = np.zeros((h, w), bool); c[50:60, 2:12] = True    # alone
    anns = [{"id": i, "image_id": 1, "category_id": cid, "iscrowd": 0, "bbox": bbox,
             "segmentation": _rle(m)}
            for i, cid, m, bbox in [(1, 1, a, [10, 10, 30, 30]), (2, 2, b, [30, 20, 30, 30]),
                                    (3, 3, c, [2, 50, 10, 10])]]
    gt = {"images": [{"id": 1, "width": w, "height": h, "file_name": "x.png"}],
          "annotations": anns, "categories": [{"id": k, "name": str(k)} for k in (1, 2, 3)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    # the person's mask leaks into the bike inside its box; the others are exact
    leak = a | (b & (np.arange(w)[None, :] < 40) & (np.arange(h)[:, None] < 40))
    pred = [{**anns[0], "segmentation": _rle(leak)}, anns[1], anns[2]]
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred}))

    r = overlap.analyse(tmp_path / "gt.json", tmp_path / "pred.json", grid=40, crowd=0.05)
    assert leak.sum() > a.sum()
    leaked = a.sum() / leak.sum()
    assert r["as is"] == pytest.approx((leaked + 1 + 1) / 3)
    assert r["without other instances' pixels (oracle)"] == pytest.approx(1.0)
    assert r["GT through a 40x40 grid (ceiling)"] == pytest.approx(1.0, abs=0.02)
    # the person's box holds 22 % bike pixels; the bike's and the lone box hold none
    assert r["n boxes over 5% other instances"] == 1 and r["n boxes under 5% other instances"] == 2
    assert r["boxes over 5% other instances"] == pytest.approx(leaked)
    assert r["boxes under 5% other instances"] == pytest.approx(1.0)


def test_merge_oracle_gives_contested_pixels_to_their_human_owner(overlap, tmp_path):
    """A small box's mask spills onto the large object it overlaps: the merge ("smaller
    object better") hands the spilled pixels to the small mask and takes them from the large
    one; the oracle gives them to the instance whose human mask holds them."""
    h = w = 64
    large = np.zeros((h, w), bool); large[10:50, 10:50] = True
    small = np.zeros((h, w), bool); small[40:60, 40:60] = True
    small &= ~large                                        # 300 px, partly behind the large one
    spill = np.zeros((h, w), bool); spill[40:60, 40:60] = True     # the whole small box
    # unmerged labels: the large mask is exact, the small one also claims 100 px of it
    gt, pred = _two_instances(tmp_path, [large, small], [[10, 10, 40, 40], [40, 40, 20, 20]],
                              [large, spill])

    r = overlap.analyse(gt, pred, grid=40, crowd=0.05)
    assert r["as is"] == pytest.approx((1.0 + 300 / 400) / 2)
    assert r["contested pixels to the smaller mask (the merge)"] == pytest.approx(
        (1500 / 1600 + 300 / 400) / 2)
    assert r["contested pixels to their human owner (merge oracle)"] == pytest.approx(1.0)


def test_merged_labels_have_nothing_contested(overlap, tmp_path):
    h = w = 32
    a = np.zeros((h, w), bool); a[4:20, 4:20] = True
    b = np.zeros((h, w), bool); b[12:28, 12:28] = True
    b &= ~a
    shifted = np.roll(a, 2, axis=1) & ~b                   # imperfect, but disjoint from b
    gt, pred = _two_instances(tmp_path, [a, b], [[4, 4, 16, 16], [12, 12, 16, 16]],
                              [shifted, b])
    r = overlap.analyse(gt, pred, grid=40, crowd=0.05)
    assert r["as is"] < 1.0
    assert r["contested pixels to the smaller mask (the merge)"] == pytest.approx(r["as is"])
    assert r["contested pixels to their human owner (merge oracle)"] == pytest.approx(r["as is"])
