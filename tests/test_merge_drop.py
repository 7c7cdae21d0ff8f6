"""Merge ("smaller object better") and drop ("proxy box agreement"), paper Sec. 3.4.

These test the production functions (``labeling.postprocess``, box-local masks); the
adapters below only convert full-image masks, which the tests find easier to write."""

import numpy as np
import pytest

from boxcaseg.labeling import postprocess
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.postprocess import box_areas
from boxcaseg.structures import box_to_mask


def _box_masks(masks, boxes):
    h, w = masks.shape[1:]
    for m, b in zip(masks, boxes):  # every source confines its masks to their boxes
        assert not (m & ~box_to_mask(b, h, w)).any()
    return [BoxMask.from_full(m, b) for m, b in zip(masks, boxes)]


def merge_smaller_first(masks, boxes):
    h, w = masks.shape[1:]
    out = postprocess.merge_smaller_first(_box_masks(masks, boxes), np.asarray(boxes, float),
                                          h, w)
    return np.stack([m.to_full(h, w) for m in out])


def proxy_box_iou(mask, box):
    return postprocess.proxy_iou(BoxMask.from_full(mask, box), box, *mask.shape)


def drop_decisions(masks, boxes, drop_iou, drop=True):
    cfg = LabelConfig(drop_iou=drop_iou, drop=drop)
    ious = [proxy_box_iou(m, b) for m, b in zip(masks, boxes)]
    return ious, [postprocess.ignores(int(m.sum()), i, None, cfg) for m, i in zip(masks, ious)]


def _brute_merge(masks, boxes):
    """Per-pixel reference: the owner is the min (box area, index) among masks covering it."""
    k, h, w = masks.shape
    areas = box_areas(boxes)
    out = np.zeros_like(masks)
    for y in range(h):
        for x in range(w):
            owners = [(areas[i], i) for i in range(k) if masks[i, y, x]]
            if owners:
                out[min(owners)[1], y, x] = True
    return out


def test_nested_boxes_overlap_goes_to_the_small_one():
    h, w = 20, 20
    big, small = (0, 0, 20, 20), (5, 5, 10, 10)
    masks = np.stack([box_to_mask(big, h, w), box_to_mask(small, h, w)])
    out = merge_smaller_first(masks, [big, small])
    assert out[1].sum() == 25 and np.array_equal(out[1], masks[1])
    assert not (out[0] & out[1]).any()
    assert np.array_equal(out[0], masks[0] & ~masks[1])
    # order of the input does not matter: the small one still wins
    out2 = merge_smaller_first(masks[::-1].copy(), [small, big])
    assert np.array_equal(out2[0], masks[1])


def test_equal_areas_first_listed_wins():
    h, w = 10, 12
    a, b = (0, 0, 6, 6), (3, 3, 9, 9)
    masks = np.stack([box_to_mask(a, h, w), box_to_mask(b, h, w)])
    out = merge_smaller_first(masks, [a, b])
    overlap = masks[0] & masks[1]
    assert overlap.sum() == 9
    assert out[0][overlap].all() and not out[1][overlap].any()
    out_rev = merge_smaller_first(masks[::-1].copy(), [b, a])
    assert out_rev[0][overlap].all() and not out_rev[1][overlap].any()


def test_disjoint_unchanged():
    h, w = 8, 16
    boxes = [(0, 0, 4, 4), (8, 2, 16, 8)]
    masks = np.stack([box_to_mask(b, h, w) for b in boxes])
    assert np.array_equal(merge_smaller_first(masks, boxes), masks)


def test_merge_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k, h, w = rng.integers(1, 6), 9, 11
        masks = rng.random((k, h, w)) < 0.5
        xy = rng.uniform(0, 8, size=(k, 2))
        wh = rng.choice([2.0, 3.0, 4.5], size=(k, 2))  # repeated sizes -> ties are exercised
        boxes = np.concatenate([xy, xy + wh], axis=1)
        masks &= np.stack([box_to_mask(b, h, w) for b in boxes])
        assert np.array_equal(merge_smaller_first(masks, boxes), _brute_merge(masks, boxes))


@pytest.mark.parametrize("box", [(3, 4, 4, 5), (0, 0, 2, 3), (5, 1, 22, 6),
                                 (2.4, 3.6, 7.49, 9.2), (1.2, 1.2, 1.8, 1.6),
                                 (10.5, 0.0, 29.51, 4.5)])
def test_perfect_mask_scores_exactly_one(box):
    h, w = 12, 30
    mask = box_to_mask(box, h, w)
    assert mask.any()
    assert proxy_box_iou(mask, box) == 1.0


def test_proxy_iou_value_and_empty():
    h, w = 10, 10
    box = (0, 0, 10, 10)
    mask = np.zeros((h, w), bool)
    assert proxy_box_iou(mask, box) == 0.0
    mask[0:5, 0:10] = True  # tight box covers half the GT box
    assert proxy_box_iou(mask, box) == pytest.approx(0.5)
    mask[:] = False
    mask[0, 0] = mask[9, 9] = True  # two corner pixels: tight box is the whole box
    assert proxy_box_iou(mask, box) == 1.0


def test_drop_at_the_threshold_boundary():
    h, w = 10, 10
    box = (0, 0, 10, 10)
    half = np.zeros((h, w), bool)
    half[:, :5] = True  # proxy IoU exactly 0.5
    masks = np.stack([half])
    ious, ignore = drop_decisions(masks, [box], drop_iou=0.5)
    assert ious == [0.5] and ignore == [False]  # equal to the threshold: kept
    _, ignore = drop_decisions(masks, [box], drop_iou=0.5000001)
    assert ignore == [True]
    _, ignore = drop_decisions(masks, [box], drop_iou=0.5000001, drop=False)
    assert ignore == [False]


def test_empty_mask_always_dropped():
    masks = np.zeros((1, 6, 6), bool)
    for thr, drop in [(0.0, True), (0.0, False), (0.95, True)]:
        ious, ignore = drop_decisions(masks, [(1, 1, 4, 4)], drop_iou=thr, drop=drop)
        assert ious == [0.0] and ignore == [True]


def test_merged_big_mask_can_be_dropped():
    # Fig. 5: a small object covering one end of a big box: after the merge the big object's
    # tight box shrinks, so its proxy IoU falls and it gets dropped.
    h, w = 10, 20
    big, small = (0, 0, 20, 10), (10, 0, 20, 10)
    masks = np.stack([box_to_mask(big, h, w), box_to_mask(small, h, w)])
    merged = merge_smaller_first(masks, [big, small])
    ious, ignore = drop_decisions(merged, [big, small], drop_iou=0.95)
    assert ious == [0.5, 1.0] and ignore == [True, False]
