"""Synthetic occlusion of salient crops (data/occlusion.py, ``salient_occlude``)."""

from __future__ import annotations

import numpy as np
import pytest

from boxcaseg.data import occlusion
from boxcaseg.data.crops import salient_box
from boxcaseg.data.occlusion import paste_occluder
from boxcaseg.data.train_sets import SalientCropDataset

S = 64
GREEN, RED = (0, 200, 0), (220, 0, 0)


def _crop_with_object():
    """A green crop framing a grey square object that fills the middle."""
    crop = np.zeros((S, S, 3), np.uint8)
    crop[:] = GREEN
    target = np.zeros((S, S), bool)
    target[8:56, 8:56] = True
    crop[target] = (120, 120, 120)
    return crop, target


def _red_disc(h=50, w=70, r=15):
    """A red disc object on a blue background, off-centre in its photo."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (0, 0, 230)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy + 0.5 - 25) ** 2 + (xx + 0.5 - 40) ** 2 <= r * r
    img[mask] = RED
    return img, mask


def _draws(kind: str, n: int = 200):
    """``(seed, result)`` of the first pastes of ``kind`` (front / behind) over the seeds."""
    crop, target = _crop_with_object()
    occ_img, occ_mask = _red_disc()
    for seed in range(n):
        out, new_target, how = paste_occluder(crop, target, occ_img, occ_mask,
                                              np.random.default_rng(seed))
        if how == kind:
            yield seed, out, new_target


def _red(out):
    return (out[..., 0] > 150) & (out[..., 1] < 60) & (out[..., 2] < 60)


def test_in_front_the_target_loses_exactly_the_covered_pixels():
    crop, target = _crop_with_object()
    seen = 0
    for _, out, new_target in _draws("front"):
        red = _red(out)
        assert red.any() and (red & target).any()  # the disc was pasted over the object
        assert not (new_target & ~target).any()  # the target only loses pixels
        lost = target & ~new_target
        # what the target lost is what the disc covers (up to its soft one-pixel rim)
        assert not (lost & ~_dilate(red)).any() and not (red & new_target).any()
        assert lost.sum() <= occlusion.MAX_HIDDEN * target.sum()
        # away from the disc and its soft rim (blur tail + bilinear upscaling) nothing changes
        far = ~_dilate(red, 6)
        assert np.array_equal(out[far], crop[far])
        seen += 1
    assert seen >= 20


def test_behind_the_target_is_whole_and_its_pixels_unchanged():
    crop, target = _crop_with_object()
    seen = 0
    for _, out, new_target in _draws("behind"):
        assert np.array_equal(new_target, target)
        assert np.array_equal(out[target], crop[target])  # the framed object stays on top
        seen += int(_red(out).any())
    assert seen >= 10  # and the disc shows around it in some draws


def test_pasted_object_is_scaled_into_the_drawn_range():
    # a target that is one pixel: the disc is never hidden, its whole area shows
    crop = np.zeros((S, S, 3), np.uint8)
    target = np.zeros((S, S), bool)
    target[31:33, 31:33] = True
    occ_img, occ_mask = _red_disc()
    lo, hi = occlusion.SCALE_RANGE
    areas = []
    for seed in range(60):
        out, _, how = paste_occluder(crop, target, occ_img, occ_mask, np.random.default_rng(seed))
        assert how == "behind" or how == "front"
        areas.append(_red(out).sum())
    # disc diameter 30 px -> lo*S..hi*S px: area pi/4 d^2
    assert min(areas) >= 0.7 * np.pi / 4 * (lo * S) ** 2
    assert max(areas) <= 1.2 * np.pi / 4 * (hi * S) ** 2
    assert max(areas) > 2.5 * min(areas)


def test_a_front_paste_that_would_hide_most_of_the_object_goes_behind():
    crop = np.zeros((S, S, 3), np.uint8)
    target = np.zeros((S, S), bool)
    target[28:36, 28:36] = True  # small: any disc centred on it hides it all
    occ_img, occ_mask = _red_disc()
    hows = {paste_occluder(crop, target, occ_img, occ_mask, np.random.default_rng(s))[2]
            for s in range(40)}
    assert hows == {"behind"}


def test_empty_masks_change_nothing():
    crop, target = _crop_with_object()
    occ_img, _ = _red_disc()
    out, t, how = paste_occluder(crop, target, occ_img, np.zeros(occ_img.shape[:2], bool),
                                 np.random.default_rng(0))
    assert how == "none" and out is crop and t is target
    with pytest.raises(ValueError, match="sizes differ"):
        paste_occluder(crop, target[:-1], occ_img, occ_img[..., 0] > 0, np.random.default_rng(0))


def _dilate(m, times=1):
    for _ in range(times):
        out = m.copy()
        out[1:] |= m[:-1]
        out[:-1] |= m[1:]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
        m = out
    return m


class _Folder:
    """Two salient photos: a grey square and a red disc."""

    def __init__(self):
        sq = np.zeros((50, 70, 3), np.uint8)
        sq[:] = GREEN
        sq_mask = np.zeros((50, 70), bool)
        sq_mask[10:40, 15:55] = True
        sq[sq_mask] = (120, 120, 120)
        self.pairs = [(sq, sq_mask), _red_disc()]

    def __len__(self):
        return 2

    def load(self, i):
        return self.pairs[i]


@pytest.mark.parametrize("mode", ["box", "image"])
def test_dataset_pastes_the_other_photo_and_keeps_the_crop_draw(mode):
    plain = SalientCropDataset(_Folder(), resize=72, crop_size=S, mode=mode)
    occluded = SalientCropDataset(_Folder(), resize=72, crop_size=S, mode=mode, occlude=1.0)
    changed = 0
    for seed in range(30):
        a, b = plain.get(0, seed), occluded.get(0, seed)
        ma, mb = a["mask"][0].numpy() > 0.5, b["mask"][0].numpy() > 0.5
        # the same crop is drawn first (the occlusion draws come after), and the target can only
        # lose the pixels the pasted object covers
        assert not (mb & ~ma).any()
        assert tuple(b["box"].tolist()) == pytest.approx(salient_box(mb))  # MIL box follows
        img_b = b["image"].permute(1, 2, 0).numpy()
        if _red(img_b).any():  # the disc photo is the only source of red
            changed += 1
    assert changed >= 15


def test_occlude_is_validated():
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.errors import ConfigError

    with pytest.raises(ConfigError, match="salient_occlude"):
        TrainConfig(salient_occlude=1.5).validate()
    with pytest.raises(ValueError, match="occlude"):
        SalientCropDataset(_Folder(), occlude=-0.1)


def test_trainer_builds_the_salient_set_with_the_configured_occlusion(tmp_path):
    from test_trainer import make_tiny_data, tiny_cfg

    from boxcaseg.engine.trainer import build_datasets

    data = make_tiny_data(tmp_path)
    _, sal = build_datasets(tiny_cfg(data, tmp_path / "run", salient_occlude=0.5))
    assert sal is not None and sal.occlude == 0.5


def test_scale_range_is_configurable_from_the_cli_override_to_the_paste(tmp_path):
    from test_trainer import make_tiny_data

    from boxcaseg.config import load_config, packaged_config
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.engine.trainer import build_datasets
    from boxcaseg.errors import ConfigError

    data = make_tiny_data(tmp_path)
    cfg = load_config(TrainConfig, packaged_config("boxcaseg_real_cpu.yaml"), [
        *(f"{k}={v}" for k, v in data.items()), "salient_occlude=1",
        "salient_occlude_scale=[1.2, 1.5]"])
    assert cfg.salient_occlude_scale == (1.2, 1.5)
    _, sal = build_datasets(cfg)
    assert sal.occlude_scale == (1.2, 1.5)
    for bad in ("[0.9, 0.3]", "[0, 1]", "[0.5]"):
        with pytest.raises(ConfigError, match="salient_occlude_scale"):
            load_config(TrainConfig, packaged_config("boxcaseg_real_cpu.yaml"),
                        [f"salient_occlude_scale={bad}"])
    # the drawn range reaches the paste: a disc wider than the crop covers most of it
    crop = np.zeros((S, S, 3), np.uint8)
    target = np.zeros((S, S), bool)
    target[31:33, 31:33] = True
    occ_img, occ_mask = _red_disc()
    for seed in range(10):
        out, _, _ = paste_occluder(crop, target, occ_img, occ_mask, np.random.default_rng(seed),
                                   (1.2, 1.5))
        assert _red(out).mean() > 0.6
