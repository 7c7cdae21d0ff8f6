"""The auto-labeler end to end: geometry, output format, bad input, resume, CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO
from torch import nn

from boxcaseg.cli import main as cli_main
from boxcaseg.data.coco import load_coco
from boxcaseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxcaseg.labeling.job import stream as labeler_mod
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.parts import sidecar_path
from boxcaseg.labeling.job.run import label_dataset
from reference_impl import merge_smaller_first, predict_masks
from boxcaseg.structures import box_to_mask, rle_to_mask, xywh_to_xyxy


class RedModel(nn.Module):
    """Stand-in BoxCaseg: the probability is the crop's own (un-normalised) red channel.

    ``pool`` > 1 answers at a lower "feature" resolution, like a real network.
    """

    def __init__(self, pool: int = 1):
        super().__init__()
        self.pool = pool
        self.dummy = nn.Parameter(torch.zeros(()))

    def predict_proba(self, x, out_size=None):
        red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        if self.pool > 1:
            red = F.avg_pool2d(red, self.pool)
        if out_size is not None:
            red = F.interpolate(red, size=out_size, mode="bilinear", align_corners=False)
        return red.clamp(0, 1)


def _red_image(h, w, seed=0):
    """Random binary red pattern (blobs), noise in green/blue: red 255 = 'object'."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    coarse = rng.random((h // 4 + 1, w // 4 + 1)) < 0.5
    red = np.kron(coarse, np.ones((4, 4), bool))[:h, :w]
    img[..., 0] = np.where(red, 255, 0)
    return img, red


@pytest.mark.parametrize("crop_size", [16, 32])
def test_crop_predict_paste_geometry_is_exact(crop_size):
    img, red = _red_image(40, 48)
    boxes = np.array([[8, 4, 24, 20], [20, 16, 36, 32], [0, 24, 16, 40]], dtype=float)
    cfg = LabelConfig(crop_size=crop_size, jit=False, channels_last=False)
    masks = predict_masks(RedModel(), img, boxes, cfg)
    assert masks.shape == (3, 40, 48) and masks.dtype == bool
    for m, b in zip(masks, boxes):
        assert np.array_equal(m, red & box_to_mask(b, 40, 48))


def test_context_margin_geometry():
    img, red = _red_image(48, 48, seed=1)
    boxes = np.array([[16, 16, 32, 32], [0, 0, 16, 16]], dtype=float)  # 2nd: margin leaves image
    cfg = LabelConfig(crop_size=32, context=0.5, jit=False)
    masks = predict_masks(RedModel(), img, boxes, cfg)
    for m, b in zip(masks, boxes):
        assert np.array_equal(m, red & box_to_mask(b, 48, 48))


def test_fractional_boxes_native_resolution_and_jit():
    img, red = _red_image(64, 64, seed=2)
    boxes = np.array([[3.3, 5.7, 40.2, 37.9], [20.5, 10.25, 61.9, 60.6]])
    for cfg in (LabelConfig(crop_size=96, jit=True), LabelConfig(crop_size=96, jit=False,
                                                                 native_resolution=False)):
        masks = predict_masks(RedModel(pool=2), img, boxes, cfg)
        for m, b in zip(masks, boxes):
            inside = box_to_mask(b, 64, 64)
            assert not (m & ~inside).any()  # confined to the box's pixels
            want = red & inside
            assert (m & want).sum() / (m | want).sum() > 0.9


# ------------------------------------------------------------------------------------------
# a small COCO dataset on disk


