"""Issue 19 ("Trust"): input the user gave is checked before work starts, and what a command
reports is never more certain than its data. Every fixture is generated here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from boxcaseg.cli import main
from boxcaseg.structures import mask_to_rle

H, W = 30, 40


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error(err: str, command: str, *needles: str) -> str:
    """Exactly one error line, no traceback, no "internal error", containing every needle."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"boxcaseg {command}: error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _images(root: Path, names=("a.png", "b.png")) -> Path:
    img = root / "img"
    img.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img / n)
    return img


def _dataset(root: Path, segm, other_box: bool = True) -> Path:
    """Image 1 (a.png) with annotation 7 carrying ``segm``, optionally a plain box 8 beside
    it; image 2 (b.png) with a plain box 9."""
    anns = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 15], "iscrowd": 0,
             "area": 300, "segmentation": segm},
            {"id": 9, "image_id": 2, "category_id": 1, "bbox": [4, 4, 10, 10], "iscrowd": 0,
             "area": 100}]
    if other_box:
        anns.append({"id": 8, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10],
                     "iscrowd": 0, "area": 100})
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                       {"id": 2, "file_name": "b.png", "width": W, "height": H}],
            "annotations": anns, "categories": [{"id": 1, "name": "c"}]}
    path = root / "boxes.json"
    path.write_text(json.dumps(data))
    return path


GOOD_POLY = [[2.0, 2.0, 22.0, 2.0, 22.0, 17.0, 2.0, 17.0]]
BAD_GT = [  # (segmentation, what the message must say)
    ([[1, 2]], "polygon 0 has 2 numbers"),                 # was: internal error
    ([[1, 2, 3, 4]], "polygon 0 has 4 numbers"),           # was: "Argument 'bb' ..."
    ([[2, 2, 20, 2, 20]], "polygon 0 has 5 numbers"),      # was: accepted silently
    ([[2, 2, 20, 2, 20, 15, 3]], "polygon 0 has 7 numbers"),
    (["2 2 20 2 20 15"], "polygon 0 is a str"),
    ({"size": [H, W], "counts": [5, 10]}, "counts sum to 15, not height x width = 1200"),
    ([[50, 35, 60, 35, 60, 45]], "wholly outside the 40x30 image"),
    ([[0, 0, 1e12, 0, 1e12, 1e12]], "far outside the 40x30 image"),  # was: a segfault
    ({"size": [W, H], "counts": [H * W]}, "RLE of size 30x40"),
    ({"size": [H, W], "counts": "not an rle"}, "not a valid compressed COCO RLE"),
]


# ------------------------------------------------------------ item 1: GT masks up front


@pytest.mark.parametrize("segm, needle", BAD_GT, ids=[str(i) for i in range(len(BAD_GT))])
def test_label_refuses_a_bad_gt_mask_before_any_work(segm, needle, tmp_path, capsys):
    img, boxes = _images(tmp_path), _dataset(tmp_path, segm)
    out = tmp_path / "out.json"
    rc, _, err = run_cli(capsys, "label", "--method", "box", "--images", img, "--boxes", boxes,
                         "--out", out, "--no-progress")
    assert rc == 2
    one_error(err, "label", "boxes.json: annotation 7 (image 1, a.png)", needle,
              "keep_gt_masks=false")
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))
    # the way out the message names: label every box, the given masks ignored
    rc, _, err = run_cli(capsys, "label", "--method", "box", "--images", img, "--boxes", boxes,
                         "--out", out, "--no-progress", "keep_gt_masks=false")
    assert rc == 0, err
    by_id = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    assert by_id[7]["mask_source"] == "box"


def test_the_mask_of_a_skipped_box_is_not_checked(tmp_path, capsys):
    # COCO train2017's annotation 918: a zero-height box with a polygon that covers no pixel;
    # the reader skips the box, so its mask is never used and must not stop the run
    img, boxes = _images(tmp_path), _dataset(tmp_path, GOOD_POLY)
    data = json.loads(boxes.read_text())
    data["annotations"][0].update(bbox=[2, 2, 1.03, 0.0], segmentation=[[2, 2, 2, 2, 3, 2, 3, 2]])
    boxes.write_text(json.dumps(data))
    rc, _, err = run_cli(capsys, "label", "--method", "box", "--images", img, "--boxes", boxes,
                         "--out", tmp_path / "out.json", "--no-progress")
    assert rc == 0, err
    by_id = {a["id"]: a for a in json.loads((tmp_path / "out.json").read_text())["annotations"]}
    assert by_id[7]["segmentation"] == [[2, 2, 2, 2, 3, 2, 3, 2]]  # passed through as given


