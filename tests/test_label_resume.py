"""``label --resume`` binds what changes the masks and nothing else (issues 18 and 19)."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from boxcaseg.data.coco import load_coco
from boxcaseg.errors import ConfigError
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job import stream
from boxcaseg.labeling.job.parts import part_path, sidecar_path
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.model import ModelConfig, build_model
from test_labeler import _make_dataset


def _tiny_model(seed=0):
    """A real (untrained) BoxCaseg network with non-trivial BN statistics: convolutions whose
    results could depend on the batch they run in."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none",
                                    head_channels=16, transfer_hidden=8)).eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return model


def _interrupt_after(monkeypatch, chunks):
    real = stream._label_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > chunks:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "_label_chunk", flaky)
    return lambda: monkeypatch.setattr(stream, "_label_chunk", real)


def _progress_images(path):
    recs = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return [r["image_id"] for r in recs if "end" not in r]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
@pytest.mark.parametrize("change", [dict(batch_size=1, chunk_images=2), dict(device="cpu"),
                                    dict(batch_size=7, device="cpu", chunk_images=3)])
def test_resume_with_other_runtime_settings_is_byte_identical(tmp_path, monkeypatch, change,
                                                              precision):
    path, root, _ = _make_dataset(tmp_path)
    model = _tiny_model()
    cfg = LabelConfig(crop_size=32, chunk_images=1, batch_size=4, device="auto",
                      precision=precision, drop_iou=0.3)
    clean = tmp_path / "clean.json"
    label_dataset(load_coco(path, root), clean, "boxcaseg", cfg, model=model, progress=False)

    out = tmp_path / "out.json"
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(load_coco(path, root), out, "boxcaseg", cfg, model=model, progress=False)
    restore()
    assert len(_progress_images(sidecar_path(out))) == 2
    s = label_dataset(load_coco(path, root), out, "boxcaseg",
                      LabelConfig(**{**vars(cfg), **change}), model=model, resume=True,
                      progress=False)
    assert s.images_resumed == 2
    assert out.read_bytes() == clean.read_bytes()


def test_resume_with_another_graph_or_precision_continues(tmp_path, monkeypatch):
    """jit, fuse, precision and memory format change float rounding, not what is computed:
    a resume keeps the finished records and labels the rest with the new settings."""
    path, root, _ = _make_dataset(tmp_path)
    model = _tiny_model()
    cfg = LabelConfig(crop_size=32, chunk_images=1, jit=True, precision="fp32")
    out = tmp_path / "out.json"
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(load_coco(path, root), out, "boxcaseg", cfg, model=model, progress=False)
    restore()
    before = sidecar_path(out).read_text().splitlines()
    s = label_dataset(load_coco(path, root), out, "boxcaseg",
                      LabelConfig(crop_size=32, chunk_images=1, jit=False, fuse=True,
                                  channels_last=False, precision="bf16"),
                      model=model, resume=True, progress=False)
    assert s.images_resumed == 2 and s.instances_this_run == 9
    labels = json.loads(out.read_text())
    kept = {a for line in before[1:] for a, _ in json.loads(line)["anns"]}
    old = {a: f for line in before[1:] for a, f in json.loads(line)["anns"]}
    for a in labels["annotations"]:
        if a["id"] in kept:
            assert a["segmentation"] == old[a["id"]]["segmentation"]
    # the output records the settings the labels were started with
    assert labels["boxcaseg_label"]["config"]["jit"] is True


def test_resume_with_another_model_is_refused(tmp_path, monkeypatch):
    path, root, _ = _make_dataset(tmp_path)
    cfg = LabelConfig(crop_size=32, chunk_images=1, jit=False)
    out = tmp_path / "out.json"
    restore = _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(load_coco(path, root), out, "boxcaseg", cfg, model=_tiny_model(0),
                      progress=False)
    restore()
    with pytest.raises(ConfigError, match="the model: its weights differ"):
        label_dataset(load_coco(path, root), out, "boxcaseg", cfg, model=_tiny_model(1),
                      resume=True, progress=False)


def test_resume_after_a_fix_to_a_later_annotation_keeps_the_finished_images(tmp_path,
                                                                             monkeypatch):
    path, root, data = _make_dataset(tmp_path)
    cfg = LabelConfig(chunk_images=1)
    out = tmp_path / "out.json"
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(load_coco(path, root), out, "box", cfg, progress=False)
    restore()
    done = _progress_images(sidecar_path(out))
    assert done == [1, 2]
    # the user fixes a box of image 4 (not labeled yet) and of image 2 (labeled)
    for a in data["annotations"]:
        if a["image_id"] in (2, 4) and a["id"] % 3 == 0:
            a["bbox"] = [1, 1, 9, 9]
    path.write_text(json.dumps(data))
    clean = tmp_path / "clean.json"
    label_dataset(load_coco(path, root), clean, "box", cfg, progress=False)
    s = label_dataset(load_coco(path, root), out, "box", cfg, resume=True, progress=False)
    assert s.images_resumed == 1  # image 1 kept; image 2 changed: labeled again
    assert out.read_bytes() == clean.read_bytes()


