"""Shards, parts and merge checks, and the resume / lock / bad-input guards of `label`."""

import json
import shutil

import numpy as np
import pytest

from boxcaseg.cli import main as cli_main
from boxcaseg.data.coco import load_coco
from boxcaseg.errors import ConfigError
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.parts import sidecar_path
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.labeling.job.parts import assign_shards, part_path
from boxcaseg.runlock import OutputLock
from test_labeler import RedModel, _make_dataset


def _label(path, root, out, *extra):
    return cli_main(["label", "--method", "box", "--images", str(root), "--boxes", str(path),
                     "--out", str(out), "--no-progress", *extra])


def test_shards_are_disjoint_deterministic_and_balanced_by_boxes():
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 50, size=1000)
    weights[:10] = 400  # a few crowded images
    for n in (1, 2, 3, 8):
        shard = assign_shards(weights, n)
        assert shard.min() >= 0 and shard.max() < n
        assert np.array_equal(shard, assign_shards(weights, n))
        loads = np.bincount(shard, weights=weights, minlength=n)
        assert loads.max() - loads.min() <= weights.max()
    # balanced by boxes, not by images: the crowded images do not pile up on one shard
    shard = assign_shards(weights, 2)
    assert abs(np.bincount(shard, weights=weights)[0] / weights.sum() - 0.5) < 0.01


def test_shard_parts_merge_into_the_single_process_file(tmp_path, capsys):
    path, root, _ = _make_dataset(tmp_path)
    single = tmp_path / "single.json"
    assert _label(path, root, single) == 0
    parts = [tmp_path / f"p{k}.jsonl" for k in range(3)]
    for k, p in enumerate(parts):
        assert _label(path, root, p, "--shard", f"{k}/3") == 0
    merged = tmp_path / "merged.json"
    assert cli_main(["merge-labels", *map(str, parts), "--out", str(merged)]) == 0
    assert merged.read_bytes() == single.read_bytes()
    # a part given twice is de-duplicated (by image and annotation id): the same file
    again = tmp_path / "again.json"
    assert cli_main(["merge-labels", *map(str, parts), str(parts[1]), "--out", str(again)]) == 0
    assert again.read_bytes() == single.read_bytes()
    capsys.readouterr()
    # a missing part is an error naming the shard, and nothing is written
    rc = cli_main(["merge-labels", str(parts[0]), str(parts[2]), "--out", str(tmp_path / "x")])
    assert rc != 0 and "shard(s) [1] of 3 are missing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # an incomplete part (a run cut short) is refused
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(parts[1].read_text().splitlines(keepends=True)[:-2]))
    rc = cli_main(["merge-labels", str(parts[0]), str(cut), str(parts[2]), "--out",
                   str(tmp_path / "x")])
    assert rc != 0 and "incomplete part" in capsys.readouterr().err
    # parts of another input are refused
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [3, 3, 10, 10]
    path.write_text(json.dumps(data))
    rc = cli_main(["merge-labels", *map(str, parts), "--out", str(tmp_path / "x")])
    assert rc != 0 and "labeled from other annotations" in capsys.readouterr().err


def test_resume_refuses_settings_that_change_the_masks(tmp_path):
    path, root, data = _make_dataset(tmp_path)
    part = tmp_path / "p.jsonl"
    # an interrupted shard: keep its header and first record as the progress file
    assert _label(path, root, part, "--shard", "0/2") == 0
    lines = part.read_text().splitlines(keepends=True)
    part.unlink()
    sidecar_path(part).write_text("".join(lines[:2]))
    snapshot = sidecar_path(part).read_bytes()
    coco = load_coco(path, root)

    changes = r"settings that change the masks \({}\)"
    with pytest.raises(ConfigError, match=changes.format("drop_iou: 0.95 -> 0.5")):
        label_dataset(coco, part, "box", LabelConfig(drop_iou=0.5), shard=(0, 2),
                      resume=True, progress=False)
    with pytest.raises(ConfigError, match="different method"):
        label_dataset(coco, part, "grabcut", shard=(0, 2), resume=True, progress=False)
    # the issue-13 fields are part of what a part is bound to
    with pytest.raises(ConfigError, match=changes.format("min_score: None -> 0.5")):
        label_dataset(coco, part, "box", LabelConfig(min_score=0.5), shard=(0, 2),
                      resume=True, progress=False)
    with pytest.raises(ConfigError, match=changes.format("keep_gt_masks: True -> False")):
        label_dataset(coco, part, "box", LabelConfig(keep_gt_masks=False), shard=(0, 2),
                      resume=True, progress=False)
    assert sidecar_path(part).read_bytes() == snapshot  # refusals leave the progress alone
    # runtime settings may change: the part is the one an uninterrupted run writes
    label_dataset(coco, part, "box", LabelConfig(batch_size=3, chunk_images=1, jit=False),
                  shard=(0, 2), resume=True, progress=False)
    assert part.read_text().splitlines(keepends=True) == lines