def _labels_file(tmp_path: Path, segm, other_box: bool) -> tuple[Path, Path, Path]:
    """A labels file as ``label`` wrote it before issue 19: annotation 7's bad GT mask passed
    through as ``mask_source: gt``."""
    img, boxes = _images(tmp_path), _dataset(tmp_path, GOOD_POLY, other_box)
    labels = tmp_path / "labels.json"
    assert main(["label", "--method", "box", "--images", str(img), "--boxes", str(boxes),
                 "--out", str(labels), "--no-progress"]) == 0
    data = json.loads(labels.read_text())
    for a in data["annotations"]:
        if a["id"] == 7:
            assert a["mask_source"] == "gt"
            a["segmentation"] = segm
    labels.write_text(json.dumps(data))
    return img, boxes, labels


@pytest.mark.parametrize("segm, needle", [BAD_GT[0], BAD_GT[3], BAD_GT[5]], ids=["2", "7", "rle"])
def test_report_and_export_name_a_bad_mask_in_a_labels_file(segm, needle, tmp_path, capsys):
    # the image has no other box: the mask was never decoded by label, only by these
    img, _, labels = _labels_file(tmp_path, segm, other_box=False)
    capsys.readouterr()
    rc, _, err = run_cli(capsys, "report", labels, "--images", img, "--out", tmp_path / "rep",
                         "--no-progress")
    assert rc == 2
    one_error(err, "report", "labels.json: annotation 7 (image 1, a.png)", needle)
    assert not (tmp_path / "rep" / "index.html").exists()
    rc, _, err = run_cli(capsys, "export", labels, "--to", "cvat", "--images", img,
                         "--out", tmp_path / "exp")
    assert rc == 2
    one_error(err, "export", "labels.json: annotation 7 (image 1, a.png)", needle)
    assert not [p for p in (tmp_path / "exp").rglob("*") if p.is_file()]


@pytest.mark.parametrize("command", ["eval", "report", "calibrate"])
@pytest.mark.parametrize("segm, needle", [BAD_GT[0], BAD_GT[3], BAD_GT[6]],
                         ids=["2", "7", "outside"])
def test_gt_files_with_a_bad_mask_are_one_line(command, segm, needle, tmp_path, capsys):
    img, _, labels = _labels_file(tmp_path, GOOD_POLY, other_box=True)
    # a human GT file: every box with a mask, annotation 7's malformed
    gt = json.loads(labels.read_text())
    for a in gt["annotations"]:
        for k in ("mask_source", "score", "proxy_iou", "ignore_mask"):
            a.pop(k, None)
        if a["id"] == 7:
            a["segmentation"] = segm
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    capsys.readouterr()
    argv = {"eval": ["eval", "--gt", gt_path, "--pred", labels],
            "report": ["report", labels, "--images", img, "--gt", gt_path, "--out",
                       tmp_path / "rep", "--no-progress"],
            "calibrate": ["calibrate", "--gt", gt_path, "--pred", labels, "--keep", "0.8",
                          "--out", tmp_path / "rule.yaml"]}[command]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    one_error(err, command, "gt.json: annotation 7 (image 1, a.png)", needle, "ground-truth")
    assert not (tmp_path / "rule.yaml").exists() and not (tmp_path / "rep" / "index.html").exists()


