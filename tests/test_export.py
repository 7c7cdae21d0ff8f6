"""``boxcaseg export``: review order, masks that survive the trip, and each tool's own loader.

Schema tests always run; the round trips through datumaro (CVAT's dataset library),
FiftyOne's COCO importer and label-studio-converter run where the ``export`` extra is
installed (CI installs it) and skip, saying so, elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from _review_data import CATEGORIES, make_review_data
from boxcaseg.cli import main
from boxcaseg.errors import ConfigError, DataError
from boxcaseg.export.common import mask_to_polygons, polygon_fidelity, polygons_to_mask
from boxcaseg.export.cvat import export_cvat
from boxcaseg.export.fiftyone import export_fiftyone
from boxcaseg.export.labelstudio import export_labelstudio
from boxcaseg.io import read_json
from boxcaseg.labeling.review import load_labels, worst_first
from boxcaseg.structures import segmentation_to_mask

# FiftyOne reads this at import; it must never try to reach its usage tracker
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_review_data(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="module")
def labels(data):
    return load_labels(data["good"], data["images"])


def _masks(data) -> dict[int, np.ndarray | None]:
    """Annotation id -> the labels file's mask (None: unanswered)."""
    raw = read_json(data["good"])
    size = {im["id"]: (im["height"], im["width"]) for im in raw["images"]}
    return {a["id"]: segmentation_to_mask(a["segmentation"], *size[a["image_id"]])
            if "segmentation" in a else None for a in raw["annotations"]}


def _expected_order(data) -> list[int]:
    return worst_first(data["scores"])


def _image_order(data, order: list[int]) -> list[int]:
    image_of = {a["id"]: a["image_id"] for a in data["gt_anns"]}
    seen: list[int] = []
    for aid in order:
        if image_of[aid] not in seen:
            seen.append(image_of[aid])
    return seen


@pytest.mark.parametrize("seed", range(4))
def test_polygons_rasterize_back_to_the_mask(seed):
    import cv2

    rng = np.random.default_rng(seed)
    m = np.zeros((50, 70), np.uint8)
    for _ in range(3):
        cv2.circle(m, (int(rng.integers(10, 60)), int(rng.integers(10, 40))),
                   int(rng.integers(3, 12)), 1, -1)
    m[5:9, 60:69] = 1  # a separate thin part
    mask = m.astype(bool)
    polys = mask_to_polygons(mask)
    assert len(polys) >= 2
    np.testing.assert_array_equal(polygons_to_mask(polys, 50, 70), mask)
    assert polygon_fidelity(mask, polys) == 1.0
    ring = mask.copy()
    ring[:] = False
    ring[10:40, 10:40] = True
    ring[20:30, 20:30] = False
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(ring), 50, 70), ring)


def test_cvat_schema(data, labels, tmp_path):
    info = export_cvat(labels, tmp_path, "copy")
    coco = read_json(tmp_path / "annotations" / "instances_default.json")
    order = [a["id"] for a in coco["annotations"]]
    # images by their worst instance, then instances worst first inside each image
    assert [im["id"] for im in coco["images"]] == _image_order(data, _expected_order(data))
    per_image = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["attributes"]["review_rank"])
    assert all(r == sorted(r) for r in per_image.values())
    assert sorted(a["attributes"]["review_rank"] for a in coco["annotations"]) == \
        list(range(1, 8))
    assert order[0] == data["unanswered"]
    masks = _masks(data)
    for a in coco["annotations"]:
        im = next(i for i in coco["images"] if i["id"] == a["image_id"])
        assert (tmp_path / "images" / "default" / im["file_name"]).is_file()
        assert isinstance(a["segmentation"], list)
        assert a["attributes"].get("score") == data["scores"][a["id"]]
        assert a["attributes"]["ignore_mask"] == (a["id"] in data["dropped"])
        assert a["attributes"]["annotation_id"] == a["id"]
        m = masks[a["id"]]
        if m is None:
            assert a["segmentation"] == [] and a["attributes"]["labeled"] is False
            assert "score" not in a  # unknown, not null (datumaro refuses null)
            continue
        back = polygons_to_mask(a["segmentation"], im["height"], im["width"])
        iou = (back & m).sum() / (back | m).sum()
        assert iou == pytest.approx(a["attributes"]["polygon_iou"], abs=1e-4)
        assert iou == 1.0  # exact, rings (holes) included
    assert {c["name"] for c in coco["categories"]} == set(CATEGORIES.values())
    assert info["without_mask"] == 1 and info["polygons_inexact"] == 0


