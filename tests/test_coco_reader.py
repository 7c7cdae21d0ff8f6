"""boxcaseg.data.coco.load_coco on files written in tmp_path: errors, skips, round trips."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from boxcaseg.data.coco import load_coco, parse_coco
from boxcaseg.errors import DataError, ImageReadError
from boxcaseg.structures import mask_to_rle, segmentation_to_mask


def base(**over):
    d = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
                    {"id": 2, "file_name": "b.png", "width": 30, "height": 30}],
         "categories": [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}],
         "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 1, 5, 4],
                          "iscrowd": 0},
                         {"id": 11, "image_id": 2, "category_id": 5, "bbox": [0, 0, 30, 30]}]}
    d.update(over)
    return d


def write(tmp_path, obj, name="ann.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1))
    return p


def with_ann(**fields):
    d = base()
    d["annotations"].append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2],
                             **fields})
    return d


def test_valid_file_typed_view(tmp_path):
    data = load_coco(write(tmp_path, base()), tmp_path)
    assert [im.id for im in data.images] == [1, 2]
    a = data.images[0].annotations[0]
    assert (a.id, a.image_id, a.category_id, a.box, a.iscrowd) == (10, 1, 1, (2, 1, 7, 5), False)
    assert data.images[0].path == tmp_path / "a.png"
    assert data.categories == {1: "cat", 5: "dog"}
    assert data.num_annotations == 2 and data.skipped == []
    assert data.report["images"] == 2 and data.report["annotations"] == 2


def test_malformed_json_names_file_and_line(tmp_path):
    p = write(tmp_path, '{\n "images": [],\n "annotations": [,]\n}')
    with pytest.raises(DataError, match=r"ann\.json.*line 3"):
        load_coco(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json.*not found"):
        load_coco(tmp_path / "nope.json")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    d = base()
    del d[key]
    with pytest.raises(DataError, match=rf"ann\.json.*'{key}'"):
        load_coco(write(tmp_path, d))


def test_unknown_category_names_annotation(tmp_path):
    with pytest.raises(DataError, match=r"ann\.json.*annotation 99.*category_id 7"):
        load_coco(write(tmp_path, with_ann(category_id=7)))


def test_unknown_image_id_names_annotation(tmp_path):
    with pytest.raises(DataError, match=r"annotation 99.*image_id 42"):
        load_coco(write(tmp_path, with_ann(image_id=42)))


def test_duplicate_ids(tmp_path):
    d = with_ann()
    d["annotations"][-1]["id"] = 10
    with pytest.raises(DataError, match="duplicate annotation id 10"):
        load_coco(write(tmp_path, d))
    d = base()
    d["images"][1]["id"] = 1
    with pytest.raises(DataError, match="duplicate image id 1"):
        load_coco(write(tmp_path, d))


def test_missing_annotation_key_and_bad_bbox(tmp_path):
    d = base()
    del d["annotations"][1]["bbox"]
    with pytest.raises(DataError, match=r"annotation 11.*bbox"):
        load_coco(write(tmp_path, d))
    with pytest.raises(DataError, match=r"annotation 99.*malformed bbox"):
        load_coco(write(tmp_path, with_ann(bbox=[1, 2, 3])))
    with pytest.raises(DataError, match=r"annotation 99.*malformed bbox"):
        load_coco(write(tmp_path, with_ann(bbox=[1, 2, "3", 4])))


def test_box_partly_outside_is_clipped_and_counted(tmp_path):
    d = with_ann(bbox=[15, -2, 10, 5])  # image 1 is 20 x 10
    data = load_coco(write(tmp_path, d))
    a = [a for a in data.images[0].annotations if a.id == 99][0]
    assert a.box == (15, 0, 20, 3)
    assert data.report["clipped_box"] == 1 and data.skipped == []


def test_box_fully_outside_is_skipped_and_counted(tmp_path):
    data = load_coco(write(tmp_path, with_ann(bbox=[25, 2, 5, 5])))
    assert 99 not in [a.id for im in data.images for a in im.annotations]
    assert data.report["box_outside_image"] == 1
    assert [aid for aid, _ in data.skipped] == [99]
    assert data.report["annotations"] == 2


@pytest.mark.parametrize("bbox", [[1, 1, 0, 3], [1, 1, 3, 0], [1, 1, -2, 3]])
def test_zero_or_negative_size_skipped_and_listed(tmp_path, bbox):
    data = load_coco(write(tmp_path, with_ann(bbox=bbox)))
    assert data.report["zero_size_box"] == 1
    assert len(data.skipped) == 1 and data.skipped[0][0] == 99
    assert "size" in data.skipped[0][1]
    assert data.num_annotations == 2


def test_crowd_kept_with_flag(tmp_path):
    data = load_coco(write(tmp_path, with_ann(iscrowd=1)))
    a = [a for a in data.images[0].annotations if a.id == 99][0]
    assert a.iscrowd is True
    assert [a.iscrowd for a in data.images[0].annotations if a.id == 10] == [False]


def _write_images(tmp_path, sizes=((20, 10), (30, 30))):
    for name, (w, h) in zip(("a.png", "b.png"), sizes):
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(tmp_path / name)


def test_check_images_ok_and_missing(tmp_path):
    p = write(tmp_path, base())
    _write_images(tmp_path)
    assert len(load_coco(p, tmp_path, check_images=True).images) == 2
    (tmp_path / "b.png").unlink()
    with pytest.raises(ImageReadError, match=r"b\.png"):
        load_coco(p, tmp_path, check_images=True)


def test_check_images_corrupt(tmp_path):
    p = write(tmp_path, base())
    _write_images(tmp_path)
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ImageReadError, match=r"a\.png"):
        load_coco(p, tmp_path, check_images=True)
    # without check_images the reader does not touch the images
    assert len(load_coco(p, tmp_path).images) == 2


def test_check_images_wrong_size(tmp_path):
    p = write(tmp_path, base())
    _write_images(tmp_path, sizes=((20, 10), (31, 30)))
    with pytest.raises(DataError, match=r"b\.png.*31x30.*30x30"):
        load_coco(p, tmp_path, check_images=True)


def test_raw_dict_preserved(tmp_path):
    d = with_ann(bbox=[25, 2, 5, 5], proxy_iou=0.5, custom={"k": [1, 2]})  # skipped ann too
    d["info"] = {"description": "x"}
    d["images"][0]["extra"] = "kept"
    p = write(tmp_path, d)
    data = load_coco(p)
    assert data.raw == json.loads(p.read_text())
    assert data.raw["annotations"][-1]["custom"] == {"k": [1, 2]}
    mem = copy.deepcopy(d)
    parse_coco(mem)
    assert mem == d  # parsing never mutates the input dict


def test_rle_and_polygon_masks_round_trip_through_pycocotools(tmp_path):
    h, w = 24, 32
    m = np.zeros((h, w), dtype=bool)
    m[3:9, 4:20] = True
    m[12:20, 25:30] = True
    poly = [[2.0, 14.0, 12.0, 13.5, 10.0, 22.0, 3.0, 21.0]]
    d = {"images": [{"id": 3, "file_name": "x.png", "width": w, "height": h}],
         "categories": [{"id": 1, "name": "thing"}],
         "annotations": [
             {"id": 1, "image_id": 3, "category_id": 1, "bbox": [4, 3, 26, 17],
              "segmentation": mask_to_rle(m), "area": int(m.sum()), "iscrowd": 0},
             {"id": 2, "image_id": 3, "category_id": 1, "bbox": [2, 13.5, 10, 8.5],
              "segmentation": poly, "area": 70.0, "iscrowd": 0}]}
    p = write(tmp_path, d)
    data = load_coco(p)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(p))
    for a in data.images[0].annotations:
        ours = segmentation_to_mask(a.segmentation, h, w)
        theirs = coco.annToMask(coco.anns[a.id]).astype(bool)
        assert np.array_equal(ours, theirs)
        assert ours.any()
    assert np.array_equal(segmentation_to_mask(data.images[0].annotations[0].segmentation, h, w), m)


def test_duplicate_category_id(tmp_path):
    d = base()
    d["categories"].append({"id": 5, "name": "wolf"})
    with pytest.raises(DataError, match="duplicate category id 5"):
        load_coco(write(tmp_path, d))


@pytest.mark.parametrize("bad", [[1, 2, float("inf"), 4], [1, 2, True, 4], [1, None, 3, 4]])
def test_non_finite_or_boolean_bbox_values(tmp_path, bad):
    with pytest.raises(DataError, match=r"annotation 99.*malformed bbox"):
        parse_coco(with_ann(bbox=bad), "mem.json")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_non_object_entries_name_the_list_and_index(tmp_path, key):
    d = base()
    d[key].append(["not", "an", "object"])
    with pytest.raises(DataError, match=rf"{key}\[\d+\] must be a JSON object"):
        load_coco(write(tmp_path, d))


@pytest.mark.parametrize("where,value", [("image", "x1"), ("annotation", 10.5),
                                         ("category", True)])
def test_non_integer_ids_are_data_errors(tmp_path, where, value):
    d = base()
    {"image": d["images"][0], "annotation": d["annotations"][0],
     "category": d["categories"][1]}[where]["id"] = value
    with pytest.raises(DataError, match="must be an integer"):
        load_coco(write(tmp_path, d))


def test_check_images_without_a_root_is_refused(tmp_path):
    with pytest.raises(ValueError, match="image_root"):
        load_coco(write(tmp_path, base()), check_images=True)
