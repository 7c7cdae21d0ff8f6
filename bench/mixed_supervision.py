"""Mixed supervision on real photos: a few coco-dev instances come with their GT mask.

For each fraction f (0, 10 %, 30 % of the 427 coco-dev instances, a seeded sample; the 10 %
set is inside the 30 % set) a boxes file is written under ``--out`` with ``segmentation``
on the chosen instances only (polygons from ``annotations.json``; never copied into the
repository). BoxCaseg is trained on it with the packaged real-photo recipe (box crops with a GT
mask train the pixel heads like salient crops), the boxes are labeled (the GT masks are kept
as they are, ``mask_source: "gt"``, and merge treats them as fixed), and the *remaining*
box-only instances are scored (mIoU*, IoU@50/75) against their GT masks. The 0 % model is
scored on each fraction's remaining set, so every row compares the same instances.

    python bench/mixed_supervision.py prepare
    flock /tmp/boxcaseg-cpu.lock python bench/mixed_supervision.py train 0.1 max_steps=300
    python bench/mixed_supervision.py evaluate          # -> <out>/mixed.json + a table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from boxcaseg.config import load_config, packaged_config, to_dict
from boxcaseg.data.coco import load_coco
from boxcaseg.engine.config import TrainConfig
from boxcaseg.evaluation.instance_iou import instance_records, summarize
from boxcaseg.io import atomic_write_json, read_json
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.run import label_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"
RECIPE = "boxcaseg_real_cpu.yaml"
FRACTIONS = (0.0, 0.1, 0.3)


def _tag(f: float) -> str:
    return f"f{round(100 * f):02d}"


def gt_ids(boxes: dict, fraction: float, seed: int = 0) -> list[int]:
    """The instances given a GT mask: the first ``round(f * N)`` of one seeded permutation."""
    ids = sorted(int(a["id"]) for a in boxes["annotations"] if not a.get("iscrowd"))
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[: round(fraction * len(ids))])


def prepare(coco_dir: Path, out: Path) -> None:
    boxes, gt = read_json(coco_dir / "boxes.json"), read_json(coco_dir / "annotations.json")
    segm = {int(a["id"]): a["segmentation"] for a in gt["annotations"]}
    for f in FRACTIONS:
        chosen = set(gt_ids(boxes, f))
        anns = [dict(a, segmentation=segm[int(a["id"])]) if int(a["id"]) in chosen else a
                for a in boxes["annotations"]]
        atomic_write_json(out / f"boxes_{_tag(f)}.json", {**boxes, "annotations": anns})
        print(f"{_tag(f)}: {len(chosen)} of {len(anns)} instances with a GT mask")


def train_fraction(f: float, out: Path, salient: Path, images: Path, config: str,
                   overrides: list[str]) -> None:
    from boxcaseg.engine.trainer import train

    run = out / _tag(f)
    cfg = load_config(TrainConfig, config, [
        f"salient_root={salient}", f"boxes_json={out / f'boxes_{_tag(f)}.json'}",
        f"images_root={images}", f"out_dir={run / 'train'}", *overrides])
    load = os.getloadavg()
    t0 = time.perf_counter()
    train(cfg, resume=(run / "train" / "last.pt").exists(), progress=False)
    info = {"seconds": time.perf_counter() - t0, "load_before": load,
            "load_after": os.getloadavg(), "config": to_dict(cfg),
            "command": " ".join([sys.executable, *sys.argv])}
    atomic_write_json(run / "train_info.json", info)


def _scores(gt: dict, labels: dict, keep_ids: set[int]) -> dict:
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    recs = [r for r in instance_records(gt, labels) if r.ann_id in keep_ids]
    s = summarize(recs, cats)
    return {k: s[k] for k in ("miou_star", "mean_iou", "iou50", "iou75")} | {"n": len(recs)}


def evaluate(coco_dir: Path, out: Path, label_overrides: list[str]) -> dict:
    from boxcaseg.model.boxcaseg import load_boxcaseg

    gt = read_json(coco_dir / "annotations.json")
    boxes = read_json(coco_dir / "boxes.json")
    all_ids = {int(a["id"]) for a in boxes["annotations"] if not a.get("iscrowd")}
    cfg = load_config(LabelConfig, None, ["device=cpu", *label_overrides])
    result: dict = {"label_config": to_dict(cfg), "rows": []}
    models = {f: out / _tag(f) / "train" / "final.pt" for f in FRACTIONS}
    boxes_only = load_coco(coco_dir / "boxes.json", coco_dir / "images")
    labeled: dict[tuple[float, float], Path] = {}

    def labels(model_f: float, input_f: float) -> Path | None:
        """Labels by the model trained with ``model_f`` GT, of the boxes file with ``input_f``."""
        if (model_f, input_f) not in labeled:
            if not models[model_f].is_file():
                return None
            model, _ = load_boxcaseg(models[model_f], map_location="cpu")
            inp = (boxes_only if input_f == 0 else
                   load_coco(out / f"boxes_{_tag(input_f)}.json", coco_dir / "images"))
            path = out / f"labels_model{_tag(model_f)}_input{_tag(input_f)}.json"
            label_dataset(inp, path, "boxcaseg", cfg, model=model, progress=False)
            labeled[(model_f, input_f)] = path
        return labeled[(model_f, input_f)]

    for f in FRACTIONS[1:]:
        remaining = all_ids - set(gt_ids(boxes, f))
        row: dict = {"fraction": f, "gt_instances": len(all_ids) - len(remaining),
                     "remaining": len(remaining)}
        # which model (trained with or without the GT masks) x whether label sees them
        # (passed through, fixed in merge)
        for key, model_f, input_f in (("boxes_only", 0.0, 0.0), ("gt_at_label", 0.0, f),
                                      ("gt_at_train", f, 0.0),
                                      ("gt_at_train_and_label", f, f)):
            path = labels(model_f, input_f)
            if path is None:
                continue
            row[key] = _scores(gt, read_json(path), remaining)
            print(f"{_tag(f)} {key}: mIoU* {row[key]['miou_star']:.4f} on {len(remaining)}",
                  flush=True)
        result["rows"].append(row)
    atomic_write_json(out / "mixed.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("prepare", "train", "evaluate"))
    p.add_argument("fraction", nargs="?", type=float, default=None)
    p.add_argument("overrides", nargs="*", help="TrainConfig (train) / LabelConfig (evaluate)")
    p.add_argument("--coco", default=str(SHARED / "coco-dev"))
    p.add_argument("--salient", default=str(SHARED / "ecssd-dev"))
    p.add_argument("--config", default=None, help=f"training YAML (default: packaged {RECIPE})")
    p.add_argument("--out", default="runs/mixed")
    args = p.parse_args(argv)
    out, coco_dir = Path(args.out), Path(args.coco)
    if args.stage == "prepare":
        prepare(coco_dir, out)
    elif args.stage == "train":
        if args.fraction is None:
            p.error("train needs a fraction (0, 0.1 or 0.3)")
        train_fraction(args.fraction, out, Path(args.salient), coco_dir / "images",
                       args.config or packaged_config(RECIPE), args.overrides)
    else:
        overrides = ([str(args.fraction)] if args.fraction is not None else []) + args.overrides
        print(json.dumps(evaluate(coco_dir, out, [o for o in overrides if "=" in o]), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
