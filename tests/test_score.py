"""Per-mask quality score: range, known values, determinism, written on every labeled mask."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from boxcaseg.data.coco import load_coco
from boxcaseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.labeling.predictor import soft_ious
from reference_impl import postprocess_fields as postprocess
from boxcaseg.labeling.score import MaskFeatures, auroc, box_overlaps, mask_score, spearman
from boxcaseg.structures import box_iou


class SoftRedModel(nn.Module):
    """Probability = the crop's red channel (0..1), so each test image sets its own map."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def predict_proba(self, x, out_size=None):
        red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        return red.clamp(0, 1)


def test_soft_iou_known_values():
    sharp = torch.zeros(1, 1, 8, 8)
    sharp[..., 2:6, 2:6] = 1.0
    flat = torch.full((1, 1, 8, 8), 0.6)   # mask = everything; E[inter] 0.6 N, union N
    low = torch.full((1, 1, 8, 8), 0.2)    # empty mask
    half = torch.zeros(1, 1, 8, 8)
    half[..., :, :4] = 0.8                 # mask = left half; inter 0.8*32, union 32
    half[..., :, 4:] = 0.3                 # ... + 0.3*32 outside
    got = soft_ious(torch.cat([sharp, flat, low, half]), 0.5)
    assert got == pytest.approx([1.0, 0.6, 0.0, 0.8 * 32 / (32 + 0.3 * 32)])
    assert soft_ious(torch.zeros(0, 1, 4, 4), 0.5) == []


def test_score_range_on_random_maps_and_features():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 1, 12, 12, generator=g) ** torch.rand(200, 1, 1, 1, generator=g)
    for mode in ("fixed", "minmax"):
        soft = soft_ious(probs, 0.5, mode)
        assert all(0.0 <= s <= 1.0 for s in soft)
    rng = np.random.default_rng(0)
    for _ in range(500):
        f = MaskFeatures(proxy_iou=float(rng.random()), merge_kept=float(rng.random()),
                         soft_iou=float(rng.random()) if rng.random() < 0.8 else None,
                         box_overlap=float(rng.random()))
        assert 0.0 <= mask_score(f) <= 1.0
    # each factor pulls the score down; a perfect mask scores 1
    assert mask_score(MaskFeatures(1.0, 1.0, 1.0)) == 1.0
    assert mask_score(MaskFeatures(0.25, 1.0, 1.0)) == pytest.approx(0.5)
    assert mask_score(MaskFeatures(1.0, 0.5, 0.8)) == pytest.approx(0.4)
    assert mask_score(MaskFeatures(0.0, 1.0, 1.0)) == 0.0
    assert mask_score(MaskFeatures(1.0, 1.0, 1.0, box_overlap=0.3)) == pytest.approx(0.7)
    assert mask_score(MaskFeatures(1.0, 1.0, None, box_overlap=1.0)) == 0.0


def test_merge_lowers_the_score_of_the_mask_that_lost_pixels():
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 0:10, 0:10] = True   # big box's mask covers the small box's object
    masks[1, 4:8, 4:8] = True
    boxes = np.array([[0, 0, 10, 10], [4, 4, 8, 8]], float)
    fields = postprocess(masks, boxes, LabelConfig(), soft=[1.0, 1.0])
    overlap = 16 / 100  # the two boxes' IoU, in both scores
    assert fields[1]["score"] == pytest.approx(1 - overlap)  # keeps all of its mask
    assert fields[0]["score"] == pytest.approx((100 - 16) / 100 * (1 - overlap))


def test_box_overlaps_known_values():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [40, 40, 50, 50]], float)
    # boxes 0 and 1 share half of each: IoU 50 / 150; box 2 is alone
    assert box_overlaps(boxes) == pytest.approx([1 / 3, 1 / 3, 0.0])
    assert box_overlaps(boxes[:1]) == pytest.approx([0.0])      # never with itself
    assert box_overlaps(np.zeros((0, 4))).shape == (0,)
    # identical boxes overlap fully; a GT-mask box of the image counts like any other box
    assert box_overlaps(boxes[:1], boxes[:1]) == pytest.approx([1.0])
    assert box_overlaps(boxes[2:], np.array([[45, 40, 55, 50]])) == pytest.approx([1 / 3])
    # degenerate boxes (zero area) give no overlap instead of a division by zero
    assert box_overlaps(np.array([[3, 3, 3, 3], [3, 3, 3, 3]], float)) == pytest.approx([0, 0])
    # any memory layout and any chunking give the same answer as the scalar box IoU
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 50, (30, 2))
    many = np.concatenate([xy, xy + rng.uniform(1, 30, (30, 2))], axis=1)
    ref = [max(box_iou(a, c) for j, c in enumerate(many) if j != i) for i, a in enumerate(many)]
    assert box_overlaps(many) == pytest.approx(ref)
    assert box_overlaps(np.asfortranarray(many), chunk=7) == pytest.approx(ref)
    assert box_overlaps(many[:10], many[10:], chunk=4) == pytest.approx(ref[:10])


def test_overlapping_boxes_score_lower_than_the_same_masks_apart():
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:25, 5:25] = True
    masks[1, 5:25, 35:55] = True
    apart = np.array([[5, 5, 25, 25], [35, 5, 55, 25]], float)
    far = postprocess(masks, apart, LabelConfig(), soft=[0.9, 0.9])
    assert [f["score"] for f in far] == pytest.approx([0.9, 0.9])
    # the same second mask, but its box now covers most of the first box too
    close = np.array([[5, 5, 25, 25], [8, 5, 55, 25]], float)
    near = postprocess(masks, close, LabelConfig(), soft=[0.9, 0.9])
    iou = 17 * 20 / (20 * 20 + 47 * 20 - 17 * 20)
    assert near[0]["score"] == pytest.approx(0.9 * (1 - iou))
    assert near[0]["score"] < far[0]["score"]


def test_rank_metrics():
    a = np.array([0.1, 0.4, 0.35, 0.8])
    assert spearman(a, a ** 2) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 1, 0, 1], bool)) == 0.75


def _dataset(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in range(3):
        img = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)  # soft, noisy red maps
        img[8:30, 6:40, 0] = np.clip(img[8:30, 6:40, 0].astype(int) + 120, 0, 255)
        Image.fromarray(img).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 40})
        for j, bbox in enumerate(([4, 6, 38, 26], [10, 10, 12, 12], [30, 2, 16, 30])):
            anns.append({"id": 10 * i + j, "image_id": i + 1, "category_id": 1, "bbox": bbox,
                         "iscrowd": 0, "area": bbox[2] * bbox[3]})
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "x"}]}))
    return path, root


@pytest.mark.parametrize("method", ["boxcaseg", "grabcut", "box"])
def test_every_labeled_mask_has_a_deterministic_score_in_range(tmp_path, method):
    path, root = _dataset(tmp_path)
    cfg = LabelConfig(crop_size=32, jit=False)
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.json"
        label_dataset(load_coco(path, root), out, method, cfg,
                      model=SoftRedModel() if method == "boxcaseg" else None, progress=False)
        outs.append(json.loads(out.read_text()))
    scores = [[a["score"] for a in o["annotations"]] for o in outs]
    assert scores[0] == scores[1]
    assert len(scores[0]) == 9 and all(0.0 <= s <= 1.0 for s in scores[0])
    assert all(a["mask_source"] == method for a in outs[0]["annotations"])
    if method == "boxcaseg":  # the soft maps differ per box: the score is not a constant
        assert len(set(scores[0])) > 3