def test_segmentation_check_accepts_what_coco_tools_write():
    from boxcaseg.data.gt_masks import compressed_rle_counts, segmentation_problem

    rng = np.random.default_rng(1)
    for t in range(50):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        m = rng.random((h, w)) < (0.3 if t % 2 else 0.0)
        if t % 5 == 0:
            m[:] = True
        rle = mask_to_rle(m)
        runs = compressed_rle_counts(rle["counts"])  # the decoder agrees with pycocotools
        assert runs is not None and runs.sum() == h * w and runs[1::2].sum() == m.sum()
        assert segmentation_problem(rle, h, w) is None
        if m.any():
            assert segmentation_problem(rle, h, w, need_pixels=True) is None
        else:
            assert "covers no pixel" in segmentation_problem(rle, h, w, need_pixels=True)
    # uncompressed RLE (COCO's crowd regions), polygons partly off the image, and the
    # labeler's empty-mask placeholder (a zero-area triangle at the image corner)
    assert segmentation_problem({"size": [H, W], "counts": [0, 600, 600]}, H, W) is None
    assert segmentation_problem([[-5, -5, 10, -5, 10, 10]], H, W, need_pixels=True) is None
    assert segmentation_problem([[0, 0] * 3], H, W) is None
    assert "no pixel" in segmentation_problem([[0, 0] * 3], H, W, need_pixels=True)
    assert "an empty polygon list" == segmentation_problem([], H, W)
    rle = mask_utils.frPyObjects(GOOD_POLY, H, W)[0]
    assert segmentation_problem({"size": rle["size"], "counts": rle["counts"].decode()}, H,
                                W) is None


# ------------------------------------------------------- item 2: calibrate needs enough masks


def test_calibrate_refuses_fewer_than_ten_masks(tmp_path, capsys):
    from test_calibrate import _files

    gt, pred = _files(tmp_path)  # 5 GT masks: the old code fitted a rule on them
    rc, _, err = run_cli(capsys, "calibrate", "--gt", gt, "--pred", pred, "--min-kept-iou",
                         "0.8", "--out", tmp_path / "rule.yaml")
    assert rc == 2
    one_error(err, "calibrate", "only 5 calibration mask(s)", "at least 10")
    assert not (tmp_path / "rule.yaml").exists()


def test_a_threshold_is_never_chosen_on_a_handful_of_masks():
    from boxcaseg.labeling.calibrate import MIN_KEPT, fit

    # 12 masks; only the best-scored one reaches IoU 0.9: the old fit kept that one mask and
    # printed a zero-width range (0.950-0.950) as if it were certain
    scores = np.linspace(1.0, 0.45, 12)
    ious = np.array([0.95] + [0.5 + 0.02 * k for k in range(11)][::-1])
    cal = fit(scores, ious, min_kept_iou=0.9)
    assert cal.chosen.kept >= MIN_KEPT and not cal.reached
    assert cal.interval is not None and cal.interval[1] - cal.interval[0] > 0.01
    assert cal.warning is not None and "only 12 calibration masks" in cal.warning
    cal = fit(scores, ious, keep=0.05)  # "keep at least 5 %": at least MIN_KEPT masks
    assert cal.chosen.kept == MIN_KEPT
    many = fit(np.linspace(1, 0, 40), np.linspace(1, 0.4, 40), keep=0.5)
    assert many.warning is None and many.chosen.kept == 20


def test_calibrate_warns_below_thirty_masks(tmp_path, capsys):
    from test_calibrate import _files

    gt, pred = _files(tmp_path, copies=2)
    rc, out, err = run_cli(capsys, "calibrate", "--gt", gt, "--pred", pred, "--keep", "0.8",
                           "--out", tmp_path / "rule.yaml")
    assert rc == 0, err
    assert "warning: only 10 calibration masks" in out and "30 or more" in out
    assert "# warning: only 10 calibration masks" in (tmp_path / "rule.yaml").read_text()


# ----------------------------------------------------------------- item 4: smaller defects


@pytest.mark.parametrize("where", ["annotation", "image"])
def test_ids_beyond_int64_are_one_line_not_an_overflow(where, tmp_path, capsys):
    img, boxes = _images(tmp_path), _dataset(tmp_path, GOOD_POLY)
    data = json.loads(boxes.read_text())
    big = 2 ** 63
    if where == "annotation":
        data["annotations"][1]["id"] = big
    else:
        data["images"][1]["id"] = big
        data["annotations"][1]["image_id"] = big
    boxes.write_text(json.dumps(data))
    rc, _, err = run_cli(capsys, "label", "--method", "box", "--images", img, "--boxes", boxes,
                         "--out", tmp_path / "out.json", "--no-progress")
    assert rc == 2
    one_error(err, "label", "boxes.json", f"{where} id {big}", "signed 64-bit", "renumber")


