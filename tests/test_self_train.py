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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from boxcaseg.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=1, n_salient=4, n_train=4,
                          n_val=1, image_size=96, salient_size=64, progress=False)


def _train_argv(demo, out, *extra):
    return ["train", "--out", str(out), "model.backbone=resnet18", "model.pretrained=none",
            f"salient_root={demo['salient']}", f"boxes_json={demo['train']}",
            f"images_root={demo['images']}", "batch_size=4", "box_per_batch=2",
            "crop_size=32", "salient_resize=36", "max_steps=3", "lr=0.01", "num_workers=0",
            "checkpoint_every=100", "device=cpu", "seed=0", *extra]


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


@pytest.mark.parametrize("bad", [{"self_train_rounds": -1},
                                 {"self_train_refine": "crf"},
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