def test_resume_without_progress_says_so(tmp_path, caplog):
    path, root, _ = _make_dataset(tmp_path)
    out = tmp_path / "o.json"
    assert _label(path, root, out, "--resume") == 0
    assert "no progress file" in caplog.text and "nothing to resume" in caplog.text
    assert out.exists()


def test_concurrent_run_on_one_output_is_refused(tmp_path, capsys):
    path, root, _ = _make_dataset(tmp_path)
    out = tmp_path / "o.json"
    sidecar_path(out).write_text('{"header": {}}\n')  # the other run's progress
    with OutputLock(out, "label"):
        rc = _label(path, root, out)
    assert rc != 0 and "in use by label pid" in capsys.readouterr().err
    assert sidecar_path(out).read_text() == '{"header": {}}\n' and not out.exists()
    # the same for a shard part
    part = tmp_path / "p.jsonl"
    with OutputLock(part, "label"):
        assert _label(path, root, part, "--shard", "1/2") != 0


def test_missing_image_folder_and_all_failed_exit_nonzero(tmp_path, capsys):
    path, root, _ = _make_dataset(tmp_path)
    out = tmp_path / "o.json"
    rc = _label(path, tmp_path / "nonexistent", out)
    err = capsys.readouterr().err
    assert rc != 0 and "image folder not found" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = _label(path, empty, out)
    err = capsys.readouterr().err
    assert rc != 0 and "every image failed" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not sidecar_path(out).exists()  # a rerun starts afresh


def test_boxcaseg_labeling_never_builds_full_image_masks(tmp_path, monkeypatch):
    def full(*a, **k):
        raise AssertionError("K x H x W masks built")
    monkeypatch.setattr(BoxMask, "to_full", full)
    path, root, _ = _make_dataset(tmp_path)
    s = label_dataset(load_coco(path, root), tmp_path / "o.json", "boxcaseg",
                      LabelConfig(crop_size=32, jit=False), model=RedModel(), progress=False)
    assert s.instances_labeled == 15


def test_shard_and_torchrun_do_not_mix(tmp_path):
    from boxcaseg.engine.distributed import DistInfo
    path, root, _ = _make_dataset(tmp_path)
    with pytest.raises(ConfigError, match="drop --shard"):
        label_dataset(load_coco(path, root), tmp_path / "o", "box", shard=(0, 2),
                      dist=DistInfo(rank=0, world_size=2), progress=False)
    assert cli_main(["merge-labels", str(tmp_path / "none.jsonl"), "--out",
                     str(tmp_path / "m")]) != 0


def test_parts_from_before_the_score_merge_with_proxy_iou_as_results_score(tmp_path):
    """Parts written before ``score`` / ``keep_gt_masks`` existed still merge: the results
    format falls back to the proxy IoU, the dataset format writes what the records hold."""
    path, root, _ = _make_dataset(tmp_path)
    parts = [tmp_path / f"p{k}.jsonl" for k in range(2)]
    for k, p in enumerate(parts):
        assert _label(path, root, p, "--shard", f"{k}/2") == 0
        lines = [json.loads(line) for line in p.read_text().splitlines()]
        del lines[0]["header"]["config"]["keep_gt_masks"]
        for rec in lines[1:]:
            for _, f in rec.get("anns", []):
                del f["score"]
        p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = tmp_path / "r.json"
    assert cli_main(["merge-labels", *map(str, parts), "--format", "results",
                     "--out", str(res)]) == 0
    results = json.loads(res.read_text())
    assert len(results) == 15 and all(r["score"] == r["proxy_iou"] for r in results)
    ds = tmp_path / "d.json"
    assert cli_main(["merge-labels", *map(str, parts), "--out", str(ds)]) == 0
    anns = [a for a in json.loads(ds.read_text())["annotations"] if "proxy_iou" in a]
    assert len(anns) == 15 and all("score" not in a and a["mask_source"] == "box"
                                   for a in anns)
