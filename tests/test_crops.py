import numpy as np
import pytest

from boxcaseg.data.crops import (augmented_box_crop, box_augmentation, clip_crop_box,
                                 crop_and_resize, salient_box, salient_box_crop, salient_crop)
from boxcaseg.structures import box_to_mask, mask_to_box


@pytest.mark.parametrize("mode", ["centre", "corner"])
def test_box_augmentation_ranges_follow_the_paper(mode):
    rng = np.random.default_rng(0)
    x, y, w, h = 10.0, 20.0, 40.0, 80.0
    out = np.array([box_augmentation((x, y, w, h), rng, mode) for _ in range(4000)])
    sw, sh = out[:, 2] / w, out[:, 3] / h
    if mode == "corner":  # the top-left corner moves by the shift
        dx, dy = (out[:, 0] - x) / w, (out[:, 1] - y) / h
    else:  # the centre moves by the shift, the size changes about the new centre
        dx = (out[:, 0] + out[:, 2] / 2 - (x + w / 2)) / w
        dy = (out[:, 1] + out[:, 3] / 2 - (y + h / 2)) / h
    for v, lo, hi in ((dx, -0.25, 0.25), (dy, -0.25, 0.25), (sw, 0.5, 1.5), (sh, 0.5, 1.5)):
        assert v.min() >= lo - 1e-9 and v.max() <= hi + 1e-9
        # uniform draws fill the whole range, not a sub-range
        assert v.min() < lo + 0.02 * (hi - lo) and v.max() > hi - 0.02 * (hi - lo)
        assert abs(v.mean() - (lo + hi) / 2) < 0.02 * (hi - lo)
    # the four draws are independent (shift x does not follow width scale)
    assert abs(np.corrcoef(dx, sw)[0, 1]) < 0.1
    # the same seed gives the same box
    assert box_augmentation((x, y, w, h), np.random.default_rng(3), mode) == \
        box_augmentation((x, y, w, h), np.random.default_rng(3), mode)


def test_centre_jitter_spreads_crop_centres_less_than_corner_jitter():
    box = (100.0, 100.0, 40.0, 80.0)
    centres = {}
    for mode in ("centre", "corner"):
        rng = np.random.default_rng(1)
        out = np.array([box_augmentation(box, rng, mode) for _ in range(4000)])
        centres[mode] = out[:, 0] + out[:, 2] / 2 - (box[0] + box[2] / 2)
    # corner: shift U(-.25,.25) plus drift (s - 1) / 2, s ~ U(.5, 1.5): std 0.185 w vs 0.144 w
    assert abs(centres["centre"].mean()) < 0.01 * box[2]
    assert centres["corner"].std() > 1.2 * centres["centre"].std()
    assert centres["centre"].std() == pytest.approx(0.5 / np.sqrt(12) * box[2], rel=0.05)


def test_unknown_jitter_mode_is_rejected():
    with pytest.raises(ValueError, match="centre"):
        box_augmentation((0, 0, 10, 10), np.random.default_rng(0), "middle")


def test_centre_jitter_crops_are_clipped_to_the_image_and_keep_the_box_registered():
    img = _coord_image(60, 80)
    gt = (0.0, 0.0, 30.0, 20.0)  # at the image corner: most jitters stick out
    for seed in range(50):
        crop, box = augmented_box_crop(img, gt, 32, np.random.default_rng(seed), jitter="centre")
        # clipped: the crop never shows black padding (channel 2 is 200 everywhere inside)
        assert (crop[..., 2] > 0).all()
        # the GT box, mapped into the crop, still starts at the image origin (clipped crop
        # boxes start at x = 0, y = 0 here)
        assert box[0] == pytest.approx(0.0) and box[1] == pytest.approx(0.0)
    # the corner reading is not clipped: some crops do show padding
    padded = sum(int((augmented_box_crop(img, gt, 32, np.random.default_rng(s),
                                          jitter="corner")[0][..., 2] == 0).any())
                 for s in range(50))
    assert padded > 10


