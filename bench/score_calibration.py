"""How well the per-mask ``score`` predicts the true mask IoU, and whether calibration holds.

For a trained BoxCaseg checkpoint and a box set with hidden GT masks: label every box with the
default LabelConfig, then per instance compare ``score`` and the paper's ``proxy_iou`` with
the true IoU: Spearman rank correlation and AUROC for "IoU >= 0.75". Then the calibration
hold-out check: fit the keep rule (``boxcaseg calibrate``'s ``fit``) on 50 random instances,
apply it to the other ones, and compare the kept mean IoU there with what calibration
predicted; repeated over ``--splits`` random splits (the first one, seed 0, is the headline),
and again with 100 calibration masks.

    # real photos (coco-dev; the checkpoint trained on ecssd-dev + coco-dev boxes)
    python bench/score_calibration.py --name coco-dev --checkpoint runs/mixed/f00/train/final.pt
    # the demo's data and its BoxCaseg model (trained here if missing: the demo's recipe)
    python bench/score_calibration.py --name demo --demo runs/score/demo
    python bench/score_calibration.py --table        # Markdown from runs/score/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from boxcaseg.data.coco import load_coco
from boxcaseg.evaluation.instance_iou import instance_records
from boxcaseg.io import atomic_write_json, read_json
from boxcaseg.labeling.calibrate import fit
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.job.run import label_dataset
from boxcaseg.labeling.score import auroc, spearman

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"
GOALS = ({"min_kept_iou": 0.75}, {"keep": 0.8})


def demo_inputs(root: Path) -> tuple[Path, Path, Path, Path]:
    """(checkpoint, boxes, gt, images) of the full demo's data + BoxCaseg model under root."""
    from boxcaseg.data.demo import make_demo_data
    from boxcaseg.demo import FULL, boxcaseg_train_config
    from boxcaseg.engine.trainer import train

    data = make_demo_data(root / "data", seed=0, n_salient=FULL.n_salient,
                          n_train=FULL.n_train, n_val=FULL.n_val, image_size=FULL.image_size,
                          salient_size=FULL.salient_size)
    ckpt = root / "boxcaseg" / "final.pt"
    if not ckpt.is_file():
        cfg = boxcaseg_train_config(data, root / "boxcaseg", FULL, FULL.boxcaseg_steps,
                                    ["weak", "salient", "transferred"], 0)
        train(cfg, resume=(root / "boxcaseg" / "last.pt").exists(), progress=False)
    return ckpt, data["train"], data["train_gt"], data["images"]


def holdout(sig: np.ndarray, iou: np.ndarray, goal: dict, n_fit: int, splits: int) -> dict:
    rows = []
    for seed in range(splits):
        perm = np.random.default_rng(seed).permutation(len(iou))
        a, b = perm[:n_fit], perm[n_fit:]
        cal = fit(sig[a], iou[a], **goal)
        kept = sig[b] >= cal.chosen.threshold
        got = float(iou[b][kept].mean()) if kept.any() else float("nan")
        rows.append({"seed": seed, "threshold": cal.chosen.threshold,
                     "predicted_kept_iou": cal.chosen.kept_mean_iou,
                     "predicted_kept_fraction": cal.chosen.kept_fraction,
                     "interval": cal.interval,
                     "in_interval": bool(cal.interval is not None
                                         and cal.interval[0] <= got <= cal.interval[1]),
                     "heldout_kept_iou": got, "heldout_kept_fraction": float(kept.mean()),
                     "abs_error": abs(got - cal.chosen.kept_mean_iou)})
    err = np.array([r["abs_error"] for r in rows])
    return {"goal": goal, "n_fit": n_fit, "n_heldout": len(iou) - n_fit, "splits": rows,
            "median_abs_error": float(np.median(err)),
            "within_0.02": float((err <= 0.02).mean()),
            "in_interval": float(np.mean([r["in_interval"] for r in rows]))}


