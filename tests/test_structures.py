import numpy as np
import pytest

from boxcaseg.structures import (box_iou, box_to_mask, mask_to_box, mask_to_rle, pixel_span,
                                 rle_to_mask, segmentation_to_mask, snap_box, xywh_to_xyxy,
                                 xyxy_to_xywh)


def test_pixel_centre_rule():
    # centres 0.5, 1.5, 2.5 ... ; [0.5, 2.5) covers pixels 0 and 1 only
    assert pixel_span(0.5, 2.5) == (0, 2)
    assert pixel_span(0.6, 2.4) == (1, 2)
    assert pixel_span(0.0, 3.0) == (0, 3)
    assert pixel_span(1.2, 1.4) == (1, 1)  # no centre inside: empty


def test_box_mask_and_tight_box_roundtrip():
    m = box_to_mask(xywh_to_xyxy([2, 3, 4, 5]), 20, 20)
    assert m.sum() == 20
    assert mask_to_box(m) == (2, 3, 6, 8)
    assert xyxy_to_xywh(mask_to_box(m)) == [2, 3, 4, 5]
    assert mask_to_box(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_perfect_mask_box_iou_is_one(size):
    box = (3.3, 4.7, 3.3 + size, 4.7 + size)
    m = box_to_mask(box, 80, 80)
    assert box_iou(mask_to_box(m), snap_box(box)) == 1.0


def test_box_iou_values():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_rle_roundtrip_and_polygons():
    rng = np.random.default_rng(0)
    m = rng.random((13, 17)) > 0.5
    assert (rle_to_mask(mask_to_rle(m)) == m).all()
    poly = [[1, 1, 9, 1, 9, 5, 1, 5]]
    pm = segmentation_to_mask(poly, 10, 12)
    assert pm[2:5, 2:9].all() and not pm[8:, :].any()