def _labeled(tmp_path: Path, names=("a.png", "b.png")) -> tuple[Path, Path, Path]:
    """Images ``names`` (40x30), a box on each, labeled with the filled box."""
    img = _images(tmp_path, names)
    data = {"images": [{"id": i + 1, "file_name": n, "width": W, "height": H}
                       for i, n in enumerate(names)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1,
                             "bbox": [2 + i, 2, 20, 15], "iscrowd": 0, "area": 300}
                            for i in range(len(names))],
            "categories": [{"id": 1, "name": "c"}]}
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(data))
    labels = tmp_path / "labels.json"
    assert main(["label", "--method", "box", "--images", str(img), "--boxes", str(boxes),
                 "--out", str(labels), "--no-progress"]) == 0
    return img, boxes, labels


def test_a_failed_write_names_the_file(tmp_path):
    import resource
    import subprocess
    import sys

    _, _, labels = _labeled(tmp_path)
    rule = tmp_path / "rule.yaml"
    rule.write_text("drop: false\nmin_score: 0.5\n")
    out = tmp_path / "new.json"
    # a file-size limit below the output's size: the write fails with EFBIG, which Python
    # raises (it ignores SIGXFSZ) without a file name
    limit = labels.stat().st_size // 2
    code = ("import resource, sys; from boxcaseg.cli import main; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, "
            f"{resource.getrlimit(resource.RLIMIT_FSIZE)[1]})); "
            f"sys.exit(main(['calibrate', '--apply', {str(rule)!r}, '--pred', "
            f"{str(labels)!r}, '--out', {str(out)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1, p.stderr
    line = one_error(p.stderr, "calibrate", f"{out}: File too large")
    assert "?:" not in line
    assert not out.exists() and not list(tmp_path.glob(".new.json.*"))


def test_labelstudio_urls_are_percent_encoded(tmp_path, capsys):
    from urllib.parse import parse_qs, urlsplit

    name = "a&b #1+x.png"
    img, _, labels = _labeled(tmp_path, (name, "b.png"))
    rc, _, err = run_cli(capsys, "export", labels, "--to", "labelstudio", "--ls-mask",
                         "polygon", "--images", img, "--out", tmp_path / "ls")
    assert rc == 0, err
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    url = next(t["data"]["image"] for t in tasks if t["data"]["file_name"] == name)
    assert url == "/data/local-files/?d=images/a%26b%20%231%2Bx.png"
    # what the server decodes is the file the export placed
    d = parse_qs(urlsplit(url).query)["d"]
    assert d == [f"images/{name}"] and (tmp_path / "ls" / d[0]).is_file()


def test_a_checkpoint_of_other_weights_is_a_short_line(tmp_path, capsys):
    import torch

    from boxcaseg.config import to_dict
    from boxcaseg.model.boxcaseg import build_model
    from boxcaseg.model.config import ModelConfig

    small = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none", head_channels=16,
                        transfer_hidden=16)
    wide = ModelConfig(backbone="resnet18", pretrained="none", head_channels=32,
                       transfer_hidden=16)
    torch.save({"model": build_model(small).state_dict(), "model_config": to_dict(wide)},
               tmp_path / "wrong.pt")
    img, boxes = _images(tmp_path), _dataset(tmp_path, GOOD_POLY)
    rc, _, err = run_cli(capsys, "label", "--checkpoint", tmp_path / "wrong.pt", "--images",
                         img, "--boxes", boxes, "--out", tmp_path / "o.json", "--no-progress")
    assert rc == 2
    line = one_error(err, "label", "wrong.pt: weights do not fit the model", "missing",
                     "unexpected", "of another shape", "backbone resnet18")
    assert len(line) < 800  # was one line of 17,810 characters


def test_load_weights_counts_what_does_not_fit():
    import torch

    from boxcaseg.engine.checkpoint import load_weights
    from boxcaseg.errors import DataError

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(4), "x.weight": torch.zeros(1)}
    with pytest.raises(DataError) as e:
        load_weights(model, state, "m.pt", "use the right one")
    assert str(e.value) == (
        "m.pt: weights do not fit the model: of its 4 tensors 2 missing (1.weight, 1.bias); "
        "1 unexpected (x.weight); 1 of another shape (e.g. 0.weight: [5, 3] in the file, "
        "[4, 3] in the model) (use the right one)")
    load_weights(model, model.state_dict(), "m.pt", "")  # a fitting one loads


