"""BoxCaseg on real photos: train on a salient folder + a box JSON, label those boxes, score.

The paper's protocol: the box-supervised training set is what gets labeled. Defaults: the
shared development sets (ECSSD salient photos, COCO photos with human masks), read from
``../shared/data/real`` and never copied. The filled box and GrabCut are measured in the same
run on the same boxes, with the same scorer (mIoU*, IoU@50/75, by size).

    python bench/real_photos.py                          # shipped recipe, all baselines
    python bench/real_photos.py --name lr4e-3 lr=4e-3 --skip-baselines   # a sweep point
    python bench/real_photos.py --name t04 --reuse --label threshold=0.4 # relabel only

Each run writes ``runs/real/<name>/result.json``; ``--table`` prints every result so far as
Markdown (``bench/results_real.md`` is made from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from boxcaseg.config import load_config, to_dict
from boxcaseg.data.coco import load_coco
from boxcaseg.config import packaged_config
from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.trainer import train
from boxcaseg.evaluation.instance_iou import mask_quality
from boxcaseg.io import read_json
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.run import label_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"
RECIPE = "boxcaseg_real_cpu.yaml"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def _score(gt: dict, labels_path: Path, summary) -> dict:
    labels = read_json(labels_path)
    q = mask_quality(gt, labels)
    kept = mask_quality(gt, labels, only_kept=True)
    fills = []
    gt_fills = []
    ann_by_id = {a["id"]: a for a in gt["annotations"]}
    for a in labels["annotations"]:
        if "segmentation" not in a or a.get("iscrowd"):
            continue
        w, h = a["bbox"][2], a["bbox"][3]
        if w * h > 0:
            fills.append(a["area"] / (w * h))
            g = ann_by_id.get(a["id"])
            if g is not None:
                gt_fills.append(g["area"] / (w * h))
    return {"miou_star": q["miou_star"], "iou50": q["iou50"], "iou75": q["iou75"],
            "by_size": q["by_size"], "drop_rate": summary.drop_rate,
            "miou_star_kept": kept["miou_star"], "instances": summary.instances_labeled,
            "seconds": summary.seconds, "instances_per_s": summary.instances_per_s,
            "median_fill": float(np.median(fills)) if fills else None,
            "gt_median_fill": float(np.median(gt_fills)) if gt_fills else None}


@dataclasses.dataclass
class _SummaryLike:
    """What ``_score`` reads of a LabelSummary, for a file post-processed here."""

    drop_rate: float = 0.0
    instances_labeled: int = 0
    seconds: float = 0.0
    instances_per_s: float = 0.0


def _label(method: str, coco, out_json: Path, cfg: LabelConfig, model, gt: dict) -> dict:
    summary = label_dataset(coco, out_json, method, cfg, model=model, progress=False)
    return _score(gt, out_json, summary)


def _empty_to_box(labels_path: Path, out_path: Path) -> int:
    """GrabCut with the usual fallback: an empty mask becomes the filled box (as users do).

    The labeler keeps GrabCut's empty masks empty (and flags them); scored as they are they
    count IoU 0, which flatters every other method. Returns how many were replaced.
    """
    from boxcaseg.structures import box_to_mask, mask_to_rle, xywh_to_xyxy

    labels = read_json(labels_path)
    sizes = {im["id"]: (im["height"], im["width"]) for im in labels["images"]}
    n = 0
    for a in labels["annotations"]:
        if "segmentation" in a and not a.get("iscrowd") and a.get("area", 1) == 0:
            h, w = sizes[a["image_id"]]
            m = box_to_mask(xywh_to_xyxy(a["bbox"]), h, w)
            a["segmentation"], a["area"] = mask_to_rle(m), int(m.sum())
            n += 1
    out_path.write_text(json.dumps(labels))
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="TrainConfig KEY=VALUE overrides of the recipe")
    p.add_argument("--config", default=None, help=f"training YAML (default: packaged {RECIPE})")
    p.add_argument("--salient", default=str(SHARED / "ecssd-dev"))
    p.add_argument("--coco", default=str(SHARED / "coco-dev"),
                   help="folder with boxes.json, annotations.json (GT masks) and images/")
    p.add_argument("--out", default="runs/real")
    p.add_argument("--name", default="recipe")
    p.add_argument("--label", nargs="*", default=[], help="LabelConfig KEY=VALUE overrides")
    p.add_argument("--thresholds", default="",
                   help="also score these fixed thresholds, e.g. 0.3,0.4,0.5,0.6 (an oracle sweep)")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--reuse", action="store_true", help="reuse <out>/<name>/final.pt if present")
    p.add_argument("--checkpoint", default=None,
                   help="label with this checkpoint instead of training (relabel sweeps)")
    p.add_argument("--table", action="store_true", help="print every result under --out")
    args = p.parse_args(argv)

    out_root = Path(args.out)
    if args.table:
        rows = []
        for f in sorted(out_root.glob("*/result.json")):
            r = json.loads(f.read_text())
            for key, m in r["methods"].items():
                rows.append((r["name"], key, m))
        print("| run | masks from | mIoU* | IoU@50 | IoU@75 | small | medium | large | fill | "
              "dropped | train s | inst/s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, key, m in rows:
            bs = m.get("by_size", {})
            size = [bs.get(k, {}).get("miou_star") for k in ("small", "medium", "large")]
            f = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"| {name} | {key} | {f(m['miou_star'])} | {f(m['iou50'])} | {f(m['iou75'])} | "
                  f"{' | '.join(f(v) for v in size)} | {f(m.get('median_fill'))} | "
                  f"{100 * m['drop_rate']:.1f} | {m.get('train_seconds', '')} | "
                  f"{m['instances_per_s']:.1f} |")
        return 0

    coco_dir = Path(args.coco)
    boxes_json, gt_json, images = coco_dir / "boxes.json", coco_dir / "annotations.json", \
        coco_dir / "images"
    run = out_root / args.name
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = args.config or packaged_config(RECIPE)
    cfg = load_config(TrainConfig, cfg_path, [
        f"salient_root={args.salient}", f"boxes_json={boxes_json}", f"images_root={images}",
        f"out_dir={run / 'train'}", *args.overrides])
    result: dict = {"name": args.name, "command": " ".join([sys.executable, *sys.argv]),
                    "machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                 time.gmtime()),
                    "load_before": os.getloadavg(), "train_config": to_dict(cfg),
                    "methods": {}}
    final = run / "train" / "final.pt"
    train_s = None
    if args.checkpoint:
        final = Path(args.checkpoint)
        seconds = final.parent.parent / "train_seconds.txt"
        train_s = float(seconds.read_text()) if seconds.is_file() else None
    elif not (args.reuse and final.is_file()):
        if (run / "train").exists():
            shutil.rmtree(run / "train")
        t0 = time.perf_counter()
        final = train(cfg, progress=False)
        train_s = time.perf_counter() - t0
        (run / "train_seconds.txt").write_text(f"{train_s:.1f}\n")
    elif (run / "train_seconds.txt").is_file():
        train_s = float((run / "train_seconds.txt").read_text())
    result["train_seconds"] = train_s
    print(f"[{args.name}] trained in {train_s:.0f} s" if train_s else f"[{args.name}] reused",
          flush=True)

    from boxcaseg.model.boxcaseg import load_boxcaseg
    model, _ = load_boxcaseg(final, map_location="cpu")
    gt = read_json(gt_json)
    coco = load_coco(boxes_json, images)
    label_cfg = load_config(LabelConfig, None, ["device=cpu", *args.label])
    m = _label("boxcaseg", coco, run / "labels_boxcaseg.json", label_cfg, model, gt)
    m["train_seconds"] = None if train_s is None else round(train_s)
    m["label_config"] = to_dict(label_cfg)
    result["methods"]["boxcaseg"] = m
    print(f"[{args.name}] boxcaseg: mIoU* {m['miou_star']:.3f} IoU@50 {m['iou50']:.3f} "
          f"IoU@75 {m['iou75']:.3f} fill {m['median_fill']:.2f} (GT {m['gt_median_fill']:.2f}) "
          f"drop {100 * m['drop_rate']:.1f}% {m['instances_per_s']:.1f} inst/s", flush=True)
    for thr in [float(t) for t in args.thresholds.split(",") if t]:
        tcfg = dataclasses.replace(label_cfg, threshold=thr)
        mt = _label("boxcaseg", coco, run / f"labels_t{thr}.json", tcfg, model, gt)
        result["methods"][f"boxcaseg t={thr}"] = mt
        print(f"[{args.name}] threshold {thr}: mIoU* {mt['miou_star']:.3f}", flush=True)
    if not args.skip_baselines:
        for method in ("box", "grabcut"):
            mb = _label(method, coco, run / f"labels_{method}.json", LabelConfig(device="cpu"),
                        None, gt)
            result["methods"][method] = mb
            print(f"[{args.name}] {method}: mIoU* {mb['miou_star']:.3f} IoU@50 {mb['iou50']:.3f} "
                  f"IoU@75 {mb['iou75']:.3f} {mb['instances_per_s']:.1f} inst/s", flush=True)
        gc = run / "labels_grabcut.json"
        n_empty = _empty_to_box(gc, run / "labels_grabcut_boxfallback.json")
        g0 = result["methods"]["grabcut"]
        summary = _SummaryLike(g0["drop_rate"], g0["instances"], g0["seconds"],
                               g0["instances_per_s"])
        mf = _score(gt, run / "labels_grabcut_boxfallback.json", summary)
        mf["replaced_empty"] = n_empty
        result["methods"]["grabcut, empty -> box"] = mf
        print(f"[{args.name}] grabcut, empty -> box ({n_empty} replaced): mIoU* "
              f"{mf['miou_star']:.3f} IoU@50 {mf['iou50']:.3f} IoU@75 {mf['iou75']:.3f}",
              flush=True)
        # the stronger GrabCut is the bar
        g = max((result["methods"][k] for k in ("grabcut", "grabcut, empty -> box")),
                key=lambda m: m["miou_star"])
        b = result["methods"]["boxcaseg"]
        result["boxcaseg_minus_grabcut"] = b["miou_star"] - g["miou_star"]
        result["label_speed_vs_grabcut"] = b["instances_per_s"] / g["instances_per_s"]
        print(f"[{args.name}] BoxCaseg - GrabCut: {result['boxcaseg_minus_grabcut']:+.3f} mIoU*, "
              f"labeling {result['label_speed_vs_grabcut']:.1f}x GrabCut", flush=True)
    result["load_after"] = os.getloadavg()
    (run / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
