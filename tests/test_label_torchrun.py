"""`torchrun` labeling end to end: 2 gloo processes, one killed with SIGKILL mid-run, resumed.

The resumed output must equal an uninterrupted 2-process run byte for byte, carry the same
annotation ids as a 1-process run with masks agreeing to IoU >= 0.999 (batches are composed
differently, which may move a threshold pixel), and `--shard K/2` + `merge-labels` must give
the same file as torchrun.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxcaseg.cli import main as cli_main
from boxcaseg.config import to_dict
from boxcaseg.model import ModelConfig, build_model
from boxcaseg.structures import rle_to_mask

pytestmark = pytest.mark.slow  # launches torchrun


HERE = Path(__file__).parent


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    images, anns = [], []
    for i in range(10):
        h, w = int(rng.integers(40, 64)), int(rng.integers(40, 64))
        img = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        img[8:30, 6:28] = (220, 40, 40)  # an object to find
        Image.fromarray(img).save(root / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": w, "height": h})
        for j in range(1 + i % 4):  # 1..4 boxes: shards are balanced by boxes, not images
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            bw, bh = round(rng.uniform(8, w / 2), 2), round(rng.uniform(8, h / 2), 2)
            ann = {"id": 1000 + len(anns), "image_id": i + 1, "category_id": 1,
                   "bbox": [round(x, 2), round(y, 2), bw, bh], "iscrowd": 0}
            if j == 0 and i % 3 == 0:  # mixed supervision: a few boxes come with a GT mask
                x0, y0 = ann["bbox"][0] + 1, ann["bbox"][1] + 1
                ann["segmentation"] = [[x0, y0, x0 + bw - 2, y0, x0 + bw / 2, y0 + bh - 2]]
            anns.append(ann)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path, root


def _checkpoint(tmp_path: Path) -> Path:
    """An untrained but deterministic BoxCaseg network (the test needs masks, not quality)."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none", head_channels=16,
                      transfer_hidden=8)
    model = build_model(cfg)
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict(), "model_config": to_dict(cfg)}, path)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env or _env(), capture_output=True,
                          text=True, timeout=300)


def _torchrun(script: list[str]) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script]


def test_two_rank_label_killed_and_resumed_equals_uninterrupted(tmp_path):
    boxes, root = _dataset(tmp_path)
    ckpt = _checkpoint(tmp_path)
    common = ["--method", "boxcaseg", "--checkpoint", str(ckpt), "--images", str(root),
              "--boxes", str(boxes), "--no-progress", "crop_size=32", "jit=false",
              "precision=fp32", "chunk_images=1", "batch_size=4"]

    def label(out, *extra):
        return ["-m", "boxcaseg.cli", "label", *common, "--out", str(out), *extra]

    single = tmp_path / "single.json"  # one process, run here (no torchrun environment)
    assert cli_main(label(single)[2:]) == 0

    clean = tmp_path / "clean.json"
    r = _run(_torchrun(label(clean)))
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob("clean.json.*"))  # parts and locks removed

    # rank 1 is killed (SIGKILL) as it starts its 3rd image; torchrun stops rank 0
    out = tmp_path / "resumed.json"
    env = dict(_env(), KILL_RANK="1", KILL_AT="3")
    r = _run(_torchrun([str(HERE / "label_kill_rank.py"), *label(out)[2:]]), env)
    assert r.returncode != 0 and not out.exists()
    progress = tmp_path / "resumed.json.part-00001-of-00002.jsonl.partial.jsonl"
    assert progress.exists()
    assert len(progress.read_text().splitlines()) == 3  # header + 2 finished images

    r = _run(_torchrun(label(out, "--resume")))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == clean.read_bytes()
    assert not list(tmp_path.glob("resumed.json.*"))

    # the same annotations as one process, masks equal up to a few threshold pixels
    a = json.loads(single.read_text())
    b = json.loads(out.read_text())
    assert [x["id"] for x in a["annotations"]] == [x["id"] for x in b["annotations"]]
    assert a["boxcaseg_label"]["config"] == b["boxcaseg_label"]["config"]
    inter = union = 0
    for x, y in zip(a["annotations"], b["annotations"]):
        if x.get("mask_source") == "gt":  # as given (checked below)
            assert x == y
            continue
        mx, my = rle_to_mask(x["segmentation"]), rle_to_mask(y["segmentation"])
        inter += (mx & my).sum()
        union += (mx | my).sum()
    assert union > 0 and inter / union >= 0.999
    # GT masks pass through every layout as given; every other box has its score
    given = {a["id"]: a for a in json.loads(boxes.read_text())["annotations"]}
    gt_ids = {k for k, a in given.items() if "segmentation" in a}
    assert len(gt_ids) == 4 and b["boxcaseg_label"]["summary"]["gt_masks"] == 4
    for y in b["annotations"]:
        if y["id"] in gt_ids:
            assert y == {**given[y["id"]], "mask_source": "gt", "score": 1.0}
        else:
            assert y["mask_source"] == "boxcaseg" and 0.0 <= y["score"] <= 1.0

    # the job-array way: two shards, then merge-labels: the same file as torchrun
    parts = [tmp_path / f"part{k}.jsonl" for k in range(2)]
    for k, part in enumerate(parts):
        assert cli_main(label(part, "--shard", f"{k}/2")[2:]) == 0
    merged = tmp_path / "merged.json"
    assert cli_main(["merge-labels", *map(str, parts), "--out", str(merged)]) == 0
    assert merged.read_bytes() == clean.read_bytes()
