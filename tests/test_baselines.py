"""Box-filled and GrabCut baselines."""

import numpy as np
import pytest

from boxcaseg.labeling.sources import grabcut_mask_status, grabcut_rect
from boxcaseg.structures import box_to_mask as box_mask


def grabcut_mask(image, box, iters=5):
    return grabcut_mask_status(image, box, iters)[0]
from boxcaseg.structures import box_to_mask


@pytest.mark.parametrize("box", [(0, 0, 5, 5), (1.2, 2.7, 9.6, 7.5), (3, 3, 3.4, 3.4),
                                 (-2, -1, 40, 40)])
def test_box_mask_equals_structures(box):
    assert np.array_equal(box_mask(box, 16, 20), box_to_mask(box, 16, 20))


def _disc_image(h=64, w=80, cx=40, cy=30, r=14, seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (30, 60, 40)
    img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    img[disc] = (230, 200, 30)
    return img, disc


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_grabcut_recovers_a_disc_deterministically():
    img, disc = _disc_image()
    box = (40 - 20, 30 - 20, 40 + 20, 30 + 20)
    m = grabcut_mask(img, box, iters=5)
    assert _iou(m, disc) > 0.9
    assert not (m & ~box_to_mask(box, *img.shape[:2])).any()  # confined to the box
    for _ in range(2):
        assert np.array_equal(grabcut_mask(img, box, iters=5), m)
    # the result does not depend on what ran before (RNG re-seeded per box)
    grabcut_mask(img, (0, 0, 30, 30), iters=2)
    assert np.array_equal(grabcut_mask(img, box, iters=5), m)


@pytest.mark.parametrize("box", [(10, 10, 11, 20), (10, 10, 20, 10.9), (10.6, 5, 11.4, 9)])
def test_tiny_box_falls_back_to_filled_box(box):
    img, _ = _disc_image()
    assert grabcut_rect(box, *img.shape[:2]) is None
    m, fell_back = grabcut_mask_status(img, box)
    assert fell_back
    assert np.array_equal(m, box_to_mask(box, *img.shape[:2]))


def test_whole_image_box_falls_back():
    img, _ = _disc_image(h=20, w=24)
    box = (0, 0, 24, 20)
    m, fell_back = grabcut_mask_status(img, box)
    assert fell_back and m.all()


def test_normal_box_does_not_fall_back():
    img, _ = _disc_image()
    assert grabcut_rect((20, 10, 60, 50), *img.shape[:2]) == (20, 10, 40, 40)
    _, fell_back = grabcut_mask_status(img, (20, 10, 60, 50), iters=1)
    assert not fell_back