def test_out_that_is_an_input_is_refused(tmp_path, capsys):
    img, boxes, labels = _labeled(tmp_path)
    before = {p: p.read_bytes() for p in (boxes, labels)}
    rule = tmp_path / "rule.yaml"
    rule.write_text("drop: false\nmin_score: 0.5\n")
    (tmp_path / "alias.json").symlink_to(labels)
    cases = [
        ("label", ["--method", "box", "--images", img, "--boxes", boxes, "--out", boxes,
                   "--no-progress"], "--boxes"),
        ("eval", ["--gt", boxes, "--pred", labels, "--out", labels], "--pred"),
        ("calibrate", ["--gt", boxes, "--pred", labels, "--keep", "0.5", "--out", labels],
         "--pred"),
        ("calibrate", ["--apply", rule, "--pred", tmp_path / "alias.json", "--out", labels],
         "--pred"),  # the same file by another name
    ]
    for command, args, flag in cases:
        rc, _, err = run_cli(capsys, command, *args)
        assert rc == 2, (command, err)
        one_error(err, command, "is also the input", flag, "choose another --out")
    # merge-labels: --out one of the parts, or the box file the parts name
    part = tmp_path / "part0.jsonl"
    assert main(["label", "--method", "box", "--images", str(img), "--boxes", str(boxes),
                 "--out", str(part), "--shard", "0/1", "--no-progress"]) == 0
    capsys.readouterr()
    before[part] = part.read_bytes()
    for out, what in ((part, "part"), (boxes, "box file")):
        rc, _, err = run_cli(capsys, "merge-labels", part, "--out", out)
        assert rc == 2, err
        one_error(err, "merge-labels", "is also the input", what)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_export_with_missing_images_names_them_and_writes_nothing(tmp_path, capsys):
    img, _, labels = _labeled(tmp_path, ("a.png", "b.png", "c.png", "d.png", "e.png"))
    for n in ("b.png", "c.png", "d.png", "e.png"):
        (img / n).unlink()
    for to in ("cvat", "fiftyone", "labelstudio"):
        out = tmp_path / f"exp_{to}"
        rc, _, err = run_cli(capsys, "export", labels, "--to", to, "--ls-mask", "polygon",
                             "--images", img, "--out", out)
        assert rc == 2
        one_error(err, "export", "image file not found for 4 of 5 image(s)", "nothing was exported",
                  "--images")
        assert not [p for p in out.rglob("*") if p.is_file()], to


def test_an_empty_report_has_no_raw_warnings(tmp_path, capsys):
    import warnings

    img, boxes = _images(tmp_path), tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": W,
                                             "height": H}], "annotations": [],
                                 "categories": [{"id": 1, "name": "c"}]}))
    labels = tmp_path / "labels.json"
    assert main(["label", "--method", "box", "--images", str(img), "--boxes", str(boxes),
                 "--out", str(labels), "--no-progress"]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, err = run_cli(capsys, "report", labels, "--images", img, "--out",
                             tmp_path / "rep", "--no-progress")
    assert rc == 0, err
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    assert "Warning" not in err
    assert (tmp_path / "rep" / "index.html").is_file()


def test_voc_size_mismatch_names_the_xml_file(tmp_path, capsys):
    voc = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / "JPEGImages" / "2007_000001.jpg")
    (voc / "Annotations" / "2007_000001.xml").write_text(
        "<annotation><filename>2007_000001.jpg</filename><size><width>50</width><height>40"
        "</height><depth>3</depth></size><object><name>cat</name><bndbox><xmin>2</xmin>"
        "<ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2007_000001\n")
    rc, _, err = run_cli(capsys, "label", "--method", "box", "--voc", voc, "--out",
                         tmp_path / "out.json", "--no-progress")
    assert rc == 2
    line = one_error(err, "label", "2007_000001.jpg: image is 40x30 on disk but 50x40 in",
                     "2007_000001.xml <size>", "fix <width>/<height> in 2007_000001.xml",
                     "JPEGImages")
    assert "JSON" not in line and "--images" not in line
    assert not (tmp_path / "out.json").exists()
