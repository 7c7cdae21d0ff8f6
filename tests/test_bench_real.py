"""bench/real_photos.py: the adopt-or-not rule and the self-training round's per-model teacher."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_photos", REPO / "bench" / "real_photos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(tmp_path: Path, overrides: list[str]) -> argparse.Namespace:
    return argparse.Namespace(config=None, salient=str(tmp_path / "sal"), overrides=overrides,
                              data=str(tmp_path), out=str(tmp_path / "out"))


def test_overrides_name_each_models_own_teacher(bench, tmp_path):
    args = _args(tmp_path, ["teacher_labels=runs/{set}-{seed}.json", "max_steps=7"])
    cfg = bench.train_config(args, tmp_path / "coco-dev", 2, tmp_path / "o")
    assert cfg.teacher_labels == "runs/coco-dev-2.json"
    assert cfg.max_steps == 7 and cfg.seed == 2
    assert cfg.boxes_json == str(tmp_path / "coco-dev" / "boxes.json")


def test_checkpoint_key_follows_the_teachers_content(bench, tmp_path, monkeypatch):
    teacher = tmp_path / "t.json"
    trained = []

    def fake_train(cfg, resume=False, progress=True):  # records where it would train
        trained.append(Path(cfg.out_dir))
        Path(cfg.out_dir).mkdir(parents=True)
        Path(cfg.out_dir, "final.pt").write_text("x")

    import boxcaseg.engine.trainer as trainer
    monkeypatch.setattr(trainer, "train", fake_train)
    args = _args(tmp_path, [f"teacher_labels={teacher}"])
    teacher.write_text(json.dumps({"annotations": [1]}))
    first, _ = bench.checkpoint(args, "coco-dev", 0)
    again, _ = bench.checkpoint(args, "coco-dev", 0)
    assert first == again and len(trained) == 1  # cached
    teacher.write_text(json.dumps({"annotations": [2]}))
    other, _ = bench.checkpoint(args, "coco-dev", 0)
    assert other != first and len(trained) == 2  # new teacher masks: a new model


def _result(name: str, per_set: dict[str, list[float]], overrides=()) -> dict:
    def agg(v):
        return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "values": v}
    return {"name": name, "train_overrides": list(overrides),
            "sets": {s: {"boxcaseg": {"miou_star": agg(v)}} for s, v in per_set.items()}}


def test_compare_adopts_only_a_gain_beyond_the_spread_on_every_set(bench):
    base = _result("base", {"a": [0.60, 0.61, 0.62], "b": [0.70, 0.70, 0.71]})
    both = _result("both", {"a": [0.66, 0.67, 0.68], "b": [0.75, 0.75, 0.76]}, ["x=1"])
    one = _result("one", {"a": [0.66, 0.67, 0.68], "b": [0.70, 0.71, 0.72]}, ["x=1"])
    assert bench.compare(base, both).endswith("adopt 'both'")
    assert bench.compare(base, one).endswith("do not adopt 'one'")
    relabel = _result("relabel", {"a": [0.61, 0.62, 0.63], "b": [0.71, 0.71, 0.72]})
    relabel["command"] = "python bench/real_photos.py --name relabel --from base"
    assert "per seed +0.010, +0.010, +0.010" in bench.compare(base, relabel)
    retrained = {**relabel, "command": "python bench/real_photos.py --name retrained"}
    assert "per seed" not in bench.compare(base, retrained)  # same overrides, new recipe file
    assert "per seed" not in bench.compare(base, one)  # other models: gains are not paired
    # recorded checkpoints decide pairing: the same overrides with another recipe file are
    # other models, and a relabel of the same checkpoints is paired
    m = {"models": {"a": {"0": "ck/1/a/seed0"}}}
    other = {"models": {"a": {"0": "ck/2/a/seed0"}}}
    assert "per seed" not in bench.compare({**base, **m}, {**relabel, **other})
    assert "per seed" in bench.compare({**base, **m}, {**relabel, **m})
    assert "per seed" not in bench.compare(base, {**relabel, **m})  # one unknown: not paired
    worse = _result("worse", {"a": [0.50, 0.51, 0.52], "b": [0.70, 0.71, 0.71]}, ["x=1"])
    said = bench.compare(base, worse).splitlines()
    assert said[0].endswith("worse by more than the spread")  # a loss is not called noise
    assert said[1].endswith("within the spread") and said[2].endswith("do not adopt 'worse'")


def test_self_training_off_leaves_the_cached_models_valid(bench, tmp_path, monkeypatch):
    import boxcaseg.engine.trainer as trainer

    def fake_train(cfg, resume=False, progress=True):
        Path(cfg.out_dir).mkdir(parents=True)
        Path(cfg.out_dir, "final.pt").write_text("x")

    monkeypatch.setattr(trainer, "train", fake_train)
    plain, _ = bench.checkpoint(_args(tmp_path, ["self_train_rounds=0"]), "coco-dev", 0)
    off, _ = bench.checkpoint(_args(tmp_path, ["self_train_rounds=0", "self_train_refine=guided"]),
                              "coco-dev", 0)
    on, _ = bench.checkpoint(_args(tmp_path, ["self_train_rounds=1"]), "coco-dev", 0)
    recipe, _ = bench.checkpoint(_args(tmp_path, []), "coco-dev", 0)  # real-cpu self-trains
    assert off == plain and on != plain and recipe == on


def test_from_relabels_the_recorded_models_and_never_trains(bench, tmp_path, monkeypatch):
    import boxcaseg.engine.trainer as trainer

    def no_train(cfg, resume=False, progress=True):
        raise AssertionError("a label-time variant trained a model")

    monkeypatch.setattr(trainer, "train", no_train)
    run = tmp_path / "ck" / "k" / "coco-dev" / "seed1"
    run.mkdir(parents=True)
    (run / "final.pt").write_text("x")
    (run / "train_seconds.txt").write_text("12.5\n")
    args = _args(tmp_path, ["lr=1"])  # overrides that name no cached model
    args.from_run = "earlier"
    models = {"coco-dev": {"1": str(run / "final.pt")}}
    assert bench.cached_model(args, models, "coco-dev", 1) == (run / "final.pt", 12.5)
    with pytest.raises(SystemExit, match="coco-dev seed 0"):  # not recorded
        bench.cached_model(args, models, "coco-dev", 0)
    with pytest.raises(SystemExit, match="--from earlier"):  # old result file, nothing cached
        bench.cached_model(args, None, "coco-dev", 1)