def measure(name: str, ckpt: Path, boxes: Path, gt_path: Path, images: Path, out: Path,
            n_fit: list[int], splits: int, label_overrides: list[str]) -> dict:
    from boxcaseg.config import load_config, to_dict
    from boxcaseg.model.boxcaseg import load_boxcaseg

    model, _ = load_boxcaseg(ckpt, map_location="cpu")
    cfg = load_config(LabelConfig, None, ["device=cpu", *label_overrides])
    labels_path = out / f"{name}_labels.json"
    load = os.getloadavg()
    t0 = time.perf_counter()
    label_dataset(load_coco(boxes, images), labels_path, "boxcaseg", cfg, model=model,
                  progress=False)
    seconds = time.perf_counter() - t0
    labels, gt = read_json(labels_path), read_json(gt_path)
    preds = {int(a["id"]): a for a in labels["annotations"]}
    recs = instance_records(gt, labels)
    iou = np.array([r.iou for r in recs])
    score = np.array([float(preds[r.ann_id]["score"]) for r in recs])
    proxy = np.array([float(preds[r.ann_id]["proxy_iou"]) for r in recs])
    good = iou >= 0.75
    result = {
        "name": name, "checkpoint": str(ckpt), "boxes": str(boxes), "gt": str(gt_path),
        "instances": len(recs), "mean_iou": float(iou.mean()), "frac_iou_ge_0.75":
        float(good.mean()), "label_config": to_dict(cfg), "label_seconds": seconds,
        "load_before": load, "command": " ".join([sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "signals": {k: {"spearman": spearman(v, iou), "auroc_iou75": auroc(v, good)}
                    for k, v in (("score", score), ("proxy_iou", proxy))},
        "holdout": {sig_name: [holdout(v, iou, g, n, splits) for n in n_fit for g in GOALS]
                    for sig_name, v in (("score", score), ("proxy_iou", proxy))},
    }
    atomic_write_json(out / f"{name}.json", result)
    return result


def table(out: Path) -> None:
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))
            if not f.name.endswith("_labels.json")]
    rows = [r for r in rows if isinstance(r, dict) and "signals" in r]
    print("| data | instances | mean IoU | IoU>=0.75 | signal | Spearman | AUROC (IoU>=0.75) |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        for k, m in r["signals"].items():
            print(f"| {r['name']} | {r['instances']} | {r['mean_iou']:.3f} | "
                  f"{r['frac_iou_ge_0.75']:.3f} | {k} | {m['spearman']:.3f} | "
                  f"{m['auroc_iou75']:.3f} |")
    print()
    print("| data | signal | goal | fit on | seed-0 threshold | predicted kept mIoU | "
          "90 % range | held-out kept mIoU | error | held-out kept | median error | "
          "within 0.02 | in range |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for sig, hs in r["holdout"].items():
            for h in hs:
                s0 = h["splits"][0]
                goal = ", ".join(f"{k} {v}" for k, v in h["goal"].items())
                print(f"| {r['name']} | {sig} | {goal} | {h['n_fit']} | {s0['threshold']:.3f} | "
                      f"{s0['predicted_kept_iou']:.3f} | {s0['interval'][0]:.3f}-"
                      f"{s0['interval'][1]:.3f} | {s0['heldout_kept_iou']:.3f} | "
                      f"{s0['abs_error']:.3f} | {s0['heldout_kept_fraction']:.3f} | "
                      f"{h['median_abs_error']:.3f} | {h['within_0.02']:.2f} | "
                      f"{h['in_interval']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="coco-dev")
    p.add_argument("--checkpoint")
    p.add_argument("--coco", default=str(SHARED / "coco-dev"),
                   help="folder with boxes.json, annotations.json and images/")
    p.add_argument("--demo", metavar="DIR", help="use the demo data + model under DIR")
    p.add_argument("--out", default="runs/score")
    p.add_argument("--n-fit", type=int, nargs="+", default=[50, 100],
                   help="calibration set sizes (the first is the headline)")
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--table", action="store_true")
    p.add_argument("label", nargs="*", help="LabelConfig KEY=VALUE overrides")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.table:
        table(out)
        return 0
    if args.demo:
        ckpt, boxes, gt, images = demo_inputs(Path(args.demo))
    else:
        if not args.checkpoint:
            p.error("--checkpoint (or --demo DIR) is required")
        d = Path(args.coco)
        ckpt, boxes, gt, images = (Path(args.checkpoint), d / "boxes.json",
                                   d / "annotations.json", d / "images")
    r = measure(args.name, ckpt, boxes, gt, images, out, args.n_fit, args.splits, args.label)
    print(json.dumps({k: r[k] for k in ("name", "instances", "mean_iou", "signals")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
