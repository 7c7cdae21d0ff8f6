"""Labeling benchmark (paper Sec. 3.4, Tab. 7-8 analogues) on the embedded demo data.

    python bench/bench_label.py [--checkpoint C] [--data DIR] [--work DIR] [--train-steps N]

* speed: instances/s of ``label --method boxcaseg`` vs GrabCut, same run, same boxes (ratio);
  crops/s of the predictor under each inference switch (eager / channels_last / TorchScript /
  bf16, batch size, crop size) as a fraction of the ~120 crops/s fp32 ceiling of this machine;
* quality against the hidden GT masks (``boxes/train_gt.json``): mIoU*, IoU@50, IoU@75 of the
  box / GrabCut / BoxCaseg masks, with and without merge, and with the drop thresholds of
  Tab. 8 (0, .75, .85, .9, .95): drop rate and quality of the kept masks.

Writes a markdown section to ``bench/results_label.md``. Without ``--checkpoint`` a quick model
is trained with ``src/boxcaseg/configs/boxcaseg_demo_cpu.yaml`` (``--train-steps`` steps).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DROP_THRESHOLDS = (0.0, 0.75, 0.85, 0.90, 0.95)
FP32_CEILING = 120.0  # crops/s at 320x320 for tf_efficientnet_lite0 (183 GFLOP/s, 1.49 GFLOP)


def _log(msg: str) -> None:
    print(f"[bench_label] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# inputs


def ensure_data(data_dir: Path) -> Path:
    if (data_dir / "boxes" / "train.json").exists():
        return data_dir
    from boxcaseg.data.demo import make_demo_data
    _log(f"writing demo data to {data_dir}")
    make_demo_data(data_dir)
    return data_dir


def ensure_checkpoint(args: argparse.Namespace, data_dir: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from boxcaseg.config import load_config
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.engine.trainer import train
    out_dir = Path(args.work) / "boxcaseg"
    final = out_dir / "final.pt"
    if final.exists():
        return final
    cfg = load_config(TrainConfig, ROOT / "src" / "boxcaseg" / "configs" / "boxcaseg_demo_cpu.yaml", [
        f"salient_root={data_dir / 'salient'}", f"boxes_json={data_dir / 'boxes' / 'train.json'}",
        f"images_root={data_dir / 'boxes' / 'images'}", f"out_dir={out_dir}",
        f"max_steps={args.train_steps}", "num_workers=0"])
    _log(f"training a quick BoxCaseg model ({args.train_steps} steps) into {out_dir}")
    return train(cfg, resume=(out_dir / "last.pt").exists())


def make_coco_scale_set(root: Path, n_images: int = 12, per_image: int = 7) -> Path:
    """640x480 blocky images with COCO-like box sizes (30-300 px): speed comparison only."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns, aid = [], [], 1
    for i in range(n_images):
        h, w = 480, 640
        img = np.kron(rng.integers(0, 255, (h // 16, w // 16, 3)), np.ones((16, 16, 1)))
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{i}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": w, "height": h})
        for _ in range(per_image):
            bw, bh = rng.uniform(30, 300, 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": aid, "image_id": i + 1, "category_id": 1,
                         "bbox": [float(x), float(y), float(bw), float(bh)], "iscrowd": 0})
            aid += 1
    path = root / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path


# ---------------------------------------------------------------------------------------------
# quality


def quality(gt: dict, pred: dict, only_kept: bool = False) -> dict[str, float]:
    from boxcaseg.evaluation.instance_iou import mask_quality
    return mask_quality(gt, pred, only_kept=only_kept)


def _pct(q: dict, name: str) -> float:
    """mask_quality's fractions as percent; None (no instances scored) as nan."""
    v = q.get(name)
    return float("nan") if v is None else 100.0 * float(v)


def quality_row(q: dict) -> str:
    return f"{_pct(q, 'miou_star'):.1f} | {_pct(q, 'iou50'):.1f} | {_pct(q, 'iou75'):.1f}"


def with_threshold(pred: dict, thr: float) -> tuple[dict, float]:
    """Re-apply the drop rule at ``thr`` from the stored proxy_iou (masks unchanged)."""
    out = copy.copy(pred)
    anns, n, dropped = [], 0, 0
    for a in pred["annotations"]:
        if "proxy_iou" in a:
            a = dict(a)
            a["ignore_mask"] = a["area"] == 0 or a["proxy_iou"] < thr
            n += 1
            dropped += a["ignore_mask"]
        anns.append(a)
    out["annotations"] = anns
    return out, dropped / max(n, 1)


# ---------------------------------------------------------------------------------------------
# speed of the predictor alone


def crops_per_s(model, cfg, n: int = 32) -> float:
    from boxcaseg.labeling.predictor import BoxcasegPredictor
    pred = BoxcasegPredictor(model, cfg)
    g = torch.Generator().manual_seed(0)
    crops = torch.randn(n, 3, cfg.crop_size, cfg.crop_size, generator=g)
    pred.predict_crops(crops[: cfg.batch_size])  # warm-up (oneDNN primitive caches)
    t = time.perf_counter()
    pred.predict_crops(crops)
    return n / (time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="demo data folder (made if missing)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_label"))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--crop-sizes", default="320,224,160")
    p.add_argument("--micro", action=argparse.BooleanOptionalAction, default=True,
                   help="predictor crops/s under each inference switch")
    p.add_argument("--full", action="store_true",
                   help="also fp32 and upsample-to-crop runs on the demo data (slow)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results_label.md"))
    args = p.parse_args(argv)

    from boxcaseg.data.coco import load_coco
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.job.run import label_dataset

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]
    crop_sizes = [int(c) for c in args.crop_sizes.split(",")]
    main_crop = crop_sizes[0]

    # ---------------- inputs
    from boxcaseg.model import load_boxcaseg

    data_dir = ensure_data(Path(args.data) if args.data else work / "data")
    coco = load_coco(data_dir / "boxes" / "train.json", data_dir / "boxes" / "images")
    gt = json.loads((data_dir / "boxes" / "train_gt.json").read_text())
    ckpt = ensure_checkpoint(args, data_dir)
    model, mcfg = load_boxcaseg(ckpt, map_location="cpu")
    model_desc = f"`{ckpt}` ({mcfg.backbone})"

    base = LabelConfig(drop=False)  # drop is re-applied per threshold from proxy_iou

    def run(runs: dict, data, name: str, method: str, cfg: LabelConfig) -> None:
        out = work / f"{name}.json"
        s = label_dataset(data, out, method, cfg, model=model if method == "boxcaseg" else None,
                          progress=False)
        runs[name] = (json.loads(out.read_text()), s)
        _log(f"{name}: {s.instances_per_s:.2f} inst/s ({s.instances_this_run} in "
             f"{s.seconds:.1f} s, setup {s.setup_seconds:.1f} s)")

    # ---------------- COCO-scale speed (640x480 images: GrabCut cost grows with image size)
    coco_scale: dict = {}
    cs = load_coco(make_coco_scale_set(work / "coco_scale"), work / "coco_scale" / "images")
    run(coco_scale, cs, "coco_scale_grabcut", "grabcut", base)
    for crop in crop_sizes:
        run(coco_scale, cs, f"coco_scale_boxcaseg{crop}", "boxcaseg",
            dataclasses.replace(base, crop_size=crop))
    run(coco_scale, cs, f"coco_scale_boxcaseg{main_crop}_fp32", "boxcaseg",
        dataclasses.replace(base, crop_size=main_crop, precision="fp32"))

    # ---------------- demo data: speed + quality
    runs: dict = {}
    run(runs, coco, "box", "box", base)
    run(runs, coco, "box_nomerge", "box", dataclasses.replace(base, merge=False))
    run(runs, coco, "grabcut", "grabcut", base)
    run(runs, coco, "grabcut_nomerge", "grabcut", dataclasses.replace(base, merge=False))
    for crop in crop_sizes:
        run(runs, coco, f"boxcaseg{crop}", "boxcaseg", dataclasses.replace(base, crop_size=crop))
    run(runs, coco, f"boxcaseg{main_crop}_nomerge", "boxcaseg",
        dataclasses.replace(base, crop_size=main_crop, merge=False))
    if args.full:
        run(runs, coco, f"boxcaseg{main_crop}_fp32", "boxcaseg",
            dataclasses.replace(base, crop_size=main_crop, precision="fp32"))
        run(runs, coco, f"boxcaseg{main_crop}_upsample", "boxcaseg",
            dataclasses.replace(base, crop_size=main_crop, native_resolution=False))

    # ---------------- micro benchmark of the predictor
    micro: list[tuple[str, int, float]] = []  # (setting, crop, crops/s)
    if args.micro:
        for label, kw in [
            ("eager fp32, contiguous", dict(jit=False, channels_last=False, precision="fp32")),
            ("eager fp32, channels_last", dict(jit=False, precision="fp32")),
            ("TorchScript fp32, channels_last", dict(precision="fp32")),
            ("eager bf16 autocast, channels_last", dict(jit=False, precision="bf16")),
            ("TorchScript bf16, channels_last (default)", dict(precision="bf16")),
        ]:
            for bs in (8, 16, 32) if "default" in label else (16,):
                cfg = dataclasses.replace(LabelConfig(), batch_size=bs, **kw)
                r = crops_per_s(model, cfg)
                micro.append((f"{label}, batch {bs}, crop 320", 320, r))
                _log(f"micro {micro[-1][0]}: {r:.1f} crops/s")
        for crop in (c for c in crop_sizes if c != 320):  # 320: the rows above
            r = crops_per_s(model, LabelConfig(crop_size=crop))
            micro.append((f"TorchScript bf16, channels_last, batch 16, crop {crop}", crop, r))
            _log(f"micro {micro[-1][0]}: {r:.1f} crops/s")

    # ---------------- report
    cmd = " ".join(["python", "bench/bench_label.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "## Labeling (bench/bench_label.py)", "",
        f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (1 min); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Compare ratios within "
        "one run; absolute rates move with the load of this shared machine.  ",
        f"Model: {model_desc}.  ",
    ]
    n_inst = sum(1 for im in coco.images for a in im.annotations if not a.iscrowd)
    lines.append(f"Demo data: {len(coco.images)} images, {n_inst} instances.  ")

    def speed_table(title: str, rr: dict, gc_name: str) -> None:
        gc = rr[gc_name][1]
        lines.extend(["", f"### {title}", "", "| run | instances/s | x GrabCut | setup s |",
                      "|---|---|---|---|"])
        for name, (_, s) in rr.items():
            if "nomerge" in name or name.endswith("box"):
                continue
            lines.append(f"| {name} | {s.instances_per_s:.1f} | "
                         f"{s.instances_per_s / max(gc.instances_per_s, 1e-9):.1f} | "
                         f"{s.setup_seconds:.1f} |")

    speed_table("Speed on COCO-sized images (12 synthetic 640x480 images, 84 boxes of 30-300 px; "
                "same run, same boxes)", coco_scale, "coco_scale_grabcut")
    speed_table("Speed on the demo data (same run, same boxes)", runs, "grabcut")
    if micro:
        lines += ["", "### Predictor crops/s (model forward only, random crops)", "",
                  "| setting | crops/s | fp32 ceiling at that crop (crops/s) | of the ceiling |",
                  "|---|---|---|---|"]
        for k, crop, v in micro:
            ceiling = FP32_CEILING * (320 / crop) ** 2  # FLOPs scale with the crop's area
            lines.append(f"| {k} | {v:.1f} | {ceiling:.0f} | {100 * v / ceiling:.0f}% |")

    lines += ["", "### Quality vs the hidden GT masks (every mask, no drop)", "",
              "| masks | merge | mIoU* | IoU@50 | IoU@75 |", "|---|---|---|---|---|"]
    for name, (pred, _) in runs.items():
        merge = "no" if "nomerge" in name else "yes"
        lines.append(f"| {name} | {merge} | {quality_row(quality(gt, pred))} |")
    lines += ["", "### Drop via proxy box agreement (Tab. 8 thresholds; kept masks only)",
              "", "| masks | drop thr | drop rate | mIoU* | IoU@50 | IoU@75 |",
              "|---|---|---|---|---|---|"]
    names = ["box", "grabcut", f"boxcaseg{main_crop}"]
    for name in names:
        pred = runs[name][0]
        for thr in DROP_THRESHOLDS:
            pd, rate = with_threshold(pred, thr)
            lines.append(f"| {name} | {thr:.2f} | {rate:.2f} | "
                         f"{quality_row(quality(gt, pd, only_kept=True))} |")
    text = "\n".join(lines) + "\n"
    Path(args.results).write_text("# Labeling benchmark\n\n" + text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
