"""VOC XML reader: 1-based inclusive boxes -> pixel-centre COCO boxes, difficult, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxcaseg.data.voc import (load_voc, match_instances_to_boxes, parse_voc_xml, read_id_list,
                               voc_image_ids)
from boxcaseg.errors import DataError
from boxcaseg.structures import box_iou, box_to_mask, mask_to_box


def xml_text(objects, width=40, height=30, filename="img.jpg") -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>{filename}</filename><size>"
            f"<width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def make_tree(root: Path, items: dict[str, list], list_name="train", with_second_column=False,
              sizes=None) -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for vid, objects in items.items():
        w, h = (sizes or {}).get(vid, (40, 30))
        (root / "Annotations" / f"{vid}.xml").write_text(
            xml_text(objects, w, h, f"{vid}.jpg"), encoding="utf-8")
        Image.new("RGB", (w, h), (10, 20, 30)).save(root / "JPEGImages" / f"{vid}.jpg")
    lines = [f"{v}  1" if with_second_column else v for v in items]
    (root / "ImageSets" / "Main" / f"{list_name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_one_based_inclusive_box_becomes_pixel_edge_box(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(xml_text([("dog", (3, 5, 10, 8), False)]))
    ann = parse_voc_xml(p)
    assert ann.width == 40 and ann.height == 30 and ann.image_id == "a"
    (obj,) = ann.objects
    assert obj.name == "dog" and not obj.difficult
    assert obj.box == (2.0, 4.0, 10.0, 8.0)
    # Under the pixel-centre rule the box covers exactly 0-based columns 2..9, rows 4..7,
    # i.e. the 1-based inclusive pixels 3..10 x 5..8, and the tight box round-trips.
    m = box_to_mask(obj.box, 30, 40)
    cols = np.flatnonzero(m.any(axis=0))
    rows = np.flatnonzero(m.any(axis=1))
    assert cols.tolist() == list(range(2, 10)) and rows.tolist() == list(range(4, 8))
    assert mask_to_box(m) == (2, 4, 10, 8)


def test_load_voc_coco_boxes_difficult_and_ids(tmp_path):
    root = make_tree(tmp_path / "VOC", {
        "2007_000032": [("aeroplane", (1, 1, 40, 30), False), ("person", (5, 6, 7, 9), True)],
        "2008_000123": [("tvmonitor", (10, 2, 20, 12), False)],
    }, with_second_column=True)
    data = load_voc(root, "train")
    assert [im.id for im in data.images] == [2007000032, 2008000123]
    raw = data.raw
    bbox = {a["id"]: a["bbox"] for a in raw["annotations"]}
    assert bbox == {1: [0.0, 0.0, 40.0, 30.0], 2: [4.0, 5.0, 3.0, 4.0], 3: [9.0, 1.0, 11.0, 11.0]}
    first = data.images[0]
    assert first.path == root / "JPEGImages" / "2007_000032.jpg"
    assert [a.iscrowd for a in first.annotations] == [False, True]
    assert [a["difficult"] for a in raw["annotations"]] == [0, 1, 0]
    assert data.report["difficult"] == 1
    assert data.categories[1] == "aeroplane" and data.categories[20] == "tvmonitor"
    assert [a.category_id for a in data.images[1].annotations] == [20]
    # The full-image box is not clipped: VOC's max coordinates equal the image size.
    assert data.report["clipped_box"] == 0
    assert raw["images"][0]["voc_id"] == "2007_000032"


def test_list_file_path_and_custom_classes(tmp_path):
    root = make_tree(tmp_path / "VOC", {"x1": [("widget", (2, 2, 5, 5), False)]})
    lst = tmp_path / "mine.txt"
    lst.write_text("# a comment\nx1\n\nx1\n")
    assert read_id_list(lst) == ["x1"]
    data = load_voc(root, lst, class_names=("gadget", "widget"))
    assert data.images[0].id == 1  # non-VOC ids fall back to positions
    assert data.images[0].annotations[0].category_id == 2


def test_unknown_class_names_the_file(tmp_path):
    root = make_tree(tmp_path / "VOC", {"2007_000001": [("unicorn", (1, 1, 5, 5), False)]})
    with pytest.raises(DataError, match=r"2007_000001\.xml.*unknown class 'unicorn'"):
        load_voc(root, "train")


def test_malformed_xml_names_the_file(tmp_path):
    root = make_tree(tmp_path / "VOC", {"2007_000001": [("dog", (1, 1, 5, 5), False)]})
    (root / "Annotations" / "2007_000001.xml").write_text("<annotation><object><name>dog")
    with pytest.raises(DataError, match=r"2007_000001\.xml: malformed XML"):
        load_voc(root, "train")
    bad = tmp_path / "b.xml"
    bad.write_text(xml_text([("dog", (1, 1, 5, 5), False)]).replace("<xmax>5</xmax>",
                                                                     "<xmax>five</xmax>"))
    with pytest.raises(DataError, match=r"b\.xml: <xmax> is not a number"):
        parse_voc_xml(bad)
    inverted = tmp_path / "c.xml"
    inverted.write_text(xml_text([("dog", (9, 1, 5, 5), False)]))
    with pytest.raises(DataError, match=r"c\.xml: object 0 \(dog\) has an inverted box"):
        parse_voc_xml(inverted)


def test_missing_image_and_missing_list_are_named(tmp_path):
    root = make_tree(tmp_path / "VOC", {"2007_000001": [("dog", (1, 1, 5, 5), False)]})
    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages/2007_000001\.jpg not found"):
        load_voc(root, "train")
    with pytest.raises(DataError, match=r"image set 'val' not found.*Segmentation/val\.txt"):
        load_voc(root, "val")
    with pytest.raises(DataError, match="missing folder"):
        load_voc(tmp_path / "nothing", "train")


def test_size_read_from_image_when_xml_has_none(tmp_path):
    root = make_tree(tmp_path / "VOC", {"2007_000001": [("dog", (1, 1, 5, 5), False)]},
                     sizes={"2007_000001": (17, 13)})
    xml = root / "Annotations" / "2007_000001.xml"
    xml.write_text(xml.read_text().replace("<width>17</width>", "<width>0</width>"))
    im = load_voc(root, "train").images[0]
    assert (im.width, im.height) == (17, 13)


def test_voc_image_ids():
    assert voc_image_ids(["2007_000032", "2012_004331"]) == {"2007_000032": 2007000032,
                                                            "2012_004331": 2012004331}
    assert voc_image_ids(["b", "a"]) == {"a": 1, "b": 2}


def rect(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_matching_by_overlap_not_order():
    masks = [rect(30, 40, 0, 10, 20, 40), rect(30, 40, 5, 25, 0, 15)]
    boxes = [(0, 5, 15, 25), (20, 0, 40, 10), (0, 0, 3, 3)]
    # instance 0 <-> box 1, instance 1 <-> box 0; box 2 overlaps nothing.
    assert match_instances_to_boxes(masks, ["dog", "dog"], boxes, ["dog"] * 3) == [(0, 1), (1, 0)]
    # A class mismatch forbids a pair even at IoU 1.
    assert match_instances_to_boxes(masks, ["cat", "dog"], boxes, ["dog"] * 3) == [(1, 0)]
    # Below min_iou: no pair.
    shifted = [(10, 5, 25, 25)]
    assert match_instances_to_boxes(masks[1:], ["dog"], shifted, ["dog"], min_iou=0.5) == []
    assert match_instances_to_boxes(masks[1:], ["dog"], shifted, ["dog"], min_iou=0.2) == [(0, 0)]
    assert match_instances_to_boxes([], [], boxes, ["dog"] * 3) == []


def test_matching_maximises_total_iou_like_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(40):
        k, n = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        masks = []
        for _ in range(k):
            r0, c0 = rng.integers(0, 15, 2)
            masks.append(rect(24, 24, r0, r0 + rng.integers(3, 9), c0, c0 + rng.integers(3, 9)))
        boxes = []
        for _ in range(n):
            x, y = rng.integers(0, 15, 2)
            boxes.append((x, y, x + rng.integers(3, 9), y + rng.integers(3, 9)))
        iou = np.array([[box_iou(mask_to_box(m), b) for b in boxes] for m in masks])
        got = match_instances_to_boxes(masks, [1] * k, boxes, [1] * n, min_iou=0.0)
        best = max(sum(iou[i, j] for i, j in zip(perm_rows, perm_cols))
                   for perm_rows in itertools.permutations(range(k), min(k, n))
                   for perm_cols in itertools.permutations(range(n), min(k, n)))
        assert len({i for i, _ in got}) == len(got) == len({j for _, j in got})
        assert sum(iou[i, j] for i, j in got) == pytest.approx(best)
