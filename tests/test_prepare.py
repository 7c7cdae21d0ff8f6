"""`boxcaseg prepare`: DUTS-Single filtering and the augmented VOC (SBD + VOC) JSON files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from boxcaseg.cli import main
from boxcaseg.data.coco import load_coco
from boxcaseg.errors import DataError
from boxcaseg.prepare.duts_single import DutsSingleParams, count_components, prepare_duts_single
from boxcaseg.prepare.voc_aug import prepare_voc_aug
from boxcaseg.structures import rle_to_mask

# --------------------------------------------------------------------------- DUTS-Single

H = W = 24


def blob(*rects) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for r0, r1, c0, c1 in rects:
        m[r0:r1, c0:c1] = 255
    return m


def ring_with_inner_blob() -> np.ndarray:
    m = blob((2, 22, 2, 22))
    m[5:19, 5:19] = 0      # hole
    m[9:15, 9:15] = 255    # object inside the hole
    return m


DUTS_MASKS = {
    "one": blob((4, 16, 5, 18)),
    "two": blob((2, 10, 2, 10), (14, 22, 14, 22)),
    "speck": blob((4, 18, 4, 18), (22, 23, 22, 23)),        # 196 px + 1 px speck (< 5 %)
    "diagonal": blob((2, 10, 2, 10), (10, 18, 10, 18)),     # touch at a corner: 8-connected
    "empty": blob(),
    "ringed": ring_with_inner_blob(),
    "soft": np.where(blob((4, 16, 5, 18)) > 0, 128, 100).astype(np.uint8),  # >127 rule
}


def make_duts(root: Path) -> Path:
    (root / "DUTS-TR-Image").mkdir(parents=True)
    (root / "DUTS-TR-Mask").mkdir()
    for name, m in DUTS_MASKS.items():
        Image.new("RGB", (W, H), (100, 50, 25)).save(root / "DUTS-TR-Image" / f"{name}.jpg")
        Image.fromarray(m).save(root / "DUTS-TR-Mask" / f"{name}.png")
    Image.new("RGB", (W, H)).save(root / "DUTS-TR-Image" / "nomask.jpg")
    Image.fromarray(blob((1, 5, 1, 5))).save(root / "DUTS-TR-Mask" / "noimage.png")
    Image.new("RGB", (W + 1, H)).save(root / "DUTS-TR-Image" / "wrongsize.jpg")
    Image.fromarray(blob((1, 5, 1, 5))).save(root / "DUTS-TR-Mask" / "wrongsize.png")
    (root / "DUTS-TR-Image" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(blob((1, 5, 1, 5))).save(root / "DUTS-TR-Mask" / "broken.png")
    return root


def test_duts_single_kept_and_dropped_with_reasons(tmp_path):
    duts = make_duts(tmp_path / "DUTS-TR")
    out = tmp_path / "single"
    excl = tmp_path / "exclude.txt"
    excl.write_text("# names with PASCAL objects\nsoft.jpg\nnot_in_duts\n")
    code = main(["prepare", "duts-single", "--duts", str(duts), "--out", str(out),
                 "--exclude-classes", str(excl), "--no-progress"])
    assert code == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["kept"] == ["diagonal", "one", "speck"]
    dropped = {d["name"]: d["reason"] for d in man["dropped"]}
    assert dropped.pop("broken").startswith("unreadable image")
    assert dropped == {"empty": "empty mask", "noimage": "missing image", "nomask": "missing mask",
                       "ringed": "2 components", "soft": "excluded", "two": "2 components",
                       "wrongsize": "size mismatch (image 25x24, mask 24x24)"}
    assert man["counts"] == {"total": 11, "kept": 3, "dropped": 8, "by_reason": {
        "empty mask": 1, "excluded": 1, "missing image": 1, "missing mask": 1,
        "multiple components": 2, "size mismatch": 1, "unreadable image": 1}}
    assert man["params"]["min_component_fraction"] == 0.05 and man["params"]["mode"] == "link"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["diagonal.jpg", "one.jpg",
                                                                  "speck.jpg"]
    link = out / "masks" / "one.png"
    assert link.is_symlink() and link.resolve() == (duts / "DUTS-TR-Mask" / "one.png").resolve()
    # Re-running without the exclude list: "soft" (a 128 vs 100 mask, one object) is kept and
    # the output folders are rebuilt, not appended to.
    prepare_duts_single(duts, out, DutsSingleParams(fill_holes=True, mode="copy"), progress=False)
    man = json.loads((out / "manifest.json").read_text())
    assert man["kept"] == ["diagonal", "one", "ringed", "soft", "speck"]
    assert not (out / "images" / "one.jpg").is_symlink()
    src = duts / "DUTS-TR-Image" / "one.jpg"
    assert (out / "images" / "one.jpg").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "diagonal.png", "one.png", "ringed.png", "soft.png", "speck.png"]


def test_duts_speck_threshold_and_clean_masks(tmp_path):
    duts = make_duts(tmp_path / "DUTS-TR")
    m = DUTS_MASKS["speck"]
    assert count_components(m, 0.05)[0] == 1
    assert count_components(m, 0.0)[0] == 2
    assert count_components(DUTS_MASKS["diagonal"], 0.05)[0] == 1  # 8-connectivity
    assert count_components(DUTS_MASKS["ringed"], 0.05, fill_holes=False)[0] == 2
    n, kept = count_components(DUTS_MASKS["ringed"], 0.05, fill_holes=True)
    assert n == 1 and kept.sum() == 400  # the whole filled 20x20 square
    out = tmp_path / "clean"
    man = prepare_duts_single(duts, out, DutsSingleParams(min_component_fraction=0.0,
                                                          clean_masks=True), progress=False)
    assert "speck" not in man["kept"]
    out2 = tmp_path / "clean2"
    prepare_duts_single(duts, out2, DutsSingleParams(clean_masks=True), progress=False)
    cleaned = np.asarray(Image.open(out2 / "masks" / "speck.png"))
    assert set(np.unique(cleaned)) == {0, 255}
    assert cleaned[22, 22] == 0 and (cleaned > 0).sum() == 196
    out3 = tmp_path / "big"
    # (pointing at the folder that holds DUTS-TR works too)
    man = prepare_duts_single(duts.parent, out3, DutsSingleParams(min_mask_fraction=0.3),
                              progress=False)
    assert man["kept"] == ["speck"]  # 196/576 = 34 %; "one" is 156/576 = 27 %
    assert {d["name"]: d["reason"] for d in man["dropped"]}["one"] == \
        "mask too small (27.08% of the image)"


def test_duts_missing_folders_are_named(tmp_path):
    (tmp_path / "DUTS-TR" / "DUTS-TR-Image").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing folder\(s\): .*DUTS-TR/DUTS-TR-Mask$"):
        prepare_duts_single(tmp_path / "DUTS-TR", tmp_path / "o", progress=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["prepare", "duts-single", "--duts", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "nope: DUTS-TR folder not found" in err.getvalue()
    # An --out folder holding someone else's files is not overwritten.
    duts = make_duts(tmp_path / "D2")
    (tmp_path / "busy" / "images").mkdir(parents=True)
    (tmp_path / "busy" / "images" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty"):
        prepare_duts_single(duts, tmp_path / "busy", progress=False)


# --------------------------------------------------------------------------- augmented VOC

CLS = {"person": 15, "dog": 12, "cat": 8, "bird": 3, "car": 7}
VH, VW = 30, 40


def xml(objects) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox>"
                   f"<xmin>{c0 + 1}</xmin><ymin>{r0 + 1}</ymin><xmax>{c1}</xmax><ymax>{r1}</ymax>"
                   f"</bndbox></object>" for n, (r0, r1, c0, c1), d in objects)
    return (f"<annotation><filename>x.jpg</filename><size><width>{VW}</width>"
            f"<height>{VH}</height><depth>3</depth></size>{objs}</annotation>")


def palette_png(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr.astype(np.uint8))
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    assert im.mode == "P"
    im.save(path)


def voc_image(voc: Path, vid: str, objects=None, instances=None, jpeg=True):
    """objects: [(class, (r0, r1, c0, c1) 0-based half-open, difficult)] written to the XML as
    1-based inclusive boxes; instances: [(instance index, class, rect)] for the PNGs, each
    surrounded by a 1-pixel void (255) ring as in VOC."""
    if jpeg:
        Image.new("RGB", (VW, VH), (90, 90, 90)).save(voc / "JPEGImages" / f"{vid}.jpg")
    if objects is not None:
        (voc / "Annotations" / f"{vid}.xml").write_text(xml(objects))
    if instances is not None:
        obj = np.zeros((VH, VW), np.uint8)
        cls = np.zeros((VH, VW), np.uint8)
        for _, _, (r0, r1, c0, c1) in instances:
            obj[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1] = 255
        for idx, name, (r0, r1, c0, c1) in instances:
            obj[r0:r1, c0:c1] = idx
            cls[r0:r1, c0:c1] = CLS[name]
        cls[obj == 255] = 255
        palette_png(obj, voc / "SegmentationObject" / f"{vid}.png")
        palette_png(cls, voc / "SegmentationClass" / f"{vid}.png")


def sbd_mat(sbd: Path, vid: str, instances) -> None:
    """instances: [(class, rect)] in SBD instance order 1..K (GTinst struct as in SBD)."""
    seg = np.zeros((VH, VW), np.uint8)
    for k, (_, (r0, r1, c0, c1)) in enumerate(instances, start=1):
        seg[r0:r1, c0:c1] = k
    cats = np.array([[CLS[n]] for n, _ in instances], dtype=np.uint8)
    bnd = np.empty((len(instances), 1), dtype=object)
    for k in range(len(instances)):
        bnd[k, 0] = np.zeros((VH, VW), np.uint8)
    scipy.io.savemat(sbd / "inst" / f"{vid}.mat",
                     {"GTinst": {"Segmentation": seg, "Boundaries": bnd, "Categories": cats}})


PERSON, DOG, CAT = (2, 28, 3, 14), (15, 27, 18, 36), (2, 10, 24, 38)


@pytest.fixture()
def voc_sbd(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationObject", "SegmentationClass",
              "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "inst").mkdir(parents=True)
    # --- val: instance ids in a different order from the XML objects, a difficult cat.
    voc_image(voc, "2007_000001", [("person", PERSON, False), ("dog", DOG, False),
                                   ("cat", CAT, True)],
              [(1, "dog", DOG), (2, "cat", CAT), (3, "person", PERSON)])
    # --- val: a box without instance (car), an instance without box (bird).
    voc_image(voc, "2007_000002", [("person", PERSON, False), ("car", (20, 28, 30, 39), False)],
              [(1, "bird", (20, 27, 16, 26)), (2, "person", PERSON)])
    # --- train ids.
    voc_image(voc, "2008_000003", [("dog", DOG, False)], [(1, "dog", DOG)])
    sbd_mat(sbd, "2008_000003", [("dog", DOG)])
    voc_image(voc, "2008_000004", [("person", PERSON, False), ("cat", CAT, False)])
    sbd_mat(sbd, "2008_000004", [("cat", CAT), ("person", PERSON)])          # SBD order swapped
    voc_image(voc, "2008_000005", objects=None)                              # no XML: SBD boxes
    sbd_mat(sbd, "2008_000005", [("cat", (5, 9, 6, 17)), ("dog", DOG)])
    voc_image(voc, "2008_000006", [("cat", CAT, True), ("dog", DOG, False)],
              [(1, "dog", DOG), (2, "cat", CAT)])
    sbd_mat(sbd, "2008_000007", [("dog", DOG)])                              # no VOC JPEG
    seg = voc / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_text("2008_000003\n2008_000006\n")
    (seg / "val.txt").write_text("2007_000002\n2007_000001\n")
    (sbd / "train.txt").write_text("2008_000003\n2008_000004\n2008_000007\n")
    (sbd / "val.txt").write_text("2008_000005\n2007_000001\n")  # a VOC val id: must be removed
    return voc, sbd.parent


def rect_mask(r0, r1, c0, c1):
    m = np.zeros((VH, VW), bool)
    m[r0:r1, c0:c1] = True
    return m


def xywh(r0, r1, c0, c1):
    return [float(c0), float(r0), float(c1 - c0), float(r1 - r0)]


def test_voc_aug_split_boxes_and_val_masks(voc_sbd, tmp_path):
    voc, sbd = voc_sbd
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["prepare", "voc", "--voc", str(voc), "--sbd", str(sbd), "--out", str(out),
                     "--train-gt", "--no-progress"])
    assert code == 0, err.getvalue()
    # Split recipe: (SBD train | SBD val | VOC train) - VOC val.
    assert (out / "train_aug.txt").read_text().split() == [
        "2008_000003", "2008_000004", "2008_000005", "2008_000006", "2008_000007"]
    assert (out / "val.txt").read_text().split() == ["2007_000002", "2007_000001"]
    report = json.loads((out / "prepare_voc_report.json").read_text())
    assert report["list_sizes"] == {"sbd_train": 3, "sbd_val": 2, "voc_train": 2, "voc_val": 2}

    train = json.loads((out / "voc_aug_train.json").read_text())
    assert [im["voc_id"] for im in train["images"]] == [
        "2008_000003", "2008_000004", "2008_000005", "2008_000006"]  # 000007: no VOC JPEG
    assert report["files"]["voc_aug_train.json"]["counters"]["skipped_no_voc_jpeg"] == 1
    by_img = {}
    for a in train["annotations"]:
        by_img.setdefault(a["image_id"], []).append((a["category_id"], a["bbox"], a["iscrowd"]))
    assert by_img[2008000004] == [(15, xywh(*PERSON), 0), (8, xywh(*CAT), 0)]
    assert by_img[2008000005] == [(8, xywh(5, 9, 6, 17), 0), (12, xywh(*DOG), 0)]
    assert by_img[2008000006] == [(8, xywh(*CAT), 1), (12, xywh(*DOG), 0)]  # difficult -> crowd
    assert all("segmentation" not in a for a in train["annotations"])
    coco = load_coco(out / "voc_aug_train.json", voc / "JPEGImages", check_images=True)
    assert coco.num_annotations == 7 and not coco.skipped

    # Val GT: instances matched to XML boxes by overlap, not by index order.
    val = json.loads((out / "voc_2012_val_gt.json").read_text())
    anns = [a for a in val["annotations"] if a["image_id"] == 2007000001]
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(15, 0), (12, 0), (8, 1)]
    for a, r in zip(anns, (PERSON, DOG, CAT)):
        assert np.array_equal(rle_to_mask(a["segmentation"]), rect_mask(*r))
        assert a["bbox"] == xywh(*r) and a["area"] == rect_mask(*r).sum()
    img1 = next(im for im in val["images"] if im["id"] == 2007000001)
    void = rle_to_mask(img1["void_rle"])
    ring = np.zeros((VH, VW), bool)
    for r0, r1, c0, c1 in (PERSON, DOG, CAT):
        ring[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1] = True
    for r in (PERSON, DOG, CAT):
        ring &= ~rect_mask(*r)
    assert np.array_equal(void, ring) and img1["void_pixels"] == ring.sum()
    # Unmatched box (car) and unmatched instance (bird) become ignore regions.
    anns2 = [a for a in val["annotations"] if a["image_id"] == 2007000002]
    assert [(a["category_id"], a["iscrowd"], a.get("ignore_reason")) for a in anns2] == [
        (15, 0, None), (7, 1, "no instance mask"), (3, 1, "no xml box")]
    assert np.array_equal(rle_to_mask(anns2[1]["segmentation"]), rect_mask(20, 28, 30, 39))
    assert np.array_equal(rle_to_mask(anns2[2]["segmentation"]), rect_mask(20, 27, 16, 26))
    counters = report["files"]["voc_2012_val_gt.json"]["counters"]
    assert counters["box_without_instance"] == 1 and counters["instance_without_box"] == 1
    assert counters["matched_instance"] == 4

    # Train GT (oracle): VOC PNG where present, else SBD .mat, matched by overlap.
    gt = json.loads((out / "voc_aug_train_gt.json").read_text())
    src = {im["voc_id"]: im.get("mask_source") for im in gt["images"]}
    assert src == {"2008_000003": "voc", "2008_000004": "sbd", "2008_000005": "sbd",
                   "2008_000006": "voc"}
    a4 = [a for a in gt["annotations"] if a["image_id"] == 2008000004]
    assert [a["category_id"] for a in a4] == [15, 8]
    assert np.array_equal(rle_to_mask(a4[0]["segmentation"]), rect_mask(*PERSON))
    assert np.array_equal(rle_to_mask(a4[1]["segmentation"]), rect_mask(*CAT))


def test_voc_aug_jsons_load_in_pycocotools_and_score_perfectly(voc_sbd, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    voc, sbd = voc_sbd
    out = tmp_path / "out"
    prepare_voc_aug(voc, sbd, out, progress=False)
    assert not (out / "voc_aug_train_gt.json").exists()  # only with train_gt
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out / "voc_2012_val_gt.json"))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"],
                 "segmentation": a["segmentation"], "score": 1.0}
                for a in gt.dataset["annotations"] if not a["iscrowd"]]
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        COCO(str(out / "voc_aug_train.json"))
    assert ev.stats[0] == pytest.approx(1.0)
    assert load_coco(out / "voc_2012_val_gt.json").num_annotations == 6


def test_voc_aug_missing_inputs_are_listed(tmp_path, voc_sbd):
    voc, sbd = voc_sbd
    with pytest.raises(DataError) as e:
        prepare_voc_aug(tmp_path / "nowhere" / "VOC2012", tmp_path / "nosbd", tmp_path / "o")
    msg = str(e.value)
    for part in ("nowhere/VOC2012/JPEGImages", "nowhere/VOC2012/Annotations",
                 "VOC2012/ImageSets/Segmentation/val.txt", "nosbd/train.txt", "nosbd/val.txt"):
        assert part in msg
    (voc / "SegmentationObject" / "2007_000001.png").unlink()
    with pytest.raises(DataError,
                       match=r"SegmentationObject/2007_000001\.png: mask file not found"):
        prepare_voc_aug(voc, sbd, tmp_path / "o2", progress=False)
    import shutil
    shutil.rmtree(sbd / "dataset" / "inst")
    with pytest.raises(DataError, match=r"missing: .*dataset/inst"):
        prepare_voc_aug(voc, sbd, tmp_path / "o3", train_gt=True)
