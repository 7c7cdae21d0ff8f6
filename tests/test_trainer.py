"""Short CPU training runs on tiny data built in tmp_path (whole file well under a minute)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxcaseg.config import from_dict, load_config
from boxcaseg.engine.checkpoint import load_checkpoint
from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.trainer import train
from boxcaseg.errors import ConfigError, TrainingDivergedError


pytestmark = pytest.mark.slow  # every test here trains


def _blob_image(rng, h, w):
    """Noisy background with one bright ellipse; returns (rgb uint8, mask bool)."""
    img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
    ry, rx = rng.integers(h // 6, h // 3), rng.integers(w // 6, w // 3)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img[mask] = rng.integers(150, 256, 3, dtype=np.uint8)
    return img, mask


def make_tiny_data(root: Path, n_salient=8, n_box_images=6, size=48, seed=0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    sal = root / "salient"
    (sal / "images").mkdir(parents=True)
    (sal / "masks").mkdir()
    for i in range(n_salient):
        img, mask = _blob_image(rng, size, size)
        Image.fromarray(img).save(sal / "images" / f"s{i:03d}.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(sal / "masks" / f"s{i:03d}.png")
    box_dir = root / "boxes" / "images"
    box_dir.mkdir(parents=True)
    images, anns = [], []
    for i in range(n_box_images):
        img, mask = _blob_image(rng, size, size + 8)
        Image.fromarray(img).save(box_dir / f"b{i:03d}.png")
        ys, xs = np.nonzero(mask)
        images.append({"id": i + 1, "file_name": f"b{i:03d}.png", "width": size + 8, "height": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                              int(ys.max() - ys.min() + 1)]})
    # a crowd box, which training must leave out
    anns.append({"id": 99, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 10, 10]})
    boxes_json = root / "boxes" / "train.json"
    boxes_json.write_text(json.dumps({"images": images, "annotations": anns,
                                      "categories": [{"id": 1, "name": "thing"}]}))
    return {"salient_root": str(sal), "boxes_json": str(boxes_json), "images_root": str(box_dir)}


TINY_MODEL = {"backbone": "resnet18", "pretrained": "none"}


def tiny_cfg(data: dict[str, str], out: Path, **kw) -> TrainConfig:
    base = dict(model=TINY_MODEL, **data, out_dir=str(out), batch_size=4, box_per_batch=2,
                crop_size=32, salient_resize=36, max_steps=6, lr=0.01, num_workers=0,
                checkpoint_every=100, log_every=1, device="cpu", seed=0)
    base.update(kw)
    return _from(base)


def _from(d: dict) -> TrainConfig:
    return from_dict(TrainConfig, d)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data"))


def _state(path):
    return load_checkpoint(path)["model"]


def test_short_run_lowers_the_loss_and_writes_checkpoints(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path / "run", max_steps=30, lr=0.02, log_every=1)
    final = train(cfg)
    assert final == tmp_path / "run" / "final.pt" and final.is_file()
    ck = load_checkpoint(final)
    assert {"model", "model_config", "train_config", "optimizer", "scheduler", "scaler",
            "sampler", "step", "rng"} <= set(ck)
    assert ck["step"] == 30 and ck["model_config"]["backbone"] == "resnet18"
    assert (tmp_path / "run" / "last.pt").is_file()
    assert load_config(TrainConfig, tmp_path / "run" / "config.yaml").max_steps == 30
    # the TensorBoard log holds the loss curve: late losses are clearly below early ones
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    total = [e.value for e in acc.Scalars("loss/total")]
    assert len(total) == 30
    assert np.mean(total[-5:]) < 0.8 * np.mean(total[:5]), total
    # a checkpoint is a loadable model (the key contract with load_boxcaseg)
    from boxcaseg.model import load_boxcaseg
    model, mcfg = load_boxcaseg(final)
    assert mcfg.backbone == "resnet18"
    # an existing run is not silently overwritten
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tiny_data, tmp_path):
    # 7 steps with 2 batches per epoch: the interruption (after 3) falls mid-epoch
    full = train(tiny_cfg(tiny_data, tmp_path / "full", max_steps=7))
    part = tiny_cfg(tiny_data, tmp_path / "part", max_steps=7, checkpoint_every=3)
    # interrupt: train 3 steps (the checkpoint at step 3 carries the 7-step schedule) ...
    import boxcaseg.engine.trainer as trainer_mod
    orig = trainer_mod.train_step
    calls = {"n": 0}

    def stop_after_3(*a, **k):
        if calls["n"] == 4:
            raise KeyboardInterrupt
        calls["n"] += 1
        return orig(*a, **k)

    trainer_mod.train_step = stop_after_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train(part)
    finally:
        trainer_mod.train_step = orig
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 3
    resumed = train(part, resume=True)
    # DataLoader workers change nothing either: augmentation is seeded per sample position
    workers = train(tiny_cfg(tiny_data, tmp_path / "workers", max_steps=7, num_workers=2))
    a, b, c = _state(full), _state(resumed), _state(workers)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a[k], c[k]), k
    # and the runs did move away from the initial weights
    assert any(not torch.equal(a[k], v) for k, v in
               _initial_state(tiny_data, tmp_path).items() if v.is_floating_point())


def _initial_state(tiny_data, tmp_path):
    from boxcaseg.model import build_model
    torch.manual_seed(0)
    return build_model(tiny_cfg(tiny_data, tmp_path / "x").model).state_dict()


def test_nan_loss_raises_naming_the_step_and_writes_no_checkpoint(tiny_data, tmp_path):
    import re
    cfg = tiny_cfg(tiny_data, tmp_path / "nan", max_steps=6, lr=1e30, checkpoint_every=1)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+") as info:
        train(cfg)
    msg = str(info.value)
    bad_step = int(re.search(r"step (\d+)", msg).group(1))
    assert 1 <= bad_step <= 6
    assert "nan" in msg.lower() or "inf" in msg.lower()
    assert not (tmp_path / "nan" / "final.pt").exists()
    last = tmp_path / "nan" / "last.pt"
    if last.exists():  # only states before the failing step, with finite weights
        ck = load_checkpoint(last)
        assert ck["step"] < bad_step
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nan_in_the_loss_terms_is_reported_before_the_update(tiny_data, tmp_path, monkeypatch):
    import boxcaseg.engine.trainer as trainer_mod
    orig = trainer_mod.compute_losses
    calls = {"n": 0}

    def nan_at_third(outputs, batch, cfg):
        calls["n"] += 1
        losses = orig(outputs, batch, cfg)
        if calls["n"] == 3:
            losses = dict(losses)
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(trainer_mod, "compute_losses", nan_at_third)
    cfg = tiny_cfg(tiny_data, tmp_path / "nan3", max_steps=5, checkpoint_every=2)
    with pytest.raises(TrainingDivergedError, match=r"step 3\b.*total=nan"):
        train(cfg)
    # the step-2 checkpoint exists and holds finite weights; nothing later was written
    ck = load_checkpoint(tmp_path / "nan3" / "last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    cfg = _from(cfg_dict)
    final = train(cfg)
    Path(result_dir, f"rank{rank}.txt").write_text(str(final))


def test_two_process_gloo_ddp_run_finishes_and_rank0_writes(tiny_data, tmp_path):
    import torch.multiprocessing as mp
    from boxcaseg.config import to_dict
    cfg = tiny_cfg(tiny_data, tmp_path / "ddp", max_steps=2, batch_size=2, box_per_batch=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2,
             join=True)
    assert (tmp_path / "rank0.txt").read_text() == str(tmp_path / "ddp" / "final.pt")
    assert (tmp_path / "rank1.txt").is_file()
    ck = load_checkpoint(tmp_path / "ddp" / "final.pt")
    assert ck["step"] == 2 and ck["sampler"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ck["model"])


def test_cli_train_with_overrides(tiny_data, tmp_path, capsys):
    import yaml
    from boxcaseg.cli import main
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": TINY_MODEL, **tiny_data, "batch_size": 4,
                                        "box_per_batch": 2, "crop_size": 32,
                                        "salient_resize": 36, "num_workers": 0,
                                        "device": "cpu"}))
    out = tmp_path / "cli_run"
    assert main(["train", "--config", str(cfg_file), "max_steps=2", "lr=0.001",
                 "model.heads=[weak]", "--out", str(out)]) == 0
    assert str(out / "final.pt") in capsys.readouterr().out
    ck = load_checkpoint(out / "final.pt")
    assert ck["train_config"]["lr"] == 0.001 and ck["model_config"]["heads"] == ["weak"]
    assert main(["train", "--config", str(cfg_file), "bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err


def test_adamw_option_is_used_and_learns(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path / "adamw", max_steps=20, lr=3e-3, optimizer="adamw")
    final = train(cfg, progress=False)
    ck = load_checkpoint(final)
    # AdamW keeps two moment buffers per parameter (SGD with momentum keeps one)
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(ck["optimizer"]["state"].values())))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "adamw" / "tb"))
    acc.Reload()
    total = [e.value for e in acc.Scalars("loss/total")]
    assert np.mean(total[-4:]) < 0.8 * np.mean(total[:4]), total
    with pytest.raises(ConfigError, match="optimizer"):
        tiny_cfg(tiny_data, tmp_path / "x", optimizer="rmsprop").validate()