def test_cvat_round_trip_with_datumaro(data, labels, tmp_path):
    dm = pytest.importorskip("datumaro", reason="datumaro not installed (pip install "
                             "'boxcaseg[export]'): CVAT round trip not checked")
    export_cvat(labels, tmp_path)  # hard links: datumaro refuses files outside its folder
    ds = dm.Dataset.import_from(str(tmp_path), "coco_instances")
    assert len(ds) == 4
    cats = ds.categories()[dm.AnnotationType.label]
    masks = _masks(data)
    seen = set()
    for item in ds:
        assert Path(item.media.path).is_file()
        h, w = item.media.size
        for ann in item.annotations:
            aid = ann.id
            seen.add(aid)
            assert cats[ann.label].name in CATEGORIES.values()
            assert ann.attributes.get("score") == data["scores"][aid]
            assert ann.attributes["ignore_mask"] == (aid in data["dropped"])
            if ann.type == dm.AnnotationType.polygon and masks[aid] is not None:
                back = polygons_to_mask([list(ann.points)], h, w)
                filled = polygons_to_mask(mask_to_polygons(masks[aid]), h, w)  # holes filled
                assert (back & ~filled).sum() == 0  # a part of the mask it came from
                assert back.sum() > 0
    assert seen == set(data["ann_ids"])


def test_fiftyone_schema_is_exact_rle(data, labels, tmp_path):
    export_fiftyone(labels, tmp_path, "none")
    coco = read_json(tmp_path / "labels.json")
    # FiftyOne orders samples by image id: the ids are the review positions
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4]
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert first[0]["id"] == data["unanswered"]
    masks = _masks(data)
    for a in coco["annotations"]:
        im = next(i for i in coco["images"] if i["id"] == a["image_id"])
        m = segmentation_to_mask(a["segmentation"], im["height"], im["width"])
        ref = masks[a["id"]]
        np.testing.assert_array_equal(m, ref if ref is not None else np.zeros_like(m))
        assert a.get("score") == data["scores"][a["id"]]


def test_fiftyone_round_trip_with_its_coco_importer(data, labels, tmp_path):
    pytest.importorskip("fiftyone", reason="fiftyone not installed (pip install "
                        "'boxcaseg[export]'): FiftyOne round trip not checked")
    import fiftyone.utils.coco as fouc

    export_fiftyone(labels, tmp_path)
    # the importer fo.Dataset.from_dir(dataset_type=COCODetectionDataset) runs, minus the
    # MongoDB insert (FiftyOne's database binary is downloaded at install time, which a
    # machine without network cannot do)
    importer = fouc.COCODetectionDatasetImporter(dataset_dir=str(tmp_path),
                                                 label_types=["segmentations"])
    with importer:
        samples = list(importer)
    assert len(samples) == 4
    masks = _masks(data)
    ranks = []
    for path, meta, dets in samples:
        assert Path(path).is_file()
        for d in dets.detections:
            aid = d["annotation_id"]
            ranks.append(d["review_rank"])
            assert d.label in CATEGORIES.values()
            assert d.confidence == data["scores"][aid]
            assert d["ignore_mask"] == (aid in data["dropped"])
            # the mask is stored inside the box: paste it back and compare
            x, y, w, h = d.bounding_box
            full = np.zeros((meta.height, meta.width), bool)
            x0, y0 = round(x * meta.width), round(y * meta.height)
            full[y0:y0 + d.mask.shape[0], x0:x0 + d.mask.shape[1]] = d.mask
            if masks[aid] is None:
                assert not full.any()  # unanswered: kept as an empty mask, not dropped
            else:
                np.testing.assert_array_equal(full, masks[aid])
    assert sorted(ranks) == list(range(1, 8))
    assert ranks[0] == 1  # the first sample starts with the worst instance


