"""Self-training rounds (``self_train_rounds``): the one ``boxcaseg train`` command is exactly
train -> ``boxcaseg label`` -> train with those labels as the teacher, and it resumes."""

from __future__ import annotations

import json

import pytest
import torch

from boxcaseg.cli import main
from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.self_train import round_configs
from boxcaseg.errors import ConfigError
from test_teacher import _train_argv as _teacher_argv
from test_teacher import demo  # noqa: F401 (the same tiny demo set, a module fixture)


def _train_argv(demo, out, *extra):
    return _teacher_argv(demo, out, "max_steps=3", *extra)


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_round_configs_chain_the_teachers(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), self_train_rounds=2, teacher_labels="sam.json")
    r = round_configs(cfg)
    assert [c.out_dir for c in r] == [str(tmp_path / "run" / "round0"),
                                      str(tmp_path / "run" / "round1"), str(tmp_path / "run")]
    assert [c.teacher_labels for c in r] == [
        "sam.json", str(tmp_path / "run" / "round0" / "teacher.json"),
        str(tmp_path / "run" / "round1" / "teacher.json")]
    assert all(c.self_train_rounds == 0 for c in r)


def test_previous_init_starts_each_round_from_the_last_weights(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), self_train_rounds=2,
                      self_train_init="previous", init_weights="start.pt")
    assert [c.init_weights for c in round_configs(cfg)] == [
        "start.pt", str(tmp_path / "run" / "round0" / "final.pt"),
        str(tmp_path / "run" / "round1" / "final.pt")]
    scratch = TrainConfig(out_dir=str(tmp_path / "run"), self_train_rounds=2)
    assert [c.init_weights for c in round_configs(scratch)] == ["", "", ""]


def _params(path):
    from boxcaseg.model import build_model
    from boxcaseg.model.config import ModelConfig

    ck = torch.load(path, weights_only=False)
    names = {n for n, _ in build_model(ModelConfig(**{
        **ck["model_config"], "heads": tuple(ck["model_config"]["heads"]),
        "pretrained": "none"})).named_parameters()}
    return {k: v for k, v in ck["model"].items() if k in names}


def test_init_weights_start_the_training_from_a_checkpoint(demo, tmp_path):
    assert main(_train_argv(demo, tmp_path / "a")) == 0
    start = _params(tmp_path / "a" / "final.pt")
    frozen = ("lr=0", "weight_decay=0", "optimizer=adamw")  # parameters cannot move
    assert main(_train_argv(demo, tmp_path / "b", *frozen,
                            f"init_weights={tmp_path / 'a' / 'final.pt'}")) == 0
    assert _same(_params(tmp_path / "b" / "final.pt"), start)
    assert main(_train_argv(demo, tmp_path / "c", *frozen)) == 0  # from scratch they differ
    assert not _same(_params(tmp_path / "c" / "final.pt"), start)


def test_init_weights_of_another_model_are_named(demo, tmp_path, capsys):
    assert main(_train_argv(demo, tmp_path / "a")) == 0
    assert main(_train_argv(demo, tmp_path / "b", "model.heads=[weak,salient]",
                            f"init_weights={tmp_path / 'a' / 'final.pt'}")) != 0
    err = capsys.readouterr().err
    assert "init_weights" in err and "heads" in err
    assert not (tmp_path / "b" / "final.pt").exists()


@pytest.mark.parametrize("bad", [{"self_train_rounds": -1},
                                 {"self_train_refine": "crf"},
                                 {"self_train_init": "imagenet"},
                                 {"self_train_rounds": 1, "box_per_batch": 0}])
def test_bad_self_training_settings_are_named(bad):
    with pytest.raises(ConfigError, match="self_train"):
        TrainConfig(**bad).validate()