def _make_dataset(tmp_path, missing_image=False):
    root = tmp_path / "images"
    root.mkdir()
    images, anns, next_id = [], [], 100
    for i in range(5):
        h, w = 32 + 4 * i, 40
        img, _ = _red_image(h, w, seed=10 + i)
        name = f"im{i}.png"
        if not (missing_image and i == 2):
            Image.fromarray(img).save(root / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "extra": i})
        for bbox in ([2, 3, 20, 18], [10.5, 8.25, 12, 10], [14, 3, 10, 18]):
            anns.append({"note": f"n{next_id}", "id": next_id, "image_id": i + 1,
                         "category_id": 1 + next_id % 2, "bbox": bbox, "iscrowd": 0,
                         "segmentation": [], "area": 0.0, "attributes": {"k": [1, 2]}})
            next_id += 1
    anns.append({"id": 900, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4],
                 "iscrowd": 0})  # zero-size: skipped
    crowd_rle = {"size": [32, 40], "counts": [0, 1280]}
    anns.append({"id": 901, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 32],
                 "iscrowd": 1, "segmentation": crowd_rle, "area": 1280})
    data = {"info": {"description": "test"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "zzz_extra": [1, {"x": None}], "licenses": []}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    return path, root, data


def test_output_round_trips_and_keeps_every_field(tmp_path):
    path, root, data = _make_dataset(tmp_path)
    coco = load_coco(path, root)
    out = tmp_path / "out" / "labeled.json"
    cfg = LabelConfig(drop_iou=0.9, chunk_images=2)
    summary = label_dataset(coco, out, "box", cfg, progress=False)
    res = json.loads(out.read_text())

    assert list(res)[:-1] == list(data) and list(res)[-1] == "boxcaseg_label"
    for k in data:
        if k != "annotations":
            assert res[k] == data[k]
    assert res["boxcaseg_label"]["method"] == "box"
    assert res["boxcaseg_label"]["summary"]["instances_labeled"] == 15
    assert len(res["annotations"]) == len(data["annotations"])
    by_id = {a["id"]: a for a in res["annotations"]}
    for a_in, a_out in zip(data["annotations"], res["annotations"]):
        assert a_out["id"] == a_in["id"]
        if a_in["id"] in (900, 901):  # skipped and crowd: every field kept, in order
            assert {k: a_out[k] for k in a_in} == a_in and list(a_out)[:len(a_in)] == list(a_in)
            if not a_in.get("segmentation"):  # plus an empty, marked mask for COCO tools
                assert a_out["boxcaseg_no_mask"] is True and "ignore_mask" not in a_out
                assert not rle_to_mask(a_out["segmentation"]).any()
            else:
                assert a_out == a_in
            continue
        keys = list(a_in) + [k for k in ("ignore_mask", "proxy_iou", "score", "mask_source")
                             if k not in a_in]
        assert list(a_out) == keys
        for k in a_in:
            if k not in ("segmentation", "area"):
                assert a_out[k] == a_in[k]

    # masks: the filled boxes of each image, merged (smaller box wins), as compressed RLE
    gt = COCO(str(out))
    for im in data["images"]:
        ids = [a["id"] for a in data["annotations"]
               if a["image_id"] == im["id"] and a["id"] < 900]
        boxes = np.array([xywh_to_xyxy(by_id[i]["bbox"]) for i in ids])
        raw = np.stack([box_to_mask(b, im["height"], im["width"]) for b in boxes])
        want = merge_smaller_first(raw, boxes)
        for i, m in zip(ids, want):
            ann = gt.anns[i]
            assert isinstance(ann["segmentation"]["counts"], str)
            decoded = rle_to_mask(ann["segmentation"])
            assert np.array_equal(gt.annToMask(ann).astype(bool), decoded)
            assert np.array_equal(decoded, m)
            assert ann["area"] == int(m.sum())
            assert isinstance(ann["ignore_mask"], bool) and 0 <= ann["proxy_iou"] <= 1

    assert summary.instances_labeled == 15 and summary.images_failed == []
    assert summary.skipped == [(900, coco.skipped[0][1])]
    assert summary.skipped_reasons() == {"zero_size_box": 1}
    assert summary.crowd == 1
    assert summary.dropped == sum(a.get("ignore_mask", False) for a in res["annotations"])
    assert summary.dropped == 5  # the 3rd box covers the right end of the 1st in each image
    assert not sidecar_path(out).exists()


def test_missing_image_is_counted_and_others_labeled(tmp_path, caplog):
    path, root, data = _make_dataset(tmp_path, missing_image=True)
    out = tmp_path / "out.json"
    summary = label_dataset(load_coco(path, root), out, "grabcut", LabelConfig(grabcut_iters=1),
                            progress=False)
    assert [i for i, _ in summary.images_failed] == [3]
    assert "im2.png" in summary.images_failed[0][1] and "im2.png" in caplog.text
    assert summary.annotations_failed == 3 and summary.instances_labeled == 12
    res = json.loads(out.read_text())
    for a_in, a_out in zip(data["annotations"], res["annotations"]):
        if a_in["image_id"] == 3 or a_in["id"] >= 900:
            if a_in.get("segmentation"):
                assert a_out == a_in
            else:  # passed through with an empty, marked mask that COCO tools can read
                assert {k: a_out[k] for k in a_in if k != "segmentation"} == {
                    k: v for k, v in a_in.items() if k != "segmentation"}
                assert a_out["boxcaseg_no_mask"] is True
                assert not rle_to_mask(a_out["segmentation"]).any()
        else:
            assert "counts" in a_out["segmentation"]
    assert res["boxcaseg_label"]["summary"]["images_failed"] == 1


@pytest.mark.parametrize("method", ["box", "boxcaseg"])
def test_resume_after_interruption_is_byte_identical(tmp_path, monkeypatch, method):
    path, root, _ = _make_dataset(tmp_path)
    cfg = LabelConfig(chunk_images=1, crop_size=32, jit=False, drop_iou=0.5)
    model = RedModel() if method == "boxcaseg" else None
    clean = tmp_path / "clean.json"
    label_dataset(load_coco(path, root), clean, method, cfg, model=model, progress=False)

    out = tmp_path / "resumed.json"
    real = labeler_mod._label_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted while working on the 3rd image
        return real(*args, **kwargs)

    monkeypatch.setattr(labeler_mod, "_label_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(load_coco(path, root), out, method, cfg, model=model, progress=False)
    monkeypatch.setattr(labeler_mod, "_label_chunk", real)
    side = sidecar_path(out)
    assert not out.exists() and side.exists()
    assert len(side.read_text().splitlines()) == 3  # header + 2 finished images
    with open(side, "a") as f:
        f.write('{"image_id": 3, "err')  # a torn write from the crash

    summary = label_dataset(load_coco(path, root), out, method, cfg, model=model, resume=True,
                            progress=False)
    assert summary.images_resumed == 2 and summary.instances_this_run == 9
    assert out.read_bytes() == clean.read_bytes()
    assert not side.exists()


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    from boxcaseg.errors import ConfigError
    path, root, _ = _make_dataset(tmp_path)
    out = tmp_path / "out.json"
    monkeypatch.setattr(labeler_mod, "_label_chunk",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        label_dataset(load_coco(path, root), out, "box", LabelConfig(), progress=False)
    with pytest.raises(ConfigError, match=r"settings that change the masks \(drop_iou: 0.95 -> 0.5\)"):
        label_dataset(load_coco(path, root), out, "box", LabelConfig(drop_iou=0.5), resume=True,
                      progress=False)


def test_boxcaseg_method_pastes_the_models_masks(tmp_path):
    path, root, data = _make_dataset(tmp_path)
    out = tmp_path / "out.json"
    cfg = LabelConfig(merge=False, drop=False, crop_size=48, jit=False)
    summary = label_dataset(load_coco(path, root), out, "boxcaseg", cfg, model=RedModel(),
                            progress=False)
    assert summary.instances_labeled == 15
    res = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    for im in data["images"]:
        img = np.asarray(Image.open(root / im["file_name"]).convert("RGB"))
        red = img[..., 0] > 127
        for a in data["annotations"]:
            if a["image_id"] != im["id"] or a["id"] >= 900:
                continue
            m = rle_to_mask(res[a["id"]]["segmentation"])
            inside = box_to_mask(xywh_to_xyxy(a["bbox"]), im["height"], im["width"])
            assert not (m & ~inside).any()
            want = red & inside
            assert (m & want).sum() / max((m | want).sum(), 1) > 0.85
            # drop off: only empty masks are ignored
            assert res[a["id"]]["ignore_mask"] == (not m.any())


def test_cli_runs(tmp_path, capsys):
    path, root, _ = _make_dataset(tmp_path)
    out = tmp_path / "cli.json"
    rc = cli_main(["label", "--method", "box", "--images", str(root), "--boxes", str(path),
                   "--out", str(out), "--no-progress", "drop_iou=0.5", "merge=false"])
    assert rc == 0 and out.exists()
    res = json.loads(out.read_text())
    assert res["boxcaseg_label"]["config"]["drop_iou"] == 0.5
    assert res["boxcaseg_label"]["config"]["merge"] is False
    assert "instances labeled" in capsys.readouterr().out
    # boxcaseg without a checkpoint: a clean error, no output
    rc = cli_main(["label", "--method", "boxcaseg", "--images", str(root), "--boxes", str(path),
                   "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "--checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    rc = cli_main(["label", "--method", "box", "--images", str(root), "--boxes", str(path),
                   "--out", str(out), "crop_size=3"])
    assert rc == 2


def test_fused_inference_graph_equals_predict_proba():
    from boxcaseg.labeling.fused import FusedProba
    from boxcaseg.model import ModelConfig, build_model
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none",
                                    head_channels=16, transfer_hidden=8)).eval()
    for mod in model.modules():  # non-trivial BN statistics, so the folding is exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for alpha in (None, 0.3):
            want = model.predict_proba(x, out_size=None, alpha=alpha)
            got = FusedProba(model, alpha).eval()(x)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5)


def test_summary_counts_clipped_and_skipped_boxes(tmp_path):
    (tmp_path / "im").mkdir()
    Image.fromarray(_red_image(20, 30)[0]).save(tmp_path / "im" / "a.png")
    boxes = {"images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
             "categories": [{"id": 1, "name": "x"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [25, 15, 10, 10]},
                             {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 0, 5]},
                             {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8]}]}
    (tmp_path / "b.json").write_text(json.dumps(boxes))
    s = label_dataset(load_coco(tmp_path / "b.json", tmp_path / "im"), tmp_path / "o.json", "box",
                      progress=False)
    assert (s.clipped, len(s.skipped), s.instances_labeled) == (1, 1, 2)
    assert "boxes clipped to their image: 1" in s.format()


