"""BoxCaseg on real photos, judged so that it cannot be tuned to one small set (issue 17).

Each configuration is trained with 3 seeds (default) on **both** dev sets, ``coco-dev`` (63
COCO train2017 photos, 427 boxes, 45 % small) and ``coco-mval-dev`` (361 COCO val2017 photos,
393 boxes, mostly medium/large), each time on ECSSD salient photos + that set's boxes (the
paper's protocol: the box-supervised set is what gets labeled), then labels those boxes and
scores them against the human masks. The filled box and GrabCut (5 iterations; an empty mask
becomes the box, as users do) are measured on the same boxes with the same scorer.

Reported per set: mean and spread (min..max over seeds) of mIoU*, IoU@50/75, mIoU* by size,
the median fill (mask area / box area) vs the human one, the score's Spearman with the true
IoU, and the mean IoU of the masks the keep rule keeps vs drops. A change is adopted only if
it helps on both sets by more than the seed spread (``--compare``).

    python bench/real_photos.py                             # the shipped recipe, 3 seeds x 2 sets
    python bench/real_photos.py --name lr4e-3 lr=4e-3       # a training variant
    python bench/real_photos.py --name flip --from recipe --label tta_flip=true   # label-time only
    python bench/real_photos.py --table                     # every result so far (Markdown)
    python bench/real_photos.py --compare recipe flip       # adopt or not, set by set

Checkpoints are cached by (training config, set, seed) under ``runs/real/ckpt``, so label-time
variants (``--from``) relabel the same 6 models. Results go to ``runs/real/<name>.json``. Data
are read from ``../shared/data/real`` and never copied.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from boxcaseg.config import load_config, packaged_config, to_dict
from boxcaseg.data.coco import load_coco
from boxcaseg.engine.config import TrainConfig
from boxcaseg.evaluation.instance_iou import instance_records, mask_quality
from boxcaseg.io import read_json
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.labeling.score import spearman

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"
RECIPE = "boxcaseg_real_cpu.yaml"
SETS = ("coco-dev", "coco-mval-dev")
THREADS = 2  # fixed: the thread count changes float reduction order, hence the masks


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {THREADS} threads"


# --------------------------------------------------------------------------------------------
# scoring


def score_labels(gt: dict, labels: dict, seconds: float | None = None,
                 instances_per_s: float | None = None) -> dict:
    """Everything issue 17 asks for, for one labels dict against the GT masks."""
    q = mask_quality(gt, labels)
    recs = {r.ann_id: r for r in instance_records(gt, labels)}
    gt_by_id = {a["id"]: a for a in gt["annotations"]}
    fills, gt_fills, scores, ious, kept, dropped = [], [], [], [], [], []
    for a in labels["annotations"]:
        if a.get("iscrowd") or "proxy_iou" not in a or a["id"] not in recs:
            continue
        w, h = a["bbox"][2], a["bbox"][3]
        fills.append(a["area"] / (w * h))
        gt_fills.append(gt_by_id[a["id"]]["area"] / (w * h))
        iou = recs[a["id"]].iou
        scores.append(a["score"])
        ious.append(iou)
        (dropped if a.get("ignore_mask") else kept).append(iou)
    by_size = {k: v.get("miou_star") for k, v in q["by_size"].items()}
    return {"miou_star": q["miou_star"], "iou50": q["iou50"], "iou75": q["iou75"],
            "by_size": by_size, "median_fill": float(np.median(fills)),
            "gt_median_fill": float(np.median(gt_fills)),
            "spearman": spearman(np.array(scores), np.array(ious)) if len(set(scores)) > 1
            else float("nan"),
            "kept_iou": float(np.mean(kept)) if kept else None,
            "dropped_iou": float(np.mean(dropped)) if dropped else None,
            "drop_rate": len(dropped) / max(len(kept) + len(dropped), 1),
            "seconds": seconds, "instances_per_s": instances_per_s}


def empty_to_box(labels: dict) -> dict:
    """GrabCut with the usual fallback: an empty mask becomes the filled box."""
    from boxcaseg.structures import box_to_mask, mask_to_rle, xywh_to_xyxy

    sizes = {im["id"]: (im["height"], im["width"]) for im in labels["images"]}
    for a in labels["annotations"]:
        if "proxy_iou" in a and a.get("area", 1) == 0:
            h, w = sizes[a["image_id"]]
            m = box_to_mask(xywh_to_xyxy(a["bbox"]), h, w)
            a["segmentation"], a["area"] = mask_to_rle(m), int(m.sum())
    return labels


def label_and_score(method: str, set_dir: Path, out: Path, cfg: LabelConfig, model,
                    gt: dict, fallback: bool = False) -> dict:
    coco = load_coco(set_dir / "boxes.json", set_dir / "images")
    s = label_dataset(coco, out, method, cfg, model=model, progress=False)
    labels = read_json(out)
    if fallback:
        labels = empty_to_box(labels)
    return score_labels(gt, labels, s.seconds, s.instances_per_s)


# --------------------------------------------------------------------------------------------
# training (cached)


def train_config(args: argparse.Namespace, set_dir: Path, seed: int, out: Path) -> TrainConfig:
    """The recipe with this run's overrides; ``{set}`` and ``{seed}`` in an override are
    filled in, so a self-training round can name each model's own teacher labels
    (``teacher_labels=runs/real/labels/recipe/{set}-{seed}.json``)."""
    overrides = [o.format(set=set_dir.name, seed=seed) for o in args.overrides]
    return load_config(TrainConfig, args.config or packaged_config(RECIPE), [
        f"salient_root={args.salient}", f"boxes_json={set_dir / 'boxes.json'}",
        f"images_root={set_dir / 'images'}", f"out_dir={out}", f"seed={seed}", *overrides])


def checkpoint_dir(args: argparse.Namespace, set_name: str, seed: int) -> Path:
    """Where the model of (training config, set, seed) is cached."""
    set_dir = Path(args.data) / set_name
    probe = to_dict(train_config(args, set_dir, seed, Path("x")))
    probe.pop("out_dir")
    if not probe.get("self_train_rounds"):  # off, they change nothing: keys made before
        probe.pop("self_train_rounds", None)  # they existed stay valid
        probe.pop("self_train_refine", None)
    defaults = to_dict(TrainConfig())
    for key in ("init_weights", "self_train_init", "salient_occlude", "salient_occlude_scale"):
        # later options at their default (off): keys made before they existed stay valid
        if probe.get(key) == defaults[key]:
            probe.pop(key)
    if probe.get("teacher_labels"):  # the teacher's content, not only its path, names the model
        probe["teacher_sha"] = hashlib.sha256(Path(probe["teacher_labels"]).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps(probe, sort_keys=True).encode()).hexdigest()[:12]
    return Path(args.out) / "ckpt" / key / set_name / f"seed{seed}"


def finished(run: Path) -> tuple[Path, float] | None:
    """``(final.pt, training seconds)`` of a finished training in ``run``, else None."""
    final, seconds = run / "final.pt", run / "train_seconds.txt"
    if final.is_file() and seconds.is_file():
        return final, float(seconds.read_text())
    return None


def checkpoint(args: argparse.Namespace, set_name: str, seed: int) -> tuple[Path, float]:
    """The trained model of (training config, set, seed), trained now if not cached."""
    from boxcaseg.engine.trainer import train

    run = checkpoint_dir(args, set_name, seed)
    done = finished(run)
    if done is not None:
        return done
    cfg = train_config(args, Path(args.data) / set_name, seed, run)
    t0 = time.perf_counter()
    train(cfg, resume=(run / "last.pt").is_file(), progress=False)
    took = time.perf_counter() - t0
    (run / "train_seconds.txt").write_text(f"{took:.1f}\n")
    return run / "final.pt", took


def cached_model(args: argparse.Namespace, models: dict | None, set_name: str,
                 seed: int) -> tuple[Path, float]:
    """The model a ``--from`` run labeled for (set, seed): the checkpoint it recorded, or
    (result files older than that record) the cached one its overrides name under today's
    recipe file. Never trains: a missing model stops the run with what to do."""
    if models is not None:
        recorded = models.get(set_name, {}).get(str(seed))
        final = Path(recorded) if recorded else None
    else:
        final = checkpoint_dir(args, set_name, seed) / "final.pt"
    done = finished(final.parent) if final is not None else None
    if done is None or done[0] != final:
        raise SystemExit(f"--from {args.from_run}: no trained model for {set_name} seed {seed} "
                         f"({final or 'not recorded'}); run its training first (without --from), "
                         "or name the training overrides it was run with")
    return done


# --------------------------------------------------------------------------------------------
# aggregation


def _agg(values: list[float | None]) -> dict | None:
    v = [x for x in values if x is not None and not np.isnan(x)]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)),
            "values": v}


def aggregate(per_seed: list[dict]) -> dict:
    keys = ("miou_star", "iou50", "iou75", "median_fill", "gt_median_fill", "spearman",
            "kept_iou", "dropped_iou", "drop_rate", "instances_per_s")
    out = {k: _agg([r.get(k) for r in per_seed]) for k in keys}
    for size in ("small", "medium", "large"):
        out[f"miou_{size}"] = _agg([r["by_size"].get(size) for r in per_seed])
    out["train_seconds"] = _agg([r.get("train_seconds") for r in per_seed])
    return out


def fmt(a: dict | None, digits: int = 3) -> str:
    if a is None:
        return ""
    if a["max"] - a["min"] < 10 ** -digits:
        return f"{a['mean']:.{digits}f}"
    return f"{a['mean']:.{digits}f} ({a['min']:.{digits}f}-{a['max']:.{digits}f})"


def table(results: list[dict]) -> str:
    lines = ["| run | set | mIoU* | IoU@50 | IoU@75 | small | medium | large | fill (human) | "
             "Spearman | kept / dropped IoU | inst/s | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for set_name, methods in r["sets"].items():
            for method, a in methods.items():
                name = r["name"] if method == "boxcaseg" else method
                fill = f"{fmt(a['median_fill'], 2)} ({fmt(a['gt_median_fill'], 2)})"
                kd = f"{fmt(a['kept_iou'])} / {fmt(a['dropped_iou'])}"
                lines.append(
                    f"| {name} | {set_name} | {fmt(a['miou_star'])} | {fmt(a['iou50'])} | "
                    f"{fmt(a['iou75'])} | {fmt(a['miou_small'])} | {fmt(a['miou_medium'])} | "
                    f"{fmt(a['miou_large'])} | {fill} | {fmt(a['spearman'], 2)} | {kd} | "
                    f"{fmt(a['instances_per_s'], 1)} | {fmt(a['train_seconds'], 0)} |")
    return "\n".join(lines)


def same_models(base: dict, new: dict) -> bool:
    """Whether two runs labeled the same trained models (a label-time variant), so that their
    per-seed gains are paired. Runs record their checkpoints (``models``); for older result
    files, which do not, a ``--from`` run with the same training overrides stands in (equal
    overrides alone are not enough: the recipe file changed between runs)."""
    if "models" in base or "models" in new:
        return base.get("models") == new.get("models")
    return (new.get("train_overrides") == base.get("train_overrides")
            and " --from " in f" {new.get('command', '')} ")


def compare(base: dict, new: dict) -> str:
    """Adopt only if the mean gain beats the seed spread on every set."""
    lines, adopt = [], True
    for set_name in base["sets"]:
        a = base["sets"][set_name]["boxcaseg"]["miou_star"]
        b = new["sets"][set_name]["boxcaseg"]["miou_star"]
        gain = b["mean"] - a["mean"]
        spread = max(a["max"] - a["min"], b["max"] - b["min"])
        ok = gain > spread
        adopt &= ok
        paired = ""
        if len(a["values"]) == len(b["values"]) and same_models(base, new):
            d = [y - x for x, y in zip(a["values"], b["values"])]
            paired = f"; per seed {', '.join(f'{v:+.3f}' for v in d)}"
        said = ("helps" if ok else "worse by more than the spread" if -gain > spread
                else "within the spread")
        lines.append(f"{set_name}: {a['mean']:.3f} -> {b['mean']:.3f} ({gain:+.3f}; seed "
                     f"spread {spread:.3f}{paired}): {said}")
    lines.append(f"verdict: {'adopt' if adopt else 'do not adopt'} {new['name']!r}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="TrainConfig KEY=VALUE overrides of the recipe")
    p.add_argument("--name", default="recipe")
    p.add_argument("--config", default=None, help=f"training YAML (default: packaged {RECIPE})")
    p.add_argument("--label", nargs="*", default=[], help="LabelConfig KEY=VALUE overrides")
    p.add_argument("--from", dest="from_run", default=None,
                   help="label-time variant: relabel the models of this earlier run (the "
                   "checkpoints its result file records; never trains)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--salient", default=str(SHARED / "ecssd-dev"))
    p.add_argument("--out", default="runs/real")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--table", nargs="*", default=None, metavar="NAME",
                   help="print the results (all, or these runs) as Markdown")
    p.add_argument("--compare", nargs=2, metavar=("BASE", "NEW"))
    args = p.parse_args(argv)
    out = Path(args.out)

    def load(name: str) -> dict:
        return json.loads((out / f"{name}.json").read_text())

    if args.table is not None:
        names = args.table or sorted(f.stem for f in out.glob("*.json"))
        print(table([load(n) for n in names]))
        return 0
    if args.compare:
        print(compare(load(args.compare[0]), load(args.compare[1])))
        return 0
    models: dict | None = None
    if args.from_run:
        source = load(args.from_run)
        # overrides given with --from only find the models of a result file older than the
        # record of its checkpoints (and a changed recipe file): e.g. --from recipe
        # self_train_rounds=0 "model.heads=[weak,salient,transferred]" for the 2026-12-04 runs
        args.overrides = [*source["train_overrides"], *args.overrides]
        models = source.get("models")

    torch.set_num_threads(THREADS)
    result: dict = {"name": args.name, "command": " ".join([sys.executable, *sys.argv]),
                    "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime()),
                    "load_before": os.getloadavg(), "train_overrides": args.overrides,
                    "label_overrides": args.label, "seeds": args.seeds, "sets": {},
                    "per_seed": {}, "models": {}}
    label_cfg = load_config(LabelConfig, None, ["device=cpu", *args.label])
    work = out / "labels" / args.name
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    for set_name in args.sets:
        set_dir = Path(args.data) / set_name
        gt = read_json(set_dir / "annotations.json")
        rows = []
        for seed in args.seeds:
            if args.from_run:  # a label-time variant never trains
                final, train_s = cached_model(args, models, set_name, seed)
            else:
                final, train_s = checkpoint(args, set_name, seed)
            result["models"].setdefault(set_name, {})[str(seed)] = str(final)
            from boxcaseg.model.boxcaseg import load_boxcaseg
            model, _ = load_boxcaseg(final, map_location="cpu")
            r = label_and_score("boxcaseg", set_dir, work / f"{set_name}-{seed}.json",
                                label_cfg, model, gt)
            r["train_seconds"] = train_s
            rows.append(r)
            print(f"[{args.name}] {set_name} seed {seed}: mIoU* {r['miou_star']:.3f} IoU@75 "
                  f"{r['iou75']:.3f} fill {r['median_fill']:.2f} (human "
                  f"{r['gt_median_fill']:.2f}) Spearman {r['spearman']:.2f} "
                  f"{r['instances_per_s']:.1f} inst/s", flush=True)
        result["per_seed"][set_name] = rows
        result["sets"][set_name] = {"boxcaseg": aggregate(rows)}
        if not args.skip_baselines:
            for method in ("box", "grabcut"):
                cache = out / "baselines" / f"{set_name}-{method}.json"
                if not cache.is_file():
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    r = label_and_score(method, set_dir, out / "baselines" /
                                        f"{set_name}-{method}-labels.json",
                                        LabelConfig(device="cpu"), None, gt,
                                        fallback=method == "grabcut")
                    cache.write_text(json.dumps(r))
                r = json.loads(cache.read_text())
                name = "grabcut (empty -> box)" if method == "grabcut" else "filled box"
                result["sets"][set_name][name] = aggregate([r])
    result["wall_seconds"] = time.perf_counter() - t_start
    result["load_after"] = os.getloadavg()
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(table([result]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
