"""Mixed supervision: GT masks pass through label byte-identical and fixed in merge; box crops
with a GT mask become pixel-supervised training samples."""

import json

import numpy as np
import pytest
from PIL import Image

from boxcaseg.data.coco import load_coco
from boxcaseg.data.crops import augmented_box_crop
from boxcaseg.data.gt_masks import box_crop_with_mask
from boxcaseg.labeling.schema import is_gt_annotation
from boxcaseg.data.train_sets import BoxCropDataset
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.structures import box_to_mask, mask_to_rle, rle_to_mask, segmentation_to_mask


def test_which_annotations_are_ground_truth():
    assert is_gt_annotation({"segmentation": [[0, 0, 4, 0, 4, 4]]})
    assert is_gt_annotation({"segmentation": {"size": [2, 2], "counts": "04"},
                             "mask_source": "gt"})
    assert not is_gt_annotation({"segmentation": []})
    assert not is_gt_annotation({"bbox": [0, 0, 1, 1]})
    assert not is_gt_annotation({"segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 1})
    assert not is_gt_annotation({"segmentation": [[0, 0, 4, 0, 4, 4]],
                                 "mask_source": "boxcaseg"})
    # the empty mask the labeler writes for a box it could not label is no GT
    assert not is_gt_annotation({"segmentation": {"size": [2, 2], "counts": "4"},
                                 "boxcaseg_no_mask": True})
    # a labels file from before mask_source: its masks are proxies
    assert not is_gt_annotation({"segmentation": [[0, 0, 4, 0, 4, 4]], "proxy_iou": 0.9})


def _dataset(tmp_path):
    """Two 40x48 images; per image a box with a GT polygon / RLE and three box-only ones
    overlapping it: two larger than it, one smaller (inside it)."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)).save(
            root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 40})
        gt = np.zeros((40, 48), bool)
        gt[6:20, 4:30] = True
        segm = ([[4.0, 6.0, 30.0, 6.0, 30.0, 20.0, 4.0, 20.0]] if i == 0
                else mask_to_rle(gt))
        anns.append({"id": 10 * i + 1, "image_id": i + 1, "category_id": 1,
                     "bbox": [4, 6, 26, 14], "iscrowd": 0, "area": 364.0,
                     "segmentation": segm, "extra": {"by": "hand"}})
        for j, bbox in enumerate(([20, 10, 20, 20], [0, 0, 48, 40], [10, 8, 6, 6])):
            anns.append({"id": 10 * i + 2 + j, "image_id": i + 1, "category_id": 1,
                         "bbox": bbox, "iscrowd": 0, "area": bbox[2] * bbox[3]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    return path, root, data


@pytest.mark.parametrize("method", ["box", "grabcut"])
def test_label_keeps_gt_masks_byte_identical_and_fixed_in_merge(tmp_path, method):
    path, root, data = _dataset(tmp_path)
    out = tmp_path / "labels.json"
    summary = label_dataset(load_coco(path, root), out, method, LabelConfig(), progress=False)
    assert summary.gt_masks == 2 and summary.instances_labeled == 6
    assert summary.instances == 8  # non-crowd boxes, the GT ones included
    res = json.loads(out.read_text())
    text = out.read_text()
    for a_in, a_out in zip(data["annotations"], res["annotations"]):
        if "segmentation" in a_in:
            assert a_out["mask_source"] == "gt" and a_out["score"] == 1.0
            assert {k: a_out[k] for k in a_in} == a_in       # every given field as it was
            assert json.dumps(a_in["segmentation"]) in text  # the same bytes in the file
            assert "proxy_iou" not in a_out and not a_out.get("ignore_mask", False)
        else:
            assert a_out["mask_source"] == method
    by_id = {a["id"]: a for a in res["annotations"]}
    for i in range(2):
        gt = segmentation_to_mask(by_id[10 * i + 1]["segmentation"], 40, 48)
        small = rle_to_mask(by_id[10 * i + 4]["segmentation"])
        taken = gt | small
        for j in (2, 3):  # the 20x20 box, then the whole image
            m = rle_to_mask(by_id[10 * i + j]["segmentation"])
            # a larger box's proxy mask never takes a GT pixel (nor the smaller proxy's)
            assert not (m & gt).any() and not (m & small).any()
            if method == "box":        # ... and keeps the rest of its box
                x, y, w, h = by_id[10 * i + j]["bbox"]
                box = box_to_mask([x, y, x + w, y + h], 40, 48)
                assert m.sum() > 0 and np.array_equal(m, box & ~taken)
            taken |= m
        if method == "box":  # smaller object better: the small box inside the GT keeps its box
            assert np.array_equal(small, box_to_mask([10, 8, 16, 14], 40, 48))


@pytest.mark.parametrize("method", ["box", "grabcut"])
def test_an_image_with_only_gt_masks_is_not_read(tmp_path, method):
    path, root, data = _dataset(tmp_path)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 2
                           or "segmentation" in a]
    (root / "0.png").unlink()  # image 1 has GT masks only: nothing to label, never read
    path.write_text(json.dumps(data))
    out = tmp_path / "labels.json"
    summary = label_dataset(load_coco(path, root), out, method, LabelConfig(), progress=False)
    assert summary.images_failed == [] and summary.gt_masks == 2
    assert summary.instances_labeled == 3


def test_keep_gt_masks_false_labels_every_box(tmp_path):
    path, root, _ = _dataset(tmp_path)
    out = tmp_path / "labels.json"
    summary = label_dataset(load_coco(path, root), out, "box", LabelConfig(keep_gt_masks=False),
                            progress=False)
    assert summary.gt_masks == 0 and summary.instances_labeled == 8
    res = json.loads(out.read_text())
    assert all(a["mask_source"] == "box" for a in res["annotations"])


def test_box_crop_with_mask_matches_the_box_only_crop():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (50, 60, 3)).astype(np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[10:30, 15:45] = True
    box = (15.0, 10.0, 45.0, 30.0)
    for jitter in ("centre", "corner"):
        for seed in range(5):
            crop, b = augmented_box_crop(image, box, 32, np.random.default_rng(seed),
                                         jitter=jitter)
            crop2, b2, cmask = box_crop_with_mask(image, mask, box, 32,
                                                  np.random.default_rng(seed), jitter=jitter)
            assert np.array_equal(crop, crop2) and b == b2
            # the warped mask fills the warped box (the object is the box here)
            x1, y1, x2, y2 = b
            inside = box_to_mask(b, 32, 32)
            assert (cmask & inside).sum() / (cmask | inside).sum() > 0.85
            assert cmask.dtype == bool and cmask.shape == (32, 32)


def test_box_crops_with_gt_masks_train_the_pixel_heads(tmp_path):
    path, root, _ = _dataset(tmp_path)
    coco = load_coco(path, root)
    ds = BoxCropDataset(coco, crop_size=32, gt_masks=True)
    off = BoxCropDataset(coco, crop_size=32)
    flags = [bool(ds.get(i, seed=7)["is_salient"]) for i in range(len(ds))]
    assert flags == [a.id in (1, 11) for _, a in ds.items]
    for i, (_, a) in enumerate(ds.items):
        s, s0 = ds.get(i, seed=7), off.get(i, seed=7)
        assert bool(s0["is_salient"]) is False and not s0["mask"].any()
        assert np.array_equal(s["image"].numpy(), s0["image"].numpy())
        if a.id in (1, 11):
            assert s["mask"].shape == (1, 32, 32) and 0 < s["mask"].mean() < 1


def test_train_config_switch_reaches_the_dataset(tmp_path):
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.engine.trainer import build_datasets

    path, root, _ = _dataset(tmp_path)
    for flag, want in ((True, {1, 11}), (False, set())):
        cfg = TrainConfig(boxes_json=str(path), images_root=str(root), batch_size=4,
                          box_per_batch=4, crop_size=32, salient_resize=32, gt_masks=flag)
        box_ds, sal_ds = build_datasets(cfg)
        assert sal_ds is None and box_ds.gt_ids == want


def test_a_malformed_gt_mask_is_named(tmp_path):
    from boxcaseg.errors import DataError

    path, root, data = _dataset(tmp_path)
    assert data["annotations"][4]["id"] == 11
    data["annotations"][4]["segmentation"] = mask_to_rle(np.ones((10, 10), bool))  # wrong size
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation 11 .*10x10 but its image is 48x40"):
        label_dataset(load_coco(path, root), tmp_path / "o.json", "box", LabelConfig(),
                      progress=False)
    ds = BoxCropDataset(load_coco(path, root), crop_size=32, gt_masks=True)
    with pytest.raises(DataError, match="annotation 11"):
        ds.get([a.id for _, a in ds.items].index(11), seed=0)


def test_gt_masks_in_every_output_format_and_with_shards(tmp_path):
    from boxcaseg.cli import main as cli_main

    path, root, data = _dataset(tmp_path)
    common = ["label", "--method", "box", "--images", str(root), "--boxes", str(path),
              "--no-progress"]
    outs = {}
    for fmt in ("dataset", "results", "jsonl"):
        outs[fmt] = tmp_path / f"o.{fmt}"
        assert cli_main([*common, "--format", fmt, "--out", str(outs[fmt])]) == 0
    ds = json.loads(outs["dataset"].read_text())
    gt_in = {a["id"]: a for a in data["annotations"] if "segmentation" in a}
    for a in ds["annotations"]:
        if a["id"] in gt_in:
            assert a == {**gt_in[a["id"]], "mask_source": "gt", "score": 1.0}
    rows = [json.loads(x) for x in outs["jsonl"].read_text().splitlines()[1:]]
    assert [a for r in rows for a in r["annotations"]] == ds["annotations"]
    results = json.loads(outs["results"].read_text())  # the labeled masks, not the GT ones
    by_id = {a["id"]: a for a in ds["annotations"]}
    assert sorted(r["annotation_id"] for r in results) == sorted(set(by_id) - set(gt_in))
    assert all(r["score"] == by_id[r["annotation_id"]]["score"] for r in results)
    # a job array: the shards' merge is the same file, GT masks included
    parts = [tmp_path / f"p{k}.jsonl" for k in range(2)]
    for k, p in enumerate(parts):
        assert cli_main([*common, "--shard", f"{k}/2", "--out", str(p)]) == 0
    merged = tmp_path / "m.json"
    assert cli_main(["merge-labels", *map(str, parts), "--out", str(merged)]) == 0
    assert merged.read_bytes() == outs["dataset"].read_bytes()
    # parts labeled with keep_gt_masks=false merge into the labeled-everything file
    parts = [tmp_path / f"q{k}.jsonl" for k in range(2)]
    for k, p in enumerate(parts):
        assert cli_main([*common, "--shard", f"{k}/2", "--out", str(p),
                         "keep_gt_masks=false"]) == 0
    merged = tmp_path / "m2.json"
    assert cli_main(["merge-labels", *map(str, parts), "--out", str(merged)]) == 0
    assert all(a["mask_source"] == "box" for a in json.loads(merged.read_text())["annotations"])


def test_boxcaseg_score_from_box_masks_matches_full_image_masks(tmp_path):
    """The labeler's box-mask path scores exactly as the full-image reference would."""
    from boxcaseg.labeling.predictor import get_predictor, soft_ious
    from reference_impl import paste_probs, postprocess_fields
    from test_score import SoftRedModel

    path, root, _ = _dataset(tmp_path)
    coco = load_coco(path, root)
    cfg = LabelConfig(crop_size=32, jit=False, keep_gt_masks=False)
    pred = get_predictor(SoftRedModel(), cfg)
    for im in coco.images:
        image = np.array(Image.open(im.path).convert("RGB"))
        boxes = np.array([a.box for a in im.annotations], float)
        ((bm, probs),) = pred.predict([image], [boxes])
        full = paste_probs(probs, boxes, boxes, im.height, im.width, cfg.threshold)
        soft = soft_ious(probs, cfg.threshold, cfg.threshold_mode)
        a = postprocess_fields(bm, boxes, cfg, soft, height=im.height, width=im.width)
        b = postprocess_fields(full, boxes, cfg, soft)
        assert a == b and len({f["score"] for f in a}) > 1


def test_fixed_gt_merge_on_box_masks_equals_the_full_image_reference():
    """GT masks as box masks over their own extent (they may reach outside their box) merge
    exactly as full-image masks would (``reference_impl``)."""
    from boxcaseg.labeling.masks import BoxMask
    from boxcaseg.labeling.job.inputs import ImageTask
    from reference_impl import merge_smaller_first, postprocess_fields
    from boxcaseg.structures import box_iou, box_to_mask

    rng = np.random.default_rng(1)
    H, W = 30, 36
    for _ in range(20):
        boxes = np.sort(rng.uniform(0, [W, H, W, H], size=(5, 4)).reshape(5, 2, 2), axis=1)
        boxes = boxes.transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
        boxes[:, 2:] += 2
        full = np.stack([box_to_mask(b, H, W) & (rng.random((H, W)) < 0.7) for b in boxes])
        gt_boxes = boxes[3:]
        gt_full = rng.random((2, H, W)) < 0.3  # anywhere, outside their boxes too
        task = ImageTask(1, "x", None, H, W, np.arange(3), boxes[:3],
                         np.array([7, 8]), gt_boxes, [mask_to_rle(m) for m in gt_full])
        fields = postprocess_fields([BoxMask.from_full(m, b) for m, b in
                                     zip(full[:3], boxes[:3])], boxes[:3], LabelConfig(), None,
                                    (task.fixed_masks(), gt_boxes), height=H, width=W)
        ref = merge_smaller_first(np.concatenate([full[:3], gt_full]), boxes)[:3]
        for k, (f, r, raw) in enumerate(zip(fields, ref, full[:3])):
            assert np.array_equal(rle_to_mask(f["segmentation"]), r)
            assert f["area"] == r.sum()
            if raw.sum():
                # the GT boxes are boxes of the image too: they count in the box overlap
                overlap = max(box_iou(boxes[k], o) for j, o in enumerate(boxes) if j != k)
                want = min(r.sum() / raw.sum(), 1.0) * np.sqrt(f["proxy_iou"]) * (1 - overlap)
                assert f["score"] == pytest.approx(round(want, 6), abs=1e-6)


def test_report_and_export_read_the_labelers_score(tmp_path):
    from boxcaseg.labeling.review import load_labels

    path, root, _ = _dataset(tmp_path)
    out = tmp_path / "labels.json"
    label_dataset(load_coco(path, root), out, "box", LabelConfig(), progress=False)
    anns = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    labels = load_labels(out, root)
    assert len(labels.instances) == 8
    for inst in labels.instances:
        assert inst.score == anns[inst.ann_id]["score"]
    assert {i.ann_id for i in labels.instances if i.score == 1.0} >= {1, 11}  # the GT ones
    assert any(i.score < 1.0 for i in labels.instances)  # merge lowered some proxy masks
