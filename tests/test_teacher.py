"""A labels file as a teacher (data/teacher.py): which masks train the pixel heads, their
score weights in the pixel loss, `boxcaseg train teacher_labels=...` on the demo data, SAM's
labels and BoxCaseg's own (self-training) through the same path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boxcaseg.cli import main
from boxcaseg.data.coco import load_coco
from boxcaseg.data.gt_masks import box_crop_with_mask
from boxcaseg.data.teacher import teacher_masks
from boxcaseg.data.train_sets import BoxCropDataset
from boxcaseg.errors import DataError
from boxcaseg.losses import boxcaseg_loss, pixel_loss
from boxcaseg.structures import segmentation_to_mask


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from boxcaseg.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=1, n_salient=4, n_train=4,
                          n_val=1, image_size=96, salient_size=64, progress=False)


@pytest.fixture(scope="module")
def box_labels(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "box.json"
    assert main(["label", "--method", "box", "--images", str(demo["images"]), "--boxes",
                 str(demo["train"]), "--out", str(out), "--no-progress"]) == 0
    return out


def _edited(box_labels, path, n_ignore=3, n_low=2):
    """The box labels with ``n_ignore`` more masks ignored and ``n_low`` scored 0.1; the
    others 0.55, 0.6, ... Returns (path, ids used at teacher_min_score=0.2, their scores)."""
    data = json.loads(box_labels.read_text())
    kept = [a for a in data["annotations"] if not a["ignore_mask"]]
    assert len(kept) > n_ignore + n_low + 2
    used = {}
    for i, a in enumerate(kept):
        if i < n_ignore:
            a["ignore_mask"] = True
            a["score"] = 0.99  # a high score does not bring an ignored mask back
        elif i < n_ignore + n_low:
            a["score"] = 0.1
        else:
            a["score"] = round(0.55 + 0.05 * (i % 8), 6)
            used[a["id"]] = a["score"]
    path.write_text(json.dumps(data))
    return path, used, len(data["annotations"]) - len(kept) + n_ignore


def test_which_teacher_masks_are_used(demo, box_labels, tmp_path):
    path, used, ignored = _edited(box_labels, tmp_path / "t.json")
    anns = json.loads(demo["train"].read_text())["annotations"]
    masks, summary = teacher_masks(path, anns, min_score=0.2)
    assert set(masks) == set(used) and summary.used == len(used)
    assert summary.ignored == ignored and summary.below_min_score == 2
    assert summary.by_source == {"box": len(used)}
    assert {k: m.weight for k, m in masks.items()} == used
    uniform, _ = teacher_masks(path, anns, min_score=0.2, weight="uniform")
    assert {m.weight for m in uniform.values()} == {1.0}
    everything, s = teacher_masks(path, anns)  # no min score: the low ones too
    assert len(everything) == len(used) + 2 and s.ignored == ignored
    # a box with a GT mask keeps it
    gt_id = next(iter(used))
    masks, s = teacher_masks(path, anns, gt_ids={gt_id}, min_score=0.2)
    assert gt_id not in masks and s.gt_kept == 1
    # the results and jsonl formats give the same masks
    for fmt in ("results", "jsonl"):
        out = tmp_path / f"t.{fmt}"
        assert main(["label", "--method", "box", "--images", str(demo["images"]), "--boxes",
                     str(demo["train"]), "--out", str(out), "--format", fmt,
                     "--no-progress"]) == 0
        a, _ = teacher_masks(out, anns)
        b, _ = teacher_masks(box_labels, anns)
        assert a == b and len(a) > 0


def test_a_labels_file_of_other_boxes_is_refused(demo, box_labels, tmp_path):
    anns = json.loads(demo["train"].read_text())["annotations"]
    data = json.loads(box_labels.read_text())
    data["annotations"][0]["image_id"] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation 1 is on image 2 .* same boxes_json"):
        teacher_masks(bad, anns)
    with pytest.raises(DataError, match="none of its annotation ids"):
        teacher_masks(box_labels, [{**a, "id": a["id"] + 1000} for a in anns])


def test_teacher_boxes_become_pixel_supervised_samples_like_gt_boxes(demo, box_labels,
                                                                     tmp_path):
    path, used, _ = _edited(box_labels, tmp_path / "t.json")
    coco = load_coco(demo["train"], demo["images"])
    masks, _ = teacher_masks(path, coco.raw["annotations"], min_score=0.2)
    ds = BoxCropDataset(coco, crop_size=32, teacher=masks)
    plain = BoxCropDataset(coco, crop_size=32)
    assert ds.pixel_supervised() == len(used)
    from boxcaseg.io import read_image_rgb

    for i, (im, a) in enumerate(ds.items):
        s, s0 = ds.get(i, seed=11), plain.get(i, seed=11)
        assert torch.equal(s["image"], s0["image"]) and torch.equal(s["box"], s0["box"])
        assert bool(s["is_salient"]) is (a.id in used)
        assert float(s["weight"]) == pytest.approx(used.get(a.id, 1.0))
        if a.id in used:  # the GT-mask crop path, with the teacher's mask
            full = segmentation_to_mask(masks[a.id].segmentation, im.height, im.width)
            _, _, want = box_crop_with_mask(read_image_rgb(im.path), full, a.box, 32,
                                            np.random.default_rng(11))
            assert np.array_equal(s["mask"][0].numpy() > 0.5, want)
        else:  # ignored, low-score: box supervision only
            assert not s["mask"].any() and float(s["weight"]) == 1.0


def test_pixel_loss_weights():
    g = torch.Generator().manual_seed(0)
    a, t = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    m = torch.rand(5, 1, 8, 8, generator=g) > 0.5
    for alpha in (0.0, 0.7, 1.0):
        per = torch.stack([pixel_loss(a[i:i + 1], t[i:i + 1], m[i:i + 1], alpha)
                           for i in range(5)])
        w = torch.tensor([1.0, 0.5, 0.0, 0.25, 1.0])
        got = pixel_loss(a, t, m, alpha, w)
        assert torch.allclose(got, (per * w).sum() / 5, atol=1e-6)
    # through boxcaseg_loss: weights of 1 (GT, salient) leave the loss bit for bit unchanged
    outputs = {"weak": torch.randn(5, 1, 8, 8, generator=g), "salient": a, "transferred": t}
    batch = {"is_salient": torch.tensor([True, True, False, True, True]),
             "box": torch.tensor([[1.0, 1.0, 6.0, 6.0]] * 5), "mask": m.float()}

    class Cfg:
        alpha, smooth_weight = 0.7, 0.05

    base = boxcaseg_loss(outputs, batch, Cfg)
    ones = boxcaseg_loss(outputs, {**batch, "weight": torch.ones(5)}, Cfg)
    assert all(torch.equal(base[k], ones[k]) for k in base)
    # only the pixel-supervised rows' weights count (row 2 is a box-only sample)
    w = torch.tensor([0.5, 1.0, 0.3, 0.0, 1.0])
    weighted = boxcaseg_loss(outputs, {**batch, "weight": w}, Cfg)
    sal = batch["is_salient"]
    want = pixel_loss(a[sal], t[sal], m[sal], 0.7, w[sal])
    assert torch.equal(weighted["pixel"], want) and not torch.equal(want, base["pixel"])
    assert torch.equal(weighted["mil_weak_box"], base["mil_weak_box"])


# ----------------------------------------------------------------------- boxcaseg train


def _train_argv(demo, out, *extra):
    return ["train", "--out", str(out), "model.backbone=resnet18", "model.pretrained=none",
            f"salient_root={demo['salient']}", f"boxes_json={demo['train']}",
            f"images_root={demo['images']}", "batch_size=4", "box_per_batch=2",
            "crop_size=32", "salient_resize=36", "max_steps=6", "lr=0.01", "num_workers=0",
            "checkpoint_every=100", "device=cpu", "seed=0", *extra]


@pytest.fixture
def recorder(monkeypatch):
    """Records each step's box dataset, is_salient flags, weights and pixel terms (with and
    without the weights)."""
    import boxcaseg.engine.trainer as tr

    rec = {"steps": [], "box_ds": []}
    build, compute = tr.build_datasets, tr.compute_losses

    def build_datasets(cfg):
        box_ds, sal_ds = build(cfg)
        rec["box_ds"].append(box_ds)
        return box_ds, sal_ds

    def compute_losses(outputs, batch, cfg):
        losses = compute(outputs, batch, cfg)
        plain = compute(outputs, {k: v for k, v in batch.items() if k != "weight"}, cfg)
        rec["steps"].append({"is_salient": batch["is_salient"].clone(),
                             "weight": batch["weight"].clone(),
                             "pixel": float(losses["pixel"].detach()),
                             "pixel_unweighted": float(plain["pixel"].detach()),
                             "terms": {k: float(v.detach()) for k, v in losses.items()}})
        return losses

    monkeypatch.setattr(tr, "build_datasets", build_datasets)
    monkeypatch.setattr(tr, "compute_losses", compute_losses)
    return rec


@pytest.mark.slow  # trains
def test_train_with_a_teacher_weights_its_masks_by_score(demo, box_labels, tmp_path,
                                                         recorder):
    path, used, _ = _edited(box_labels, tmp_path / "t.json")
    assert main(_train_argv(demo, tmp_path / "run", f"teacher_labels={path}",
                            "teacher_min_score=0.2")) == 0
    (box_ds,) = recorder["box_ds"]
    assert box_ds.pixel_supervised() == len(used) and set(box_ds.teacher) == set(used)
    steps = recorder["steps"]
    assert len(steps) == 6
    salient_rows = sum(int(s["is_salient"].sum()) for s in steps)
    assert salient_rows > 6 * 2  # the salient crops plus some teacher boxes
    weights = torch.cat([s["weight"][s["is_salient"]] for s in steps])
    assert set(weights.tolist()) - {1.0} <= {float(np.float32(v)) for v in used.values()}
    assert (torch.cat([s["weight"][~s["is_salient"]] for s in steps]) == 1).all()
    weighted = [bool((s["weight"] != 1).any()) for s in steps]
    assert any(weighted)
    for s, w in zip(steps, weighted):  # weights < 1 change the pixel term, ones do not
        assert (s["pixel"] != s["pixel_unweighted"]) is w
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert f"teacher_labels: {path}" in cfg and "teacher_weight: score" in cfg


@pytest.mark.slow  # trains
def test_ignored_teacher_masks_are_never_used(demo, box_labels, tmp_path, recorder):
    """A labels file whose masks are all ignore_mask: the run is the teacher-less run."""
    data = json.loads(box_labels.read_text())
    for a in data["annotations"]:
        a["ignore_mask"] = True
    path = tmp_path / "ignored.json"
    path.write_text(json.dumps(data))
    assert main(_train_argv(demo, tmp_path / "a", f"teacher_labels={path}",
                            "teacher_weight=uniform")) == 0
    assert main(_train_argv(demo, tmp_path / "b")) == 0
    with_t, without = recorder["steps"][:6], recorder["steps"][6:]
    assert recorder["box_ds"][0].pixel_supervised() == 0
    assert [s["terms"] for s in with_t] == [s["terms"] for s in without]
    assert all(int(s["is_salient"].sum()) == 2 for s in with_t)  # the salient crops only
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_teacher(demo, box_labels, tmp_path, capsys):
    path, _, _ = _edited(box_labels, tmp_path / "t.json")
    argv = _train_argv(demo, tmp_path / "run", f"teacher_labels={path}", "max_steps=2")
    assert main(argv) == 0
    path.write_text(path.read_text().replace('"score": 0.1', '"score": 0.2'))
    (tmp_path / "run" / "final.pt").unlink()
    assert main([*argv, "--resume"]) != 0
    assert "teacher_labels changed (content hash differs)" in capsys.readouterr().err


@pytest.mark.slow  # trains
def test_self_training_and_sam_labels_go_through_the_same_path(demo, box_labels, tmp_path):
    """BoxCaseg's own masks (a labels file of --method boxcaseg) and SAM's teach alike."""
    assert main(_train_argv(demo, tmp_path / "r0", "max_steps=2")) == 0
    own = tmp_path / "own.json"
    assert main(["label", "--method", "boxcaseg", "--checkpoint",
                 str(tmp_path / "r0" / "final.pt"), "--images", str(demo["images"]),
                 "--boxes", str(demo["train"]), "--out", str(own), "--no-progress",
                 "drop=false"]) == 0
    anns = json.loads(demo["train"].read_text())["annotations"]
    labels = json.loads(own.read_text())["annotations"]
    masks, summary = teacher_masks(own, anns)
    assert summary.by_source == {"boxcaseg": len(masks)}
    assert len(masks) == sum(not a["ignore_mask"] for a in labels) > 0
    assert main(_train_argv(demo, tmp_path / "r1", f"teacher_labels={own}",
                            "max_steps=2")) == 0

    pytest.importorskip("segment_anything")
    from test_sam import tiny_sam

    import segment_anything as sa
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), ckpt)
    sam_labels = tmp_path / "sam.json"
    registry = dict(sa.sam_model_registry)
    try:
        sa.sam_model_registry["vit_b"] = lambda checkpoint=None: tiny_sam()
        assert main(["label", "--method", "sam", "--sam-checkpoint", str(ckpt),
                     "--images", str(demo["images"]), "--boxes", str(demo["train"]),
                     "--out", str(sam_labels), "--no-progress", "drop=false"]) == 0
    finally:
        sa.sam_model_registry.clear()
        sa.sam_model_registry.update(registry)
    masks, summary = teacher_masks(sam_labels, anns)
    labels = json.loads(sam_labels.read_text())["annotations"]
    assert summary.by_source == {"sam": len(masks)}
    assert {k: m.weight for k, m in masks.items()} == {
        a["id"]: a["score"] for a in labels if not a["ignore_mask"]}