# ------------------------------------------------------------------ crop default, threshold
def test_label_crop_defaults_to_the_checkpoints_training_crop(tmp_path):
    from boxcaseg.labeling.predictor import get_predictor

    model = RedModel()
    model.train_crop_size = 48  # what load_boxcaseg sets from the checkpoint's train_config
    assert get_predictor(model, LabelConfig(jit=False)).cfg.crop_size == 48
    # an explicit crop_size always wins
    assert get_predictor(model, LabelConfig(crop_size=32, jit=False)).cfg.crop_size == 32
    # a model that does not say how it was trained gets the paper's 320
    assert get_predictor(RedModel(), LabelConfig(jit=False)).cfg.crop_size == 320


def test_labeled_file_records_the_crop_actually_used(tmp_path):
    img, _ = _red_image(40, 48)
    Image.fromarray(img).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                             "iscrowd": 0, "area": 400}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "b.json").write_text(json.dumps(coco))
    model = RedModel()
    model.train_crop_size = 24
    label_dataset(load_coco(tmp_path / "b.json", tmp_path), tmp_path / "out.json", "boxcaseg",
                  LabelConfig(jit=False), model=model, progress=False)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["boxcaseg_label"]["config"]["crop_size"] == 24


def test_minmax_threshold_mode_rescales_each_crop():
    from boxcaseg.labeling.predictor import minmax_normalize
    from reference_impl import paste_probs

    # a low-contrast map: 0.2 background, 0.4 object (never above the fixed 0.5)
    probs = torch.full((2, 1, 8, 8), 0.2)
    probs[0, 0, 2:6, 2:6] = 0.4
    probs[1] = 0.9  # flat and confident: left as it is, not turned into 0/1 noise
    boxes = np.array([[0, 0, 8, 8], [8, 0, 16, 8]], dtype=float)
    fixed = paste_probs(probs, boxes, boxes, 8, 16, 0.5, "fixed")
    mm = paste_probs(probs, boxes, boxes, 8, 16, 0.5, "minmax")
    assert not fixed[0].any()
    assert mm[0].sum() == 16 and mm[0, 2:6, 2:6].all()
    assert mm[1][:, 8:].all() and fixed[1][:, 8:].all()
    n = minmax_normalize(probs)
    assert float(n[0].min()) == 0.0 and float(n[0].max()) == 1.0
    assert torch.equal(n[1], probs[1])
    with pytest.raises(Exception, match="threshold_mode"):
        LabelConfig(threshold_mode="otsu")