@pytest.mark.slow  # trains 4 tiny models
def test_a_round_is_train_label_train(demo, tmp_path):
    run = tmp_path / "self"
    assert main(_train_argv(demo, run, "self_train_rounds=1", "self_train_refine=none",
                            )) == 0
    teacher = run / "round0" / "teacher.json"
    labels = json.loads(teacher.read_text())
    assert len(labels["annotations"]) == len(json.loads(demo["train"].read_text())["annotations"])
    assert {a["mask_source"] for a in labels["annotations"]} == {"boxcaseg"}
    assert any(not a["ignore_mask"] for a in labels["annotations"])  # the teacher teaches

    # the same by hand: train, label with the CLI, train with that teacher
    assert main(_train_argv(demo, tmp_path / "r0")) == 0
    assert _same(_weights(run / "round0" / "final.pt"), _weights(tmp_path / "r0" / "final.pt"))
    manual = tmp_path / "manual.json"
    assert main(["label", "--method", "boxcaseg", "--checkpoint",
                 str(tmp_path / "r0" / "final.pt"), "--images", str(demo["images"]),
                 "--boxes", str(demo["train"]), "--out", str(manual), "--no-progress",
                 "refine=none", "device=cpu"]) == 0
    assert json.loads(manual.read_text())["annotations"] == labels["annotations"]
    assert main(_train_argv(demo, tmp_path / "r1", f"teacher_labels={teacher}",
                            )) == 0
    assert _same(_weights(run / "final.pt"), _weights(tmp_path / "r1" / "final.pt"))
    cfg = (run / "config.yaml").read_text()
    assert f"teacher_labels: {teacher}" in cfg and "self_train_rounds: 0" in cfg

    # interrupted before the last round: --resume keeps round 0 and its labels
    final = _weights(run / "final.pt")
    stamp = (run / "round0" / "final.pt").stat().st_mtime_ns, teacher.stat().st_mtime_ns
    (run / "final.pt").unlink()
    (run / "last.pt").unlink()
    assert main(_train_argv(demo, run, "self_train_rounds=1", "self_train_refine=none",
                            "--resume")) == 0
    assert ((run / "round0" / "final.pt").stat().st_mtime_ns, teacher.stat().st_mtime_ns) == stamp
    assert _same(_weights(run / "final.pt"), final)
    # without --resume an existing round is never overwritten
    assert main(_train_argv(demo, run, "self_train_rounds=1")) != 0


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, result_dir: str) -> None:
    import os
    from pathlib import Path

    from boxcaseg.config import from_dict
    from boxcaseg.engine.trainer import train
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    final = train(from_dict(TrainConfig, cfg_dict), progress=False)
    Path(result_dir, f"rank{rank}.txt").write_text(str(final))


@pytest.mark.slow  # two gloo processes train twice and label once
def test_a_round_under_two_ddp_processes(demo, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from boxcaseg.config import to_dict
    from boxcaseg.model import ModelConfig

    cfg = TrainConfig(model=ModelConfig(backbone="resnet18", pretrained="none"),
                      salient_root=str(demo["salient"]), boxes_json=str(demo["train"]),
                      images_root=str(demo["images"]), batch_size=2, box_per_batch=1,
                      crop_size=32, salient_resize=36, max_steps=2, num_workers=0,
                      device="cpu", out_dir=str(tmp_path / "ddp"), self_train_rounds=1,
                      self_train_refine="none")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    final = tmp_path / "ddp" / "final.pt"
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text() == str(final)
    teacher = json.loads((tmp_path / "ddp" / "round0" / "teacher.json").read_text())
    boxes = json.loads(demo["train"].read_text())["annotations"]
    assert sorted(a["id"] for a in teacher["annotations"]) == sorted(a["id"] for a in boxes)
    ck = torch.load(final, weights_only=False)
    assert ck["step"] == 2 and ck["sampler"]["world_size"] == 2
    assert ck["train_config"]["teacher_labels"] == str(tmp_path / "ddp" / "round0" / "teacher.json")
