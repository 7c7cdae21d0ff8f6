"""SalientFolder: both layouts, pairing by stem, errors that name the file, subsets."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from boxcaseg.data.salient import SalientFolder
from boxcaseg.errors import DataError, ImageReadError


def _write(folder, name: str, h: int = 12, w: int = 16, box=(3, 2, 9, 7), ext: str = ".jpg",
           image_dir: str = "images", mask_dir: str = "masks", value: int = 255):
    """An image and a mask whose foreground is the XYXY ``box`` (None: no mask written)."""
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(name)).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / image_dir / f"{name}{ext}")
    if box is not None:
        m = np.zeros((h, w), np.uint8)
        x1, y1, x2, y2 = box
        m[y1:y2, x1:x2] = value
        Image.fromarray(m).save(folder / mask_dir / f"{name}.png")
    return rgb


def test_images_masks_layout_and_load(tmp_path):
    rgb = _write(tmp_path, "b", ext=".png")
    _write(tmp_path, "a")
    f = SalientFolder(tmp_path)
    assert f.names == ["a", "b"] and len(f) == 2 and f.report["pairs"] == 2
    img, mask = f.load(1)
    assert img.dtype == np.uint8 and img.shape == (12, 16, 3)
    assert np.array_equal(img, rgb)  # png: lossless
    assert mask.dtype == bool and mask.shape == (12, 16)
    expected = np.zeros((12, 16), bool)
    expected[2:7, 3:9] = True
    assert np.array_equal(mask, expected)
    assert f.box(0) == (3, 2, 9, 7)


def test_mask_threshold_is_strictly_above_127(tmp_path):
    _write(tmp_path, "a", box=(0, 0, 4, 4), value=128)
    _write(tmp_path, "b", box=(0, 0, 4, 4), value=127)
    f = SalientFolder(tmp_path)
    assert f.load(0)[1].sum() == 16
    with pytest.raises(DataError, match="b.png.*empty"):
        f.load(1)  # 127 is background: no object at all


def test_duts_layout(tmp_path):
    for name in ("x", "y", "z"):
        _write(tmp_path, name, image_dir="DUTS-TR-Image", mask_dir="DUTS-TR-Mask")
    f = SalientFolder(tmp_path)
    assert f.names == ["x", "y", "z"]
    assert f.image_path(0).parent.name == "DUTS-TR-Image"
    assert f.mask_path(2).name == "z.png"
    assert f.box(1) == (3, 2, 9, 7)


def test_duts_layout_one_level_down(tmp_path):
    # the user points at the folder the DUTS-TR zip was unpacked into
    _write(tmp_path / "DUTS-TR", "q", image_dir="DUTS-TR-Image", mask_dir="DUTS-TR-Mask")
    f = SalientFolder(tmp_path)
    assert f.names == ["q"] and f.image_path(0).parent == tmp_path / "DUTS-TR" / "DUTS-TR-Image"


def test_unmatched_files_are_counted_and_warned(tmp_path, caplog):
    _write(tmp_path, "pair")
    _write(tmp_path, "no_mask", box=None)
    m = np.zeros((4, 4), np.uint8)
    m[1, 1] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "no_image.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        f = SalientFolder(tmp_path)
    assert f.names == ["pair"]
    assert f.report["image_without_mask"] == 1 and f.report["mask_without_image"] == 1
    assert "no_mask" in caplog.text and "no_image" in caplog.text


def test_missing_root_or_no_pairs(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        SalientFolder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="flat"):
        SalientFolder(tmp_path / "flat")  # neither layout
    _write(tmp_path / "only_images", "a", box=None)
    with pytest.raises(DataError, match="only_images.*no image/mask pairs"):
        SalientFolder(tmp_path / "only_images")


def test_corrupt_image_names_the_file(tmp_path):
    _write(tmp_path, "bad")
    (tmp_path / "images" / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    f = SalientFolder(tmp_path)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        f.load(0)


def test_corrupt_mask_names_the_file(tmp_path):
    _write(tmp_path, "a")
    (tmp_path / "masks" / "a.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="a.png"):
        SalientFolder(tmp_path).load(0)


def test_size_mismatch_names_both_files(tmp_path):
    _write(tmp_path, "a", h=12, w=16)
    m = np.zeros((10, 16), np.uint8)
    m[2:5, 2:5] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match=r"a\.jpg.*16x12.*a\.png.*16x10"):
        SalientFolder(tmp_path).load(0)


def test_limit_and_names(tmp_path, caplog):
    for name in ("d", "a", "c", "b", "e"):
        _write(tmp_path, name)
    assert SalientFolder(tmp_path, limit=3).names == ["a", "b", "c"]
    assert SalientFolder(tmp_path, limit=3).report["beyond_limit"] == 2
    assert len(SalientFolder(tmp_path, limit=99)) == 5
    with caplog.at_level(logging.WARNING):
        f = SalientFolder(tmp_path, names=["e", "b", "zz"])
    assert f.names == ["b", "e"] and f.report["name_not_found"] == 1
    assert SalientFolder(tmp_path, names=["e", "b", "d"], limit=2).names == ["b", "d"]
    with pytest.raises(DataError):
        SalientFolder(tmp_path, names=["zz"])
    with pytest.raises(ValueError):
        SalientFolder(tmp_path, limit=0)


def test_min_fg_fraction(tmp_path):
    _write(tmp_path, "a", h=10, w=10, box=(0, 0, 2, 2))  # 4 % of the image
    assert SalientFolder(tmp_path, min_fg_fraction=0.04).load(0)[1].sum() == 4
    with pytest.raises(DataError, match="a.png.*min_fg_fraction"):
        SalientFolder(tmp_path, min_fg_fraction=0.05).load(0)


def test_box_of_irregular_mask(tmp_path):
    _write(tmp_path, "a", h=20, w=20, box=None)
    m = np.zeros((20, 20), np.uint8)
    m[4, 7] = m[15, 2] = m[9, 18] = 255  # three isolated pixels
    Image.fromarray(m).save(tmp_path / "masks" / "a.png")
    assert SalientFolder(tmp_path).box(0) == (2, 4, 19, 16)


def test_seeded_limit_is_a_random_sample_not_the_first_names(tmp_path):
    names = [f"{i:03d}" for i in range(40)]
    for name in names:
        _write(tmp_path, name, h=6, w=8, box=(1, 1, 5, 4))
    a = SalientFolder(tmp_path, limit=10, sample_seed=0).names
    assert a == SalientFolder(tmp_path, limit=10, sample_seed=0).names  # deterministic
    assert a == sorted(a) and len(set(a)) == 10 and set(a) <= set(names)
    assert a != names[:10]  # not the first ten by name
    assert SalientFolder(tmp_path, limit=10, sample_seed=1).names != a
    # spread over the whole listing, not a contiguous block
    idx = [names.index(n) for n in a]
    assert max(idx) - min(idx) > 20


def test_trainer_samples_num_salient_with_the_run_seed(tmp_path):
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.engine.trainer import build_datasets

    for i in range(30):
        _write(tmp_path, f"{i:03d}", h=6, w=8, box=(1, 1, 5, 4))
    cfg = TrainConfig(salient_root=str(tmp_path), box_per_batch=0, num_salient=5, seed=3)
    _, sal = build_datasets(cfg)
    assert sal.folder.names == SalientFolder(tmp_path, limit=5, sample_seed=3).names