def test_labelstudio_polygons_schema(data, labels, tmp_path):
    info = export_labelstudio(labels, tmp_path, "none", mask_format="polygon",
                              url_prefix="/data/upload/")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["image_id"] for t in tasks] == _image_order(data, _expected_order(data))
    assert tasks[0]["data"]["image"].startswith("/data/upload/img_")
    masks = _masks(data)
    results = [r for t in tasks for r in t["predictions"][0]["result"]]
    assert info["regions"] == len(results) and info["without_mask"] == 1
    box = [r for r in results if r["type"] == "rectanglelabels"]
    assert len(box) == 1 and box[0]["value"]["rectanglelabels"] in [[n] for n in
                                                                   CATEGORIES.values()]
    for r in results:
        assert r["to_name"] == "image" and r["from_name"] in ("mask", "box")
        assert r["meta"]["review_rank"] >= 1
        if r["type"] != "polygonlabels":
            continue
        aid = int(r["id"][1:].split("_")[0])
        w, h = r["original_width"], r["original_height"]
        pts = np.asarray(r["value"]["points"]) / 100.0 * [w, h]
        back = polygons_to_mask([pts.ravel().tolist()], h, w)
        filled = polygons_to_mask(mask_to_polygons(masks[aid]), h, w)  # holes filled
        assert (back ^ filled).sum() <= 2  # percent rounding, nothing more
    config = (tmp_path / "label_config.xml").read_text()
    assert "<PolygonLabels" in config and 'value="ring"' in config


def test_labelstudio_brush_needs_the_encoder(labels, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_converter(name, *a, **k):
        if name.startswith("label_studio_converter"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_converter)
    with pytest.raises(ConfigError, match="label-studio-converter"):
        export_labelstudio(labels, tmp_path, "none")


def test_labelstudio_round_trip_with_its_converter(data, labels, tmp_path):
    pytest.importorskip("label_studio_converter", reason="label-studio-converter not "
                        "installed (pip install 'boxcaseg[export]'): brush masks not checked")
    from label_studio_converter import Converter

    export_labelstudio(labels, tmp_path / "ls")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    # what Label Studio exports once a reviewer accepts the pre-annotations unchanged
    exported = [{"id": k + 1, "data": t["data"],
                 "annotations": [{"id": k + 1, "result": t["predictions"][0]["result"]}]}
                for k, t in enumerate(tasks)]
    (tmp_path / "export.json").write_text(json.dumps(exported))
    conv = Converter(config=(tmp_path / "ls" / "label_config.xml").read_text(),
                     project_dir=None)
    (tmp_path / "npy").mkdir()
    conv.convert(str(tmp_path / "export.json"), str(tmp_path / "npy"), "BRUSH_TO_NUMPY",
                 is_dir=False)
    masks = _masks(data)
    checked = 0
    for k, t in enumerate(tasks):
        per_label: dict[str, int] = {}
        for r in t["predictions"][0]["result"]:
            if r["type"] != "brushlabels":
                continue
            name = r["value"]["brushlabels"][0]
            i = per_label.get(name, 0)
            per_label[name] = i + 1
            f = tmp_path / "npy" / f"task-{k + 1}-annotation-{k + 1}-by--mask-{name}-{i}.npy"
            decoded = np.load(f) > 0
            np.testing.assert_array_equal(decoded, masks[int(r["id"][1:])])
            checked += 1
    assert checked == 6  # every answered box, the unanswered one went in as a rectangle


def test_cli_export(data, tmp_path, capsys):
    for fmt, name in (("cvat", "annotations/instances_default.json"),
                      ("fiftyone", "labels.json")):
        out = tmp_path / fmt
        assert main(["export", str(data["good"]), "--to", fmt, "--images",
                     str(data["images"]), "--out", str(out)]) == 0
        assert (out / name).is_file()
    assert main(["export", str(data["good"]), "--to", "labelstudio", "--ls-mask", "polygon",
                 "--images", str(data["images"]), "--out", str(tmp_path / "ls")]) == 0
    assert "wrote" in capsys.readouterr().out
    # a wrong image folder is named, not exported half
    rc = main(["export", str(data["good"]), "--to", "cvat", "--images", str(tmp_path),
               "--out", str(tmp_path / "bad")])
    assert rc == 2  # bad input
    assert "image file not found" in capsys.readouterr().err
    with pytest.raises(DataError):
        load_labels(tmp_path / "missing.json")
