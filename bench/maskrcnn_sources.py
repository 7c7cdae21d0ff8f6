"""Proxy Mask R-CNN on a longer CPU schedule than the demo's: does the mask source matter?

    python bench/maskrcnn_sources.py [--demo runs/demo] [--iters 240] [--seed 0]

Trains the packaged CPU Mask R-CNN (``maskrcnn_demo_cpu.yaml``) on the masks the demo wrote
(``DEMO/labels/{box,grabcut,boxcaseg}.json``) and on the GT masks, with identical settings and
seed, and evaluates each on the demo's validation images. Run ``boxcaseg demo`` first.
Writes ``bench/results_maskrcnn.md``.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from boxcaseg.config import load_config
    from boxcaseg.config import packaged_config
    from boxcaseg.maskrcnn.config import MaskRCNNConfig
    from boxcaseg.maskrcnn.train import train_maskrcnn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default=str(ROOT / "runs" / "demo"))
    p.add_argument("--work", default=str(ROOT / "runs" / "maskrcnn_sources"))
    p.add_argument("--iters", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "bench" / "results_maskrcnn.md"))
    args = p.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))

    demo = Path(args.demo)
    data = demo / "data" / "boxes"
    sources = {"filled-box masks": demo / "labels" / "box.json",
               "GrabCut masks": demo / "labels" / "grabcut.json",
               "BoxCaseg proxy masks": demo / "labels" / "boxcaseg.json",
               "ground-truth masks (oracle)": data / "train_gt.json"}
    missing = [str(v) for v in sources.values() if not v.is_file()]
    if missing:
        raise SystemExit(f"missing {missing}: run `boxcaseg demo --out {demo}` first")
    rows = []
    for i, (name, train_json) in enumerate(sources.items()):
        out = Path(args.work) / str(i)
        cfg = load_config(MaskRCNNConfig, packaged_config("maskrcnn_demo_cpu.yaml"), [
            f"train_json={train_json}", f"images_root={data / 'images'}",
            f"val_json={data / 'val_gt.json'}", f"val_images_root={data / 'images'}",
            f"out_dir={out}", f"max_iters={args.iters}", f"steps=[{int(args.iters * 0.8)}]",
            f"seed={args.seed}", "device=cpu", f"checkpoint_every={10 ** 6}"])
        t0 = time.perf_counter()
        result = train_maskrcnn(cfg, progress=False)
        Path(result["last"]).unlink(missing_ok=True)
        m = result["metrics"]
        rows.append((name, m["segm"], m["voc"], time.perf_counter() - t0))
        print(f"{name}: mask AP {100 * m['segm']['AP']:.1f} AP50 {100 * m['segm']['AP50']:.1f}",
              flush=True)

    lines = [
        "# Proxy Mask R-CNN by mask source (bench/maskrcnn_sources.py)", "",
        f"Command: `python bench/maskrcnn_sources.py --iters {args.iters} --seed {args.seed}` "
        "(after `boxcaseg demo`)  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}  ",
        f"Packaged `maskrcnn_demo_cpu.yaml` (EfficientNet-Lite0-FPN, AdamW 3e-4, batch 2), "
        f"{args.iters} iterations (the demo runs 75), same seed for every source; "
        "evaluated on the demo's 40 validation images (175 objects), percent.", "",
        "| trained on | mask AP | AP50 | AP75 | VOC AP25 | VOC AP50 | VOC AP70 | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, segm, voc, secs in rows:
        lines.append(f"| {name} | {100 * segm['AP']:.1f} | {100 * segm['AP50']:.1f} | "
                     f"{100 * segm['AP75']:.1f} | {100 * voc['AP25']:.1f} | "
                     f"{100 * voc['AP50']:.1f} | {100 * voc['AP70']:.1f} | {secs:.0f} |")
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
