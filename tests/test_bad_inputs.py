"""Bad-input matrix (issue 12): for each kind of bad input, what the user sees (one line
``boxcaseg <cmd>: error: <file or id>: <what> (<what to do>)``), the exit code (2 = bad input)
and that no output is half-written or silently wrong. Every fixture is generated here.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from boxcaseg.cli import main, one_line
from boxcaseg.data.coco import load_coco, parse_coco
from boxcaseg.errors import DataError
from boxcaseg.io import atomic_write_json, atomic_write_text, image_size, read_image_rgb
from boxcaseg.runlock import OutputLock
from boxcaseg.labeling.schema import NO_MASK as NO_MASK_KEY
from boxcaseg.structures import mask_to_box, mask_to_rle, xyxy_to_xywh

# ----------------------------------------------------------------------------- helpers


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def error_lines(err: str, command: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(f"boxcaseg {command}: error: ")]


def assert_one_error(err: str, command: str, *needles: str) -> str:
    """Exactly one error line, no traceback, containing every needle."""
    assert "Traceback" not in err, err
    lines = error_lines(err, command)
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _blob(rng, h, w):
    img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1
    img[mask] = rng.integers(150, 256, 3, dtype=np.uint8)
    return img, mask


def make_train_data(root: Path, n_salient: int = 8, n_box: int = 4, size: int = 40) -> dict:
    """A salient folder and a box set, tiny; returns paths as str."""
    rng = np.random.default_rng(0)
    sal = root / "salient"
    (sal / "images").mkdir(parents=True)
    (sal / "masks").mkdir()
    for i in range(n_salient):
        img, mask = _blob(rng, size, size)
        Image.fromarray(img).save(sal / "images" / f"s{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(sal / "masks" / f"s{i}.png")
    imgs = root / "boxes"
    imgs.mkdir()
    images, anns = [], []
    for i in range(n_box):
        img, mask = _blob(rng, size, size + 8)
        Image.fromarray(img).save(imgs / f"b{i}.png")
        images.append({"id": i + 1, "file_name": f"b{i}.png", "width": size + 8, "height": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": xyxy_to_xywh(mask_to_box(mask))})
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps({"images": images, "annotations": anns,
                                 "categories": [{"id": 1, "name": "thing"}]}))
    return {"salient_root": str(sal), "boxes_json": str(boxes), "images_root": str(imgs)}


def train_args(data: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), f"salient_root={data['salient_root']}",
            f"boxes_json={data['boxes_json']}", f"images_root={data['images_root']}",
            "model.backbone=resnet18", "model.pretrained=none", "batch_size=4",
            "box_per_batch=2", "crop_size=32", "salient_resize=36", "max_steps=2", "lr=0.01",
            "num_workers=0", "checkpoint_every=1", "device=cpu", "optimizer=adamw", *extra]


MRCNN = ["backbone=efficientnet_lite0_fpn", "pretrained=none", "min_size=64", "max_size=64",
         "anchor_sizes=[8,16,32,64,128]", "rpn_pre_nms_top_n_train=100",
         "rpn_post_nms_top_n_train=50", "rpn_pre_nms_top_n_test=50",
         "rpn_post_nms_top_n_test=20", "rpn_batch_size_per_image=32",
         "box_batch_size_per_image=16", "box_detections_per_img=10", "batch_size=2",
         "optimizer=adamw", "lr=0.001", "warmup_iters=1", "steps=[1000]", "max_iters=2",
         "amp=false", "num_workers=0", "checkpoint_every=1", "device=cpu", "box_head_dim=64"]


def make_mask_data(root: Path, n: int = 2, size: int = 64) -> dict:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img, mask = _blob(rng, size, size)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": xyxy_to_xywh(mask_to_box(mask)), "area": float(mask.sum()),
                     "segmentation": mask_to_rle(mask)})
    gt = root / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 1, "name": "blob"}]}))
    return {"train_json": str(gt), "images_root": str(root / "images")}


def mrcnn_args(data: dict, out: Path, *extra: str) -> list[str]:
    return ["train-maskrcnn", "--out", str(out), f"train_json={data['train_json']}",
            f"images_root={data['images_root']}", *MRCNN, *extra]


@pytest.fixture(scope="module")
def mrcnn_run(tmp_path_factory):
    """One 2-iteration Mask R-CNN run: its data and checkpoint (for predict / resume tests)."""
    root = tmp_path_factory.mktemp("mrcnn")
    data = make_mask_data(root)
    assert main(mrcnn_args(data, root / "run")) == 0
    return root, data


def _exif_rotated_jpeg(path: Path, stored_hw=(40, 100), orientation: int = 6) -> np.ndarray:
    """A JPEG whose stored pixels are ``stored_hw`` with an EXIF orientation tag."""
    h, w = stored_hw
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 4] = 255  # a white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    return arr


# ------------------------------------------------------- 1. image modes: scaled, not clipped


def test_16bit_png_is_scaled_to_8bit_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)[None].repeat(4, 0)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = read_image_rgb(tmp_path / "g16.png")
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    row = rgb[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and abs(int(row[128]) - 128) <= 1
    assert np.all(np.diff(row.astype(int)) >= 0)  # monotone: the ramp survives
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    expected = np.round(ramp[0] / 257).astype(np.uint8)
    assert np.abs(row.astype(int) - expected).max() <= 1


def test_32bit_integer_image_scaled_and_out_of_range_refused(tmp_path):
    ok = np.array([[0, 65535]], dtype=np.int32)
    Image.fromarray(ok, mode="I").save(tmp_path / "i.tif")
    assert read_image_rgb(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 255]
    Image.fromarray(np.array([[0, 10**6]], dtype=np.int32), mode="I").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match="big.tif.*outside 0..65535"):
        read_image_rgb(tmp_path / "big.tif")


def test_alpha_palette_cmyk_and_1bit_images(tmp_path):
    # LA: fully transparent pixels show as white (as viewers / annotation tools display them)
    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0] = (10, 255)  # opaque dark
    la[1, 1] = (10, 0)  # transparent
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    rgb = read_image_rgb(tmp_path / "la.png")
    assert rgb[0, 0].tolist() == [10, 10, 10] and rgb[1, 1].tolist() == [255, 255, 255]
    # P with a transparent palette index
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    rgb = read_image_rgb(tmp_path / "p.png")
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [200, 0, 0]
    # CMYK (pure yellow) and 1-bit
    Image.new("CMYK", (2, 2), (0, 0, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = read_image_rgb(tmp_path / "c.jpg")[0, 0].tolist()
    assert r > 240 and g > 240 and b < 20
    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    one.save(tmp_path / "one.png")
    assert read_image_rgb(tmp_path / "one.png")[0, :, 0].tolist() == [0, 255]


def test_16bit_image_trains_on_its_content_not_a_blank(tmp_path):
    """The whole read path a training sample takes: a 16-bit box image is not white."""
    from boxcaseg.data.train_sets import BoxCropDataset

    ramp = (np.linspace(0, 60000, 48)[None].repeat(40, 0)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "b.png")
    coco = parse_coco({"images": [{"id": 1, "file_name": "b.png", "width": 48, "height": 40}],
                       "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                        "bbox": [4, 4, 40, 30]}],
                       "categories": [{"id": 1}]}, "mem", tmp_path)
    sample = BoxCropDataset(coco, 32, augment=False).get(0, seed=0)
    img = sample["image"].float()
    assert img.std() > 20 and img.max() < 255  # a gradient, not a saturated blank


# ------------------------------------------------------------ 5. EXIF orientation


def test_exif_rotated_jpeg_is_read_upright_everywhere(tmp_path):
    stored = _exif_rotated_jpeg(tmp_path / "r.jpg")
    rgb = read_image_rgb(tmp_path / "r.jpg")
    assert rgb.shape[:2] == (100, 40) and image_size(tmp_path / "r.jpg") == (40, 100)
    # orientation 6 = rotate 90 deg clockwise for display: the stored left band is on top
    assert rgb[:20].mean() > 200 and rgb[40:].mean() < 30
    assert stored.shape[:2] == (40, 100)
    good = {"images": [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 100}],
            "annotations": [], "categories": [{"id": 1}]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert load_coco(tmp_path / "good.json", tmp_path, check_images=True).images[0].width == 40


def test_exif_size_mismatch_message_names_exif_in_reader_and_training(tmp_path, capsys):
    _exif_rotated_jpeg(tmp_path / "r.jpg")
    stored = {"images": [{"id": 1, "file_name": "r.jpg", "width": 100, "height": 40}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20]}],
              "categories": [{"id": 1}]}
    (tmp_path / "stored.json").write_text(json.dumps(stored))
    with pytest.raises(DataError, match=r"r\.jpg.*EXIF orientation.*upright.*width=40 height=100"):
        load_coco(tmp_path / "stored.json", tmp_path, check_images=True)
    # training: the only box image is unusable -> one clear line naming EXIF, exit 2
    data = make_train_data(tmp_path / "d", n_box=1)
    data["boxes_json"], data["images_root"] = str(tmp_path / "stored.json"), str(tmp_path)
    rc, err = run_cli(capsys, *train_args(data, tmp_path / "run"))
    assert rc == 2
    assert_one_error(err, "train", "r.jpg", "EXIF")
    assert not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------- 2. --resume binds to the exact input + config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = make_train_data(root)
    out = root / "run"
    assert main(train_args(data, out)) == 0
    return root, data, out


@pytest.mark.slow  # trains
def test_train_resume_refused_when_the_box_file_changed(trained, capsys, tmp_path):
    root, data, out = trained
    boxes = json.loads(Path(data["boxes_json"]).read_text())
    boxes["annotations"][0]["bbox"][2] -= 3  # an edited box: old progress would be stale
    edited = dict(data, boxes_json=str(tmp_path / "edited.json"))
    Path(edited["boxes_json"]).write_text(json.dumps(boxes))
    before = (out / "last.pt").read_bytes()
    rc, err = run_cli(capsys, *train_args(edited, out, "max_steps=4"), "--resume")
    assert rc == 2
    assert_one_error(err, "train", "last.pt", "cannot resume", "boxes_json changed")
    assert (out / "last.pt").read_bytes() == before  # nothing overwritten


def test_train_resume_refused_when_the_config_or_salient_set_changed(trained, capsys):
    root, data, out = trained
    rc, err = run_cli(capsys, *train_args(data, out, "lr=0.02"), "--resume")
    assert rc == 2
    assert_one_error(err, "train", "config changed", "lr: 0.01 -> 0.02")
    sal = Path(data["salient_root"])
    s0 = sal / "images" / "s0.png"
    original = s0.read_bytes()
    Image.open(s0).save(s0, compress_level=0)  # same pixels, re-saved: other file size
    assert s0.read_bytes() != original
    try:
        rc, err = run_cli(capsys, *train_args(data, out), "--resume")
        assert rc == 2
        assert_one_error(err, "train", "salient listing changed")
    finally:
        s0.write_bytes(original)


@pytest.mark.slow  # trains
def test_train_maskrcnn_resume_refused_when_train_json_changed(mrcnn_run, capsys, tmp_path):
    root, data = mrcnn_run
    gt = json.loads(Path(data["train_json"]).read_text())
    gt["annotations"][0]["bbox"][0] += 2
    edited = dict(data, train_json=str(tmp_path / "edited.json"))
    Path(edited["train_json"]).write_text(json.dumps(gt))
    rc, err = run_cli(capsys, *mrcnn_args(edited, root / "run", "max_iters=3"), "--resume")
    assert rc == 2
    assert_one_error(err, "train-maskrcnn", "cannot resume", "train_json changed")
    rc, err = run_cli(capsys, *mrcnn_args(data, root / "run", "lr=0.01"), "--resume")
    assert rc == 2
    assert_one_error(err, "train-maskrcnn", "config changed", "lr")


def test_train_maskrcnn_without_resume_does_not_overwrite_a_run(mrcnn_run, capsys):
    root, data = mrcnn_run
    before = (root / "run" / "last.pt").read_bytes()
    rc, err = run_cli(capsys, *mrcnn_args(data, root / "run"))
    assert rc == 2
    assert_one_error(err, "train-maskrcnn", "last.pt exists", "--resume")
    assert (root / "run" / "last.pt").read_bytes() == before


# ------------------------------------------------ 3. one run per --out; nothing to resume


@pytest.mark.parametrize("command", ["train", "train-maskrcnn", "predict", "eval"])
def test_a_second_run_on_a_locked_out_is_refused(command, tmp_path, capsys, mrcnn_run):
    root, mdata = mrcnn_run
    if command == "train":
        out = tmp_path / "run"
        argv = train_args(make_train_data(tmp_path / "d"), out)
    elif command == "train-maskrcnn":
        out = tmp_path / "run"
        argv = mrcnn_args(mdata, out)
    elif command == "predict":
        out = tmp_path / "preds"
        argv = ["predict", "--checkpoint", root / "run" / "final.pt", mdata["images_root"],
                "--out", out]
    else:
        out = tmp_path / "m.json"
        argv = ["eval", "--gt", mdata["train_json"], "--pred", mdata["train_json"],
                "--out", out]
    with OutputLock(Path(out).resolve(), "another run"):  # a live holder: this process
        rc, err = run_cli(capsys, *argv)
    assert rc == 2
    assert_one_error(err, command, str(Path(out).resolve()), f"pid {os.getpid()}", "another run")
    assert not (Path(out) / "last.pt").exists() and not (Path(out) / "results.json").exists()
    if command == "eval":
        assert not Path(out).exists()
    assert not Path(str(Path(out).resolve()) + ".lock").exists()  # the holder released it


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys, caplog):
    data = make_train_data(tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        rc, _ = run_cli(capsys, *train_args(data, tmp_path / "run"), "--resume")
    assert rc == 0 and (tmp_path / "run" / "final.pt").is_file()
    assert any("--resume: nothing to resume" in r.getMessage() and "last.pt" in r.getMessage()
               for r in caplog.records)


# --------------------------------------------------------- 6. one error style, exit 2


@pytest.mark.parametrize("command", ["train", "train-maskrcnn", "predict"])
def test_out_that_is_a_file_or_inside_a_file_is_refused_up_front(command, tmp_path, capsys,
                                                                 mrcnn_run):
    root, mdata = mrcnn_run
    a_file = tmp_path / "taken"
    a_file.write_text("precious")
    for out, needle in ((a_file, "is a file"), (a_file / "sub", "is a file, not a folder")):
        if command == "train":
            # no data at all: the --out error must come first (before any long work)
            argv = ["train", "--out", out, "salient_root=/nonexistent", "boxes_json=/nonexistent"]
        elif command == "train-maskrcnn":
            argv = ["train-maskrcnn", "--out", out, "train_json=/nonexistent/x.json",
                    "images_root=/nonexistent"]
        else:
            argv = ["predict", "--checkpoint", "/nonexistent.pt", "x.png", "--out", out]
        rc, err = run_cli(capsys, *argv)
        assert rc == 2, err
        assert_one_error(err, command, str(out), needle)
        assert a_file.read_text() == "precious"


@pytest.mark.parametrize("argv", [
    ["demo", "--quick", "--out", "{file}"],
    ["make-demo-data", "{file}/sub"],
    ["prepare", "duts-single", "--duts", "/nonexistent", "--out", "{file}"],
])
def test_other_commands_check_out_up_front(argv, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("precious")
    rc, err = run_cli(capsys, *[a.format(file=a_file) for a in argv])
    assert rc == 2
    assert_one_error(err, argv[0], str(a_file), "file")
    assert a_file.read_text() == "precious"


def test_eval_out_that_is_a_folder_is_refused_before_scoring(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    rc, err = run_cli(capsys, "eval", "--gt", tmp_path / "missing.json", "--pred",
                      tmp_path / "missing.json", "--out", tmp_path / "folder")
    assert rc == 2
    assert_one_error(err, "eval", "folder", "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_folder_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, err = run_cli(capsys, "predict", "--checkpoint", "x.pt", "x.png", "--out", ro / "p")
        assert rc == 2
        assert_one_error(err, "predict", "no write permission")
    finally:
        ro.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("exc, needle", [
    (PermissionError(13, "Permission denied", "/data/out.json"),
     "/data/out.json: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "/data/out"), "/data/out: Is a directory"),
    (NotADirectoryError(20, "Not a directory", "/f/x.json"), "/f/x.json: Not a directory"),
    (FileExistsError(17, "File exists", "/data/out"), "/data/out: File exists"),
])
def test_os_errors_become_one_line_with_exit_2(exc, needle, monkeypatch, capsys):
    import boxcaseg.commands.evaluate as ev

    def boom(args):
        raise exc
    monkeypatch.setattr(ev, "run", boom)
    rc, err = run_cli(capsys, "eval", "--gt", "a", "--pred", "b")
    assert rc == 2
    line = assert_one_error(err, "eval", needle)
    assert line.endswith(")")  # "(what to do)"
    with pytest.raises(type(exc)):  # --debug: the real exception and its traceback
        main(["--debug", "eval", "--gt", "a", "--pred", "b"])
    with pytest.raises(type(exc)):
        main(["eval", "--gt", "a", "--pred", "b", "--debug"])


def test_a_dataloader_worker_error_is_reduced_to_its_own_message():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\n"
                        "Original Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\n    raise DataError(...)\n'
                        "boxcaseg.errors.DataError: /data/b.png: cannot decode image (truncated)\n")
    assert one_line(wrapped) == "/data/b.png: cannot decode image (truncated)"


# ---------------------------------------------- 7. training data screened up front


def _break(kind: str, data: dict) -> str:
    """Make one sample bad; returns the file name the warning / error must name."""
    sal, boxes = Path(data["salient_root"]), Path(data["images_root"])
    if kind == "mask_of_another_size":
        Image.fromarray(np.full((20, 24), 255, np.uint8)).save(sal / "masks" / "s3.png")
        return "s3.png"
    if kind == "all_black_mask":
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(sal / "masks" / "s3.png")
        return "s3.png"
    if kind == "missing_box_image":
        (boxes / "b2.png").unlink()
        return "b2.png"
    if kind == "corrupt_box_image":
        (boxes / "b2.png").write_bytes(b"this is not a png")
        return "b2.png"
    raise ValueError(kind)


BAD_KINDS = ["mask_of_another_size", "all_black_mask", "missing_box_image", "corrupt_box_image"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_training_sample_fails_up_front_over_the_threshold(kind, tmp_path, capsys):
    data = make_train_data(tmp_path / "d")
    name = _break(kind, data)
    rc, err = run_cli(capsys, *train_args(data, tmp_path / "run"))  # 1/8 or 1/4 > 5 %
    assert rc == 2
    assert_one_error(err, "train", name, "max_bad_fraction")
    assert not (tmp_path / "run" / "last.pt").exists()  # stopped before the first step


@pytest.mark.slow  # trains
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_training_sample_is_skipped_and_counted_under_the_threshold(kind, tmp_path, capsys,
                                                                         caplog):
    data = make_train_data(tmp_path / "d")
    name = _break(kind, data)
    with caplog.at_level(logging.WARNING):
        rc, err = run_cli(capsys, *train_args(data, tmp_path / "run", "max_bad_fraction=0.3"))
    assert rc == 0, err
    assert (tmp_path / "run" / "final.pt").is_file()
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(name in m and "skipped" in m for m in msgs), msgs
    assert any("skipped as unusable" in m and " 1 of " in m for m in msgs), msgs


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut


@pytest.mark.slow  # trains
@pytest.mark.parametrize("workers", [0, 1])
def test_a_sample_that_breaks_mid_run_does_not_kill_training(workers, tmp_path, capsys, caplog):
    data = make_train_data(tmp_path / "d")
    _truncate(Path(data["images_root"]) / "b1.png")
    assert image_size(Path(data["images_root"]) / "b1.png") == (48, 40)  # passes the screen
    with caplog.at_level(logging.WARNING):
        rc, err = run_cli(capsys, *train_args(data, tmp_path / "run", f"num_workers={workers}",
                                              "max_steps=4"))
    assert rc == 0, err
    assert "Traceback" not in err and (tmp_path / "run" / "final.pt").is_file()
    if workers == 0:  # worker processes log to their own stderr
        assert any("b1.png" in r.getMessage() and "replaces it" in r.getMessage()
                   for r in caplog.records)


@pytest.mark.slow  # trains
def test_train_maskrcnn_skips_a_bad_image_and_counts_it(tmp_path, capsys, caplog):
    data = make_mask_data(tmp_path / "m", n=3)
    (Path(data["images_root"]) / "1.png").write_bytes(b"junk")
    rc, err = run_cli(capsys, *mrcnn_args(data, tmp_path / "a"))  # 1 of 3 > 5 %
    assert rc == 2
    assert_one_error(err, "train-maskrcnn", "1.png", "max_bad_fraction")
    with caplog.at_level(logging.WARNING):
        rc, err = run_cli(capsys, *mrcnn_args(data, tmp_path / "b", "max_bad_fraction=0.5"))
    assert rc == 0, err
    assert any("1.png" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------- 8. smaller ones


def test_atomic_outputs_respect_umask_and_keep_an_overwritten_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640
    finally:
        os.umask(old)
    os.chmod(tmp_path / "a.json", 0o604)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o604
    assert (tmp_path / "a.json").read_text() == "{}"


def test_stale_checkpoint_temp_files_are_removed_but_not_foreign_ones(mrcnn_run, tmp_path,
                                                                      capsys):
    root, data = mrcnn_run
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.pt.k1ll3d.tmp", out / ".final.pt.x9.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1000)
    foreign = out / ".notes.abc.tmp"
    foreign.write_text("keep me")
    rc, err = run_cli(capsys, *mrcnn_args(data, out))
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and foreign.read_text() == "keep me"
    assert not list(out.glob(".last.pt.*.tmp")) and (out / "final.pt").is_file()


@pytest.mark.parametrize("where", ["image", "annotation", "category"])
def test_quoted_ids_are_rejected_as_the_reader_says(where, tmp_path, capsys):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
            "categories": [{"id": 1, "name": "c"}]}
    target = {"image": data["images"][0], "annotation": data["annotations"][0],
              "category": data["categories"][0]}[where]
    target["id"] = "1"
    (tmp_path / "gt.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="must be an integer, got '1'"):
        load_coco(tmp_path / "gt.json")
    rc, err = run_cli(capsys, "eval", "--gt", tmp_path / "gt.json", "--pred", tmp_path / "gt.json")
    assert rc == 2
    assert_one_error(err, "eval", "gt.json", "must be an integer", "without quotes")


def _label_fixture(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    for i in (1, 2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png")
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30}
                       for i in (1, 2, 3)],  # image 3 does not exist: a failed image
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 15], "area": 300},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0.5, 10]},  # sub-px
                {"id": 3, "image_id": 2, "category_id": 1, "bbox": [3, 3, 0, 4]},  # zero size
                {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 20],
                 "iscrowd": 1},  # crowd without a mask
                {"id": 5, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},
                {"id": 6, "image_id": 2, "category_id": 1, "bbox": [10, 10, 12, 8]}],
            "categories": [{"id": 1, "name": "c"}]}
    for a in data["annotations"]:
        a.setdefault("iscrowd", 0)  # COCOeval needs it on every GT annotation
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    return tmp_path / "boxes.json"


def test_sub_pixel_boxes_are_skipped_and_counted_with_a_reason(tmp_path, capsys):
    boxes = _label_fixture(tmp_path)
    coco = load_coco(boxes, tmp_path / "img")
    assert coco.report["sub_pixel_box"] == 1
    assert (2, "sub-pixel box [5, 5, 0.5, 10] (width or height < 1 px)") in coco.skipped
    rc, err = run_cli(capsys, "label", "--method", "box", "--images", tmp_path / "img",
                      "--boxes", boxes, "--out", tmp_path / "out.json", "--no-progress")
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["boxcaseg_label"]["summary"]["skipped_reasons"] == {"sub_pixel_box": 1,
                                                                     "zero_size_box": 1}
    by_id = {a["id"]: a for a in res["annotations"]}
    assert NO_MASK_KEY in by_id[2] and "proxy_iou" not in by_id[2]  # not an empty flagged mask


def test_pass_through_annotations_work_with_annToMask_and_COCOeval(tmp_path, capsys):
    boxes = _label_fixture(tmp_path)
    run_cli(capsys, "label", "--method", "box", "--images", tmp_path / "img",
            "--boxes", boxes, "--out", tmp_path / "out.json", "--no-progress")
    coco = COCO(str(tmp_path / "out.json"))
    for ann in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(ann)  # the docs' own call: no KeyError
        assert m.shape == (30, 40)
        if ann["id"] in (2, 3, 4, 5):  # skipped, crowd without mask, failed image: marked empty
            assert ann[NO_MASK_KEY] is True and m.sum() == 0
        else:
            assert NO_MASK_KEY not in ann and m.sum() > 0
    results = [{"image_id": 1, "category_id": 1, "segmentation": mask_to_rle(
        coco.annToMask(coco.anns[1]).astype(bool)), "score": 0.9}]
    ev = COCOeval(coco, coco.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] >= 0  # ran end to end
    # and Mask R-CNN training leaves the placeholders out entirely
    from boxcaseg.maskrcnn.dataset import MaskRCNNDataset
    ds = MaskRCNNDataset(load_coco(tmp_path / "out.json", tmp_path / "img"))
    assert ds.report["no_segmentation"] == 1 and ds.report["mask_trained"] >= 2


def test_predict_with_no_readable_image_fails_and_writes_nothing(mrcnn_run, tmp_path, capsys):
    root, _ = mrcnn_run
    (tmp_path / "junk.png").write_bytes(b"junk")
    rc, err = run_cli(capsys, "predict", "--checkpoint", root / "run" / "final.pt",
                      tmp_path / "junk.png", tmp_path / "missing.jpg", "--out", tmp_path / "p")
    assert rc == 2
    assert_one_error(err, "predict", "none of the 2 image(s) could be read", "junk.png")
    assert not (tmp_path / "p" / "results.json").exists()


def test_checkpoint_that_is_not_one_is_a_single_line(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("{not a checkpoint")
    rc, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "x.pt", "a.png",
                      "--out", tmp_path / "p")
    assert rc == 2
    line = assert_one_error(err, "predict", "x.pt", "cannot read checkpoint")
    assert "\n" not in line and len(line) < 400
