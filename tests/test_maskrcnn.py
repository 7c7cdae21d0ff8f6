"""Proxy Mask R-CNN: ignore-aware mask loss, dataset, training, checkpoints, prediction."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss

from boxcaseg.cli import main as cli_main
from boxcaseg.config import load_config
from boxcaseg.data.coco import parse_coco
from boxcaseg.engine.checkpoint import load_checkpoint
from boxcaseg.errors import ConfigError, DataError
from boxcaseg.maskrcnn.config import MaskRCNNConfig
from boxcaseg.maskrcnn.dataset import MaskRCNNDataset
from boxcaseg.maskrcnn.model import (IgnoreAwareRoIHeads, build_backbone, build_maskrcnn,
                                     ignore_aware_maskrcnn_loss)
from boxcaseg.maskrcnn.predict import load_maskrcnn, predict_images
from boxcaseg.maskrcnn.train import epoch_batches, lr_factor, train_maskrcnn
from boxcaseg.structures import mask_to_box, mask_to_rle, rle_to_mask, xyxy_to_xywh

SIZE = 96


def tiny_cfg(**kw) -> MaskRCNNConfig:
    base = dict(backbone="efficientnet_lite0_fpn", pretrained="none", min_size=SIZE,
                max_size=SIZE, anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_train=200,
                rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64,
                box_batch_size_per_image=32, box_detections_per_img=20, batch_size=2,
                optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_iters=3,
                warmup_factor=0.2, steps=(1000,), max_iters=4, amp=False, num_workers=0,
                checkpoint_every=2, log_every=1, score_thresh=0.0, device="cpu",
                box_head_dim=256)
    base.update(kw)
    return MaskRCNNConfig(**base)


# --------------------------------------------------------------------------- fixtures

def _object_mask(rng: np.random.Generator, kind: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cx, cy = rng.uniform(30, 66, size=2)
    r = rng.uniform(16, 24)
    if kind == 1:  # disc
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
    return (abs(xx - cx) < r) & (abs(yy - cy) < r * 0.6)  # bar


def write_tiny_dataset(root, n_images: int = 2, seed: int = 0) -> dict:
    """Noise images 96x96 with one big object each (class 1 red disc / class 2 blue bar);
    COCO GT with RLE masks. Returns the dict (also written to root/gt.json)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(90, 160, size=(SIZE, SIZE, 3)).astype(np.uint8)
        kind = 1 + i % 2
        m = _object_mask(rng, kind)
        img[m] = (220, 40, 40) if kind == 1 else (40, 60, 220)
        name = f"{i:03d}.png"
        Image.fromarray(img).save(root / "images" / name)
        images.append({"id": 10 + i, "file_name": name, "width": SIZE, "height": SIZE})
        anns.append({"id": 100 + i, "image_id": 10 + i, "category_id": 7 if kind == 1 else 9,
                     "bbox": xyxy_to_xywh(mask_to_box(m)), "area": float(m.sum()),
                     "iscrowd": 0, "segmentation": mask_to_rle(m)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 7, "name": "disc"}, {"id": 9, "name": "bar"}]}
    (root / "gt.json").write_text(json.dumps(gt))
    return gt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the learning / predict / checkpoint tests."""
    root = tmp_path_factory.mktemp("mrcnn")
    write_tiny_dataset(root, n_images=2)
    torch.manual_seed(0)
    cfg = tiny_cfg(train_json=str(root / "gt.json"), images_root=str(root / "images"),
                   out_dir=str(root / "run"), max_iters=24, checkpoint_every=12,
                   val_json=str(root / "gt.json"), val_images_root=str(root / "images"),
                   hflip_prob=0.5)
    result = train_maskrcnn(cfg, progress=False)
    return root, cfg, result


# --------------------------------------------------------------------------- the loss

def _random_loss_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_cls, m = 3, 14
    gt_masks, gt_labels, props, idxs = [], [], [], []
    for k, r in ((3, 5), (2, 4)):  # (GT instances, positive RoIs) per image
        gt_masks.append((torch.rand(k, 40, 40, generator=g) > 0.5).to(torch.uint8))
        gt_labels.append(torch.randint(1, n_cls, (k,), generator=g))
        xy = torch.rand(r, 2, generator=g) * 20
        props.append(torch.cat([xy, xy + 5 + torch.rand(r, 2, generator=g) * 15], 1))
        idxs.append(torch.randint(0, k, (r,), generator=g))
    idxs[0][:3] = torch.tensor([0, 1, 2])  # every GT of image 0 is matched at least once
    logits = torch.randn(9, n_cls, m, m, generator=g)
    return logits, props, gt_masks, gt_labels, idxs


def test_ignore_flag_removes_exactly_those_rois_from_the_mask_loss():
    logits, props, masks, labels, idxs = _random_loss_inputs()
    valid = [torch.tensor([True, False, True]), torch.tensor([False, True])]
    got = ignore_aware_maskrcnn_loss(logits, props, masks, labels, idxs, valid)

    # reference 1: the mean of the per-RoI stock losses over the kept RoIs (every RoI has
    # M*M pixels, so the pixel mean is the mean of per-RoI means)
    per_roi, keep, row = [], [], 0
    for i in range(2):
        for j in range(props[i].shape[0]):
            per_roi.append(maskrcnn_loss(logits[row:row + 1], [props[i][j:j + 1]], [masks[i]],
                                         [labels[i]], [idxs[i][j:j + 1]]))
            keep.append(bool(valid[i][idxs[i][j]]))
            row += 1
    expected = torch.stack([v for v, k in zip(per_roi, keep) if k]).mean()
    assert 0 < sum(keep) < len(keep)
    torch.testing.assert_close(got, expected)

    # reference 2: a dataset whose ignored instances are gone (GT indices renumbered)
    sub_logits, sub_props, sub_masks, sub_labels, sub_idxs, row = [], [], [], [], [], 0
    for i in range(2):
        kept_gt = torch.nonzero(valid[i]).flatten()
        renum = torch.full((len(valid[i]),), -1, dtype=torch.long)
        renum[kept_gt] = torch.arange(len(kept_gt))
        sel = valid[i][idxs[i]]
        sub_logits.append(logits[row:row + props[i].shape[0]][sel])
        sub_props.append(props[i][sel])
        sub_idxs.append(renum[idxs[i][sel]])
        sub_masks.append(masks[i][kept_gt])
        sub_labels.append(labels[i][kept_gt])
        row += props[i].shape[0]
    torch.testing.assert_close(got, maskrcnn_loss(torch.cat(sub_logits), sub_props, sub_masks,
                                                  sub_labels, sub_idxs))
    # all valid (or no flags) is the stock loss; the flags do change it here
    stock = maskrcnn_loss(logits, props, masks, labels, idxs)
    all_valid = [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    torch.testing.assert_close(ignore_aware_maskrcnn_loss(logits, props, masks, labels, idxs,
                                                          all_valid), stock)
    torch.testing.assert_close(ignore_aware_maskrcnn_loss(logits, props, masks, labels, idxs,
                                                          None), stock)
    assert not torch.isclose(got, stock)


def test_all_ignored_gives_zero_finite_loss_with_a_graph():
    logits, props, masks, labels, idxs = _random_loss_inputs(1)
    logits.requires_grad_(True)
    valid = [torch.zeros(3, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)]
    loss = ignore_aware_maskrcnn_loss(logits, props, masks, labels, idxs, valid)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


# --------------------------------------------------------------------------- the model

def _model_inputs():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = []
    for i in range(2):
        masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
        masks[0, 10:50, 12:60] = 1
        masks[1, 55:90, 40 + i:85] = 1
        targets.append({"boxes": torch.tensor([[12., 10, 60, 50], [40. + i, 55, 85, 90]]),
                        "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def _losses(model, images, targets, valid):
    tg = [dict(t) for t in targets]
    if valid is not None:
        for t, v in zip(tg, valid):
            t["mask_valid"] = torch.tensor(v)
    torch.manual_seed(0)  # the RPN / RoI samplers draw random subsets
    with torch.no_grad():
        return {k: v.detach() for k, v in model(images, tg).items()}


@pytest.mark.slow  # trains
def test_ignore_flags_change_only_the_mask_loss_and_stock_models_are_unaffected():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    ours = build_maskrcnn(cfg, num_classes=2).train()
    assert isinstance(ours.roi_heads, IgnoreAwareRoIHeads)
    images, targets = _model_inputs()
    plain = _losses(ours, images, targets, None)
    some = _losses(ours, images, targets, [[True, False], [False, True]])
    none_valid = _losses(ours, images, targets, [[False, False], [False, False]])
    all_valid = _losses(ours, images, targets, [[True, True], [True, True]])
    for name in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        assert torch.equal(plain[name], some[name]) and torch.equal(plain[name], none_valid[name])
    assert torch.equal(plain["loss_mask"], all_valid["loss_mask"])
    assert plain["loss_mask"] > 0 and some["loss_mask"] > 0
    assert not torch.equal(plain["loss_mask"], some["loss_mask"])
    assert none_valid["loss_mask"].item() == 0.0

    # all-ignored still back-propagates (mask parameters get zero gradients, no NaN)
    tg = [dict(t, mask_valid=torch.zeros(2, dtype=torch.bool)) for t in targets]
    sum(ours(images, tg).values()).backward()
    grad = ours.roi_heads.mask_predictor.mask_fcn_logits.weight.grad
    assert grad is not None and torch.all(grad == 0)

    # a stock torchvision model in the same process keeps the stock loss: it ignores the flag
    assert torchvision.models.detection.roi_heads.maskrcnn_loss is maskrcnn_loss
    assert maskrcnn_loss.__module__ == "torchvision.models.detection.roi_heads"
    stock = MaskRCNN(build_backbone(cfg), num_classes=3, min_size=SIZE, max_size=SIZE).train()
    assert type(stock.roi_heads) is RoIHeads
    stock_none = _losses(stock, images, targets, [[False, False], [False, False]])
    stock_plain = _losses(stock, images, targets, None)
    assert stock_none["loss_mask"] > 0
    assert torch.equal(stock_none["loss_mask"], stock_plain["loss_mask"])


# --------------------------------------------------------------------------- dataset

def test_dataset_flags_skips_and_flip(tmp_path):
    gt = write_tiny_dataset(tmp_path, n_images=3)
    m = rle_to_mask(gt["annotations"][0]["segmentation"])
    poly = [[20, 20, 60, 20, 60, 50, 20, 50]]  # polygons (plain COCO GT) work too
    gt["annotations"] += [
        {"id": 200, "image_id": 10, "category_id": 9, "bbox": [20, 20, 40, 30], "iscrowd": 0,
         "segmentation": poly, "ignore_mask": True},
        {"id": 201, "image_id": 10, "category_id": 9, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": poly},
        {"id": 202, "image_id": 11, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 203, "image_id": 12, "category_id": 7, "bbox": [5, 5, 0, 10], "iscrowd": 0},
    ]
    gt["annotations"] = [a for a in gt["annotations"] if a["id"] != 102]  # image 12: no usable
    coco = parse_coco(gt, "tiny", tmp_path / "images")
    ds = MaskRCNNDataset(coco, train=False)
    assert len(ds) == 2  # image 12 (only a zero-size box left) skipped
    assert ds.report["no_segmentation"] == 1 and ds.report["crowd"] == 1
    assert ds.report["mask_ignored"] == 1 and ds.report["images_without_annotations"] == 1
    assert [c["id"] for c in ds.categories] == [7, 9]
    image, t = ds[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and image.max() <= 1
    assert t["labels"].tolist() == [1, 2] and t["mask_valid"].tolist() == [True, False]
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, SIZE, SIZE)
    assert np.array_equal(t["masks"][0].numpy().astype(bool), m)
    assert t["masks"][1].sum() > 0 and t["boxes"][1].tolist() == [20, 20, 60, 50]

    flipped = MaskRCNNDataset(coco, train=True, hflip_prob=1.0)
    fimage, ft = flipped[0]
    assert torch.equal(fimage, image.flip(-1))
    assert torch.equal(ft["masks"], t["masks"].flip(-1))
    x1, y1, x2, y2 = mask_to_box(ft["masks"][0].numpy().astype(bool))
    assert ft["boxes"][0].tolist() == pytest.approx([x1, y1, x2, y2])


def test_schedule_and_batches():
    cfg = tiny_cfg(lr=1.0, warmup_iters=4, warmup_factor=0.2, steps=(6, 8))
    assert lr_factor(cfg, 0) == pytest.approx(0.2)
    assert lr_factor(cfg, 2) == pytest.approx(0.6)
    assert [lr_factor(cfg, i) for i in (4, 5, 6, 7, 8, 100)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    shards = [epoch_batches(11, 2, 3, seed=5, rank=r, world=2) for r in range(2)]
    flat = [i for s in shards for b in s for i in b]
    assert len(shards[0]) == len(shards[1]) == 2 and len(set(flat)) == len(flat)
    assert epoch_batches(11, 2, 3, 5) == epoch_batches(11, 2, 3, 5) != epoch_batches(11, 2, 4, 5)


# --------------------------------------------------------------------------- training

@pytest.mark.slow
def test_tiny_training_learns(trained):
    _, _, result = trained
    hist = result["loss_history"]
    assert len(hist) == 24 and all(np.isfinite(hist))
    assert np.mean(hist[-4:]) < 0.6 * np.mean(hist[:4])
    assert result["iterations"] == 24
    # it fits its two training images: masks found at IoU 0.5 (AP50 is 1.0 when run alone)
    assert result["metrics"]["segm"]["AP50"] >= 0.5
    assert set(result["metrics"]["voc"]) == {"AP25", "AP50", "AP70", "AP75"}


@pytest.mark.slow
def test_predict_writes_results_and_pngs(trained, tmp_path):
    root, _, result = trained
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = [root / "images" / "000.png", root / "images" / "001.png", tmp_path / "broken.png",
             tmp_path / "missing.jpg"]
    res = predict_images(result["checkpoint"], paths, tmp_path / "out", score_thresh=0.0,
                         image_ids=[10, 11, 12, 13], device="cpu", progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == res and len(res) > 0
    assert {r["image_id"] for r in res} <= {10, 11}
    assert {r["category_id"] for r in res} <= {7, 9}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["000.png", "001.png"]
    png = np.asarray(Image.open(tmp_path / "out" / "000.png"))
    assert png.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(png, np.asarray(Image.open(root / "images" / "000.png")))
    coco = COCO(str(root / "gt.json"))
    dt = coco.loadRes(str(tmp_path / "out" / "results.json"))
    assert len(dt.getAnnIds()) == len(res)

    # a directory expands to its images; without ids they are numbered in order
    res_dir = predict_images(result["checkpoint"], [root / "images"], tmp_path / "out2",
                             score_thresh=0.0, device="cpu", progress=False, draw=False)
    assert {r["image_id"] for r in res_dir} <= {0, 1}
    assert len(res_dir) == len(res)


@pytest.mark.slow
def test_checkpoint_round_trip(trained):
    root, cfg, result = trained
    final, last = load_checkpoint(result["checkpoint"]), load_checkpoint(result["last"])
    assert final["iteration"] == last["iteration"] == 24
    assert final["categories"] == [{"id": 7, "name": "disc"}, {"id": 9, "name": "bar"}]
    assert {"optimizer", "scheduler", "rng"} <= set(last) and "optimizer" not in final
    for k, v in final["model"].items():
        assert torch.equal(v, last["model"][k]), k
    model, _ = load_maskrcnn(result["checkpoint"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, final["model"][k]), k
    x = [torch.from_numpy(np.array(Image.open(root / "images" / "000.png"))).permute(2, 0, 1)
         .float() / 255]
    model2, _ = load_maskrcnn(result["last"])
    with torch.no_grad():
        a, b = model(x)[0], model2(x)[0]
    for k in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[k], b[k])
    with pytest.raises(DataError):
        load_maskrcnn(root / "gt.json")


@pytest.mark.slow
def test_resume_continues_the_iteration_count_and_matches_a_straight_run(tmp_path):
    write_tiny_dataset(tmp_path, n_images=3)
    common = dict(train_json=str(tmp_path / "gt.json"), images_root=str(tmp_path / "images"),
                  checkpoint_every=2)
    straight = train_maskrcnn(tiny_cfg(**common, out_dir=str(tmp_path / "a"), max_iters=4),
                              progress=False)
    first = train_maskrcnn(tiny_cfg(**common, out_dir=str(tmp_path / "b"), max_iters=2),
                           progress=False)
    assert first["iterations"] == 2 and load_checkpoint(first["last"])["iteration"] == 2
    resumed = train_maskrcnn(tiny_cfg(**common, out_dir=str(tmp_path / "b"), max_iters=4),
                             resume=True, progress=False)
    assert resumed["iterations"] == 4 and len(resumed["loss_history"]) == 2
    assert resumed["loss_history"] == pytest.approx(straight["loss_history"][2:], rel=1e-4)
    a, b = load_checkpoint(straight["last"]), load_checkpoint(resumed["last"])
    assert b["iteration"] == 4 and b["scheduler"]["last_epoch"] == 4
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=1e-4, atol=1e-5)
    # resuming a finished run trains nothing more
    again = train_maskrcnn(tiny_cfg(**common, out_dir=str(tmp_path / "b"), max_iters=4),
                           resume=True, progress=False)
    assert again["iterations"] == 4 and again["loss_history"] == []
    shutil.rmtree(tmp_path / "a")


@pytest.mark.slow
def test_predict_command_with_gt_ids(trained, tmp_path):
    root, _, result = trained
    rc = cli_main(["predict", "--checkpoint", result["checkpoint"], "--gt", str(root / "gt.json"),
                   "--images-root", str(root / "images"), "--out", str(tmp_path / "p"),
                   "--score-thresh", "0.0", "--device", "cpu", "--no-draw"])
    assert rc == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res and {r["image_id"] for r in res} <= {10, 11}
    assert not list((tmp_path / "p").glob("*.png"))
    assert cli_main(["predict", "--checkpoint", str(root / "gt.json"), str(root / "images"),
                     "--out", str(tmp_path / "q")]) == 2  # not a checkpoint: clean error, bad input


def test_config_validation_and_from_scratch_resnet(tmp_path):
    with pytest.raises(ConfigError, match="anchor_sizes"):
        tiny_cfg(anchor_sizes=(8, 16, 32, 64)).validate()
    with pytest.raises(ConfigError, match="steps"):
        tiny_cfg(steps=(10, 5)).validate()
    with pytest.raises(ConfigError, match="train_json"):
        train_maskrcnn(tiny_cfg())
    (tmp_path / "c.yaml").write_text("min_size: [80, 96]\nmax_size: 128\n")
    cfg = load_config(MaskRCNNConfig, tmp_path / "c.yaml")
    assert cfg.min_size_tuple() == (80, 96)
    # from scratch: plain BatchNorm and every layer trainable (FrozenBN would freeze noise)
    body = build_backbone(MaskRCNNConfig(backbone="resnet50_fpn", pretrained="none")).body
    assert isinstance(body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in body.parameters())


# --------------------------------------------------------------------------- divergence

def _corrupt_after_update(monkeypatch, at: int) -> None:
    """The ``at``-th optimizer step leaves a NaN in one weight (the loss before it is fine)."""
    import boxcaseg.maskrcnn.train as train_mod
    orig = train_mod.build_optimizer

    def build(model, cfg):
        opt, sched = orig(model, cfg)
        calls = {"n": 0}

        def corrupt(*_):
            calls["n"] += 1
            if calls["n"] == at:
                weight = next(p for p in model.parameters() if p.requires_grad)
                with torch.no_grad():
                    weight.view(-1)[0] = float("nan")

        opt.register_step_post_hook(corrupt)
        return opt, sched

    monkeypatch.setattr(train_mod, "build_optimizer", build)


@pytest.mark.slow
def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    from boxcaseg.errors import TrainingDivergedError
    write_tiny_dataset(tmp_path, n_images=2)
    _corrupt_after_update(monkeypatch, at=4)
    cfg = tiny_cfg(train_json=str(tmp_path / "gt.json"), images_root=str(tmp_path / "images"),
                   out_dir=str(tmp_path / "run"), max_iters=4, checkpoint_every=2)
    with pytest.raises(TrainingDivergedError,
                       match=r"diverged at iteration 4: weights contain NaN/inf.*no checkpoint"):
        train_maskrcnn(cfg, progress=False)
    assert not (tmp_path / "run" / "final.pt").exists()
    last = load_checkpoint(tmp_path / "run" / "last.pt")  # the last good state stays
    assert last["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_loss_names_the_iteration_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    from boxcaseg.errors import TrainingDivergedError
    import boxcaseg.maskrcnn.train as train_mod
    orig, calls = train_mod.build_maskrcnn, {"n": 0}

    def build(cfg, num_classes):
        model = orig(cfg, num_classes)
        forward = model.forward

        def nan_at_third(images, targets=None):
            losses = forward(images, targets)
            calls["n"] += 1
            if calls["n"] == 3:
                losses = {**losses, "loss_mask": losses["loss_mask"] * float("nan")}
            return losses

        model.forward = nan_at_third
        return model

    monkeypatch.setattr(train_mod, "build_maskrcnn", build)
    write_tiny_dataset(tmp_path, n_images=2)
    cfg = tiny_cfg(train_json=str(tmp_path / "gt.json"), images_root=str(tmp_path / "images"),
                   out_dir=str(tmp_path / "run"), max_iters=4, checkpoint_every=2)
    with pytest.raises(TrainingDivergedError, match=r"diverged at iteration 3: non-finite loss "
                       r"\(.*loss_mask=nan.*lower lr.*last good checkpoint: .*last\.pt"):
        train_maskrcnn(cfg, progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2
    assert not (tmp_path / "run" / "final.pt").exists()