def _coord_image(h, w):
    """uint8 image whose channels encode the column, the row, and a constant 200."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 200)], -1).astype(np.uint8)


def test_crop_equal_to_gt_box_maps_gt_onto_whole_crop():
    img = _coord_image(60, 80)
    gt = (12.0, 7.0, 52.0, 47.0)
    crop, box = crop_and_resize(img, gt, 32, gt)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert box == pytest.approx((0.0, 0.0, 32.0, 32.0))


def test_integer_crop_at_scale_one_is_an_exact_slice():
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    crop, box = crop_and_resize(img, (10, 5, 42, 37), 32, (20, 15, 30, 25))
    np.testing.assert_array_equal(crop, img[5:37, 10:42])
    assert box == pytest.approx((10, 10, 20, 20))


def test_pixel_level_affine_mapping_at_scale_two():
    # crop of 16x16 px upsampled to 32: output pixel (v,u) has its centre at
    # x = x1 + (u + 0.5) / 2 in edge coordinates, i.e. index x1 + (u + 0.5)/2 - 0.5.
    img = _coord_image(40, 40)
    x1, y1 = 8, 4
    crop, box = crop_and_resize(img, (x1, y1, x1 + 16, y1 + 16), 32, (x1 + 4, y1 + 2, x1 + 8, y1 + 10))
    u = np.arange(32)
    expect = x1 + (u + 0.5) / 2 - 0.5
    # columns channel changes linearly along u (interior pixels; no rounding beyond 0.5)
    assert np.abs(crop[10, 1:-1, 0].astype(float) - expect[1:-1]).max() <= 0.5
    expect_v = y1 + (u + 0.5) / 2 - 0.5
    assert np.abs(crop[1:-1, 10, 1].astype(float) - expect_v[1:-1]).max() <= 0.5
    assert box == pytest.approx((8.0, 4.0, 16.0, 20.0))


def test_padding_outside_the_image_is_zero_and_box_is_clipped():
    img = np.full((20, 20, 3), 255, np.uint8)
    # crop box [-20, 40) x [0, 20): left quarter and right quarter are outside the image
    crop, box = crop_and_resize(img, (-20, 0, 40, 20), 60, (-30, 2, 10, 18))
    assert crop.shape == (60, 60, 3)
    # output columns whose centre lies outside the image are exactly 0, all others exactly 255
    # (the image's own edge pixels are not blended with the padding)
    assert (crop[:, :20] == 0).all() and (crop[:, 40:] == 0).all()
    assert (crop[:, 20:40] == 255).all()
    # gt box maps to x in [-10, 30) * 1 then is clipped to the crop, y scaled by 3
    assert box == pytest.approx((0.0, 6.0, 30.0, 54.0))


def test_augmented_box_crop_keeps_box_and_pixels_registered():
    # a white box on black: after any jitter, the white pixels in the crop are the target box
    h, w = 100, 120
    gt = (30.0, 20.0, 70.0, 80.0)
    img = np.zeros((h, w, 3), np.uint8)
    img[box_to_mask(gt, h, w)] = 255
    rng = np.random.default_rng(5)
    for _ in range(20):
        crop, box = augmented_box_crop(img, gt, 64, rng)
        white = crop[..., 0] >= 128
        got = mask_to_box(white)
        assert got is not None
        assert np.allclose(got, box, atol=1.01), (got, box)
    crop, box = augmented_box_crop(img, gt, 64, rng, augment=False)
    assert box == pytest.approx((0, 0, 64, 64)) and (crop[2:-2, 2:-2] == 255).all()


def test_salient_crop_keeps_mask_and_image_aligned_including_flip():
    rng = np.random.default_rng(0)
    h, w = 90, 130
    mask = np.zeros((h, w), bool)
    mask[20:60, 10:50] = True  # off-centre object, so a flip is visible
    img = np.zeros((h, w, 3), np.uint8)
    img[mask] = (255, 0, 0)
    img[~mask] = (0, 0, 255)
    flipped = unflipped = 0
    for _ in range(30):
        crop, cmask = salient_crop(img, mask, resize=40, crop=32, rng=rng, flip=True)
        assert crop.shape == (32, 32, 3) and cmask.shape == (32, 32) and cmask.dtype == bool
        red = crop[..., 0] > crop[..., 2]
        # image and mask agree except at (anti-aliased) boundary pixels
        assert (red != cmask).mean() < 0.05
        b = salient_box(cmask)
        assert b == tuple(float(v) for v in mask_to_box(cmask))
        cx = (b[0] + b[2]) / 2
        flipped += cx > 16
        unflipped += cx < 16
    assert flipped > 3 and unflipped > 3  # random horizontal flips happen both ways


def test_salient_crop_without_flip_matches_resize_then_slice():
    import cv2
    rng_img = np.random.default_rng(2)
    img = rng_img.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:30, 8:25] = True
    # resize 40 -> 40 is the identity, so the crop must be a plain slice of the image
    crop, cmask = salient_crop(img, mask, resize=40, crop=24, rng=np.random.default_rng(9), flip=False)
    r = np.random.default_rng(9)
    ox, oy = int(r.integers(0, 17)), int(r.integers(0, 17))
    np.testing.assert_array_equal(crop, img[oy:oy + 24, ox:ox + 24])
    np.testing.assert_array_equal(cmask, mask[oy:oy + 24, ox:ox + 24])
    # and a 2x downscale agrees with cv2.resize followed by a slice
    crop2, _ = salient_crop(img, mask, resize=20, crop=20, rng=np.random.default_rng(0), flip=False)
    ref = cv2.resize(img, (20, 20), interpolation=cv2.INTER_LINEAR)
    assert np.abs(crop2.astype(int) - ref.astype(int)).max() <= 1


def test_salient_box_of_empty_mask_is_zero():
    assert salient_box(np.zeros((4, 4), bool)) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        salient_crop(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool), resize=8, crop=16)


def test_clip_crop_box_keeps_a_minimum_size_inside_the_image():
    assert clip_crop_box((-5, -5, 50, 40), 30, 20) == (0.0, 0.0, 30.0, 20.0)
    x1, y1, x2, y2 = clip_crop_box((35, 5, 45, 10), 30, 20)  # entirely right of the image
    assert 0 <= x1 < x2 <= 30 and x2 - x1 == pytest.approx(1.0)


def test_salient_box_crop_frames_the_object_like_a_box_crop():
    img = _coord_image(100, 120)
    mask = np.zeros((100, 120), bool)
    mask[30:70, 40:100] = True  # a 60 x 40 object
    fills = []
    for seed in range(40):
        crop, cmask = salient_box_crop(img, mask, 48, np.random.default_rng(seed), flip=False)
        assert crop.shape == (48, 48, 3) and cmask.shape == (48, 48)
        assert cmask.any()
        fills.append(cmask.mean())
        # image and mask stay registered: masked pixels have columns 40..99 in channel 0
        cols = crop[..., 0][cmask]
        assert cols.min() >= 39 and cols.max() <= 100
    # box-framed: the object fills the crop about as much as a jittered box crop (mean
    # area factor 1 / E[sw * sh] ~ 1), far more than in the whole image (0.2)
    assert 0.6 < float(np.mean(fills)) < 1.0


class _OneSalient:
    def __init__(self, image, mask):
        self.image, self.mask = image, mask

    def __len__(self):
        return 1

    def load(self, i):
        return self.image, self.mask


@pytest.mark.parametrize("mode", ["image", "box", "mixed"])
def test_salient_dataset_modes_give_registered_samples(mode):
    from boxcaseg.data.train_sets import SalientCropDataset

    img = _coord_image(100, 120)
    mask = np.zeros((100, 120), bool)
    mask[40:60, 50:80] = True  # a small object: whole-image crops show it small
    ds = SalientCropDataset(_OneSalient(img, mask), resize=64, crop_size=48, mode=mode)
    fills = []
    for seed in range(30):
        s = ds.get(0, seed)
        m = s["mask"][0].numpy() > 0.5
        assert s["image"].shape == (3, 48, 48) and s["is_salient"]
        assert tuple(s["box"].tolist()) == pytest.approx(salient_box(m))  # MIL box = mask's box
        fills.append(m.mean())
    # box framing fills the crop with the object; the whole-image view keeps it at ~5 %
    if mode == "box":
        assert np.mean(fills) > 0.5
    elif mode == "image":
        assert np.mean(fills) < 0.15
    else:
        assert 0.15 < np.mean(fills) < 0.6


def test_training_options_are_validated():
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.errors import ConfigError

    for bad in ({"box_jitter": "middle"}, {"salient_crop": "boxes"},
                {"pixel_heads_on": "box"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad).validate()