def test_resume_with_another_number_of_shards_continues(tmp_path, monkeypatch):
    path, root, _ = _make_dataset(tmp_path)
    coco = load_coco(path, root)
    clean = tmp_path / "clean.json"
    label_dataset(coco, clean, "box", LabelConfig(chunk_images=1), progress=False)

    # a 2-process run left one finished part and one interrupted progress file
    out = tmp_path / "out.json"
    p0 = tmp_path / "p0.jsonl"
    label_dataset(coco, p0, "box", LabelConfig(chunk_images=1), shard=(0, 2), progress=False)
    shutil.move(p0, part_path(out, 0, 2))
    p1 = tmp_path / "p1.jsonl"
    restore = _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(coco, p1, "box", LabelConfig(chunk_images=1), shard=(1, 2),
                      progress=False)
    restore()
    shutil.move(sidecar_path(p1), sidecar_path(part_path(out, 1, 2)))
    finished = (len(_progress_images(part_path(out, 0, 2)))
                + len(_progress_images(sidecar_path(part_path(out, 1, 2)))))
    assert 1 < finished < 5

    s = label_dataset(coco, out, "box", LabelConfig(chunk_images=1), resume=True,
                      progress=False)
    assert s.images_resumed == finished
    assert out.read_bytes() == clean.read_bytes()
    assert not list(tmp_path.glob("out.json.part-*"))  # the old layout is cleaned up

    # and the other way: one shard of three resumes from a one-process progress file
    one = tmp_path / "one.json"
    restore = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(coco, one, "box", LabelConfig(chunk_images=1), progress=False)
    restore()
    ref = tmp_path / "ref.jsonl"
    label_dataset(coco, ref, "box", LabelConfig(chunk_images=1), shard=(2, 3), progress=False)
    shard = tmp_path / "s.jsonl"
    shutil.copy(sidecar_path(one), sidecar_path(shard))
    s = label_dataset(coco, shard, "box", LabelConfig(chunk_images=1), shard=(2, 3),
                      resume=True, progress=False)
    assert s.images_resumed >= 1
    body = [json.loads(x) for x in shard.read_text().splitlines()[1:]]
    want = [json.loads(x) for x in ref.read_text().splitlines()[1:]]
    assert sorted(body, key=str) == sorted(want, key=str)


def test_progress_records_are_bound_to_their_images_input(tmp_path):
    path, root, _ = _make_dataset(tmp_path)
    part = tmp_path / "p.jsonl"
    label_dataset(load_coco(path, root), part, "box", shard=(0, 1), progress=False)
    recs = [json.loads(x) for x in part.read_text().splitlines()[1:-1]]
    hashes = {r["image_id"]: r["input"] for r in recs}
    assert len(set(hashes.values())) == len(hashes) == 5
    assert all(isinstance(h, str) and len(h) == 16 for h in hashes.values())
    assert np.all([r["anns"] or r["image_id"] for r in recs])


def test_crops_are_made_in_groups_so_memory_is_flat_in_boxes_per_image(monkeypatch):
    """3000 boxes on one image used to become one [3000, 3, S, S] crop tensor (4.4 GB peak);
    now crops are made, run and pasted a group at a time (issue 19)."""
    from boxcaseg.labeling.labeler import BoxLabeler
    from boxcaseg.labeling.predictor import CROPS_IN_FLIGHT, BoxcasegPredictor
    from test_labeler import RedModel, _red_image

    img, _ = _red_image(64, 80)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, size=(500, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 20, size=(500, 2))], axis=1)
    sizes = []
    real = BoxcasegPredictor.predict_crops

    def spy(self, crops):
        sizes.append(crops.shape[0])
        return real(self, crops)

    monkeypatch.setattr(BoxcasegPredictor, "predict_crops", spy)
    cfg = LabelConfig(crop_size=16, jit=False, batch_size=5)
    grouped = BoxLabeler.for_method("boxcaseg", RedModel(), cfg).label(img, boxes)
    group = BoxLabeler.for_method("boxcaseg", RedModel(), cfg).source.predictor.group_size
    assert group % 5 == 0 and group >= CROPS_IN_FLIGHT
    assert max(sizes) == group and sum(sizes) == 500
    assert len(grouped) == 500
    # the raw masks are those of one box at a time
    source = BoxLabeler.for_method("boxcaseg", RedModel(), cfg).source
    (raw,) = source.masks([img], [boxes])
    for k in (0, 123, 499):
        (one,) = source.masks([img], [boxes[k:k + 1]])
        assert np.array_equal(one.masks[0].mask, raw.masks[k].mask)
        assert (one.masks[0].c0, one.masks[0].r0) == (raw.masks[k].c0, raw.masks[k].r0)
