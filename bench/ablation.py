"""Head ablation on the demo data (paper Tab. 5 analogue): weak only / weak+salient /
weak+transferred / all three, same data, same steps, same labeling settings.

    python bench/ablation.py [--data runs/demo/data] [--work runs/ablation] [--steps 240]

Each variant is trained with the packaged CPU demo config (``boxcaseg_demo_cpu.yaml``), then
labels the demo's training boxes at the demo's crop size; the proxy masks are scored against
the hidden GT masks (mIoU*, IoU@50/75, all instances and the kept ones after drop). Finished
variants are reused (``OUT/<variant>/final.pt``). Writes ``bench/results_ablation.md``.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "weak only (BBTP-style MIL)": ["weak"],
    "weak + salient": ["weak", "salient"],
    "weak + transferred": ["weak", "transferred"],
    "weak + salient + transferred (BoxCaseg)": ["weak", "salient", "transferred"],
}


def main() -> None:
    from boxcaseg.data.coco import load_coco
    from boxcaseg.data.demo import make_demo_data
    from boxcaseg.demo import FULL, boxcaseg_train_config
    from boxcaseg.engine.trainer import train
    from boxcaseg.evaluation.instance_iou import mask_quality
    from boxcaseg.io import read_json
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.job.run import label_dataset
    from boxcaseg.model.boxcaseg import load_boxcaseg

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "runs" / "demo" / "data"))
    p.add_argument("--work", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--steps", type=int, default=FULL.boxcaseg_steps)
    p.add_argument("--crop", type=int, default=FULL.label_crop)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "bench" / "results_ablation.md"))
    args = p.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))

    data = make_demo_data(args.data, args.seed, n_salient=FULL.n_salient, n_train=FULL.n_train,
                          n_val=FULL.n_val, image_size=FULL.image_size,
                          salient_size=FULL.salient_size)
    gt = read_json(data["train_gt"])
    coco = load_coco(data["train"], data["images"])
    rows = []
    for name, heads in VARIANTS.items():
        out = Path(args.work) / "_".join(heads)
        cfg = boxcaseg_train_config(data, out, FULL, args.steps, heads, args.seed)
        t0 = time.perf_counter()
        if not (out / "final.pt").is_file():
            train(cfg, resume=(out / "last.pt").is_file(), progress=False)
        train_s = time.perf_counter() - t0
        model, _ = load_boxcaseg(out / "final.pt")
        labels = out / "labels.json"
        summary = label_dataset(coco, labels, "boxcaseg", LabelConfig(crop_size=args.crop,
                                                                      device="cpu"),
                                model=model, progress=False)
        q = mask_quality(gt, read_json(labels))
        kept = mask_quality(gt, read_json(labels), only_kept=True)
        rows.append((name, q, kept, summary.drop_rate, train_s))
        print(f"{name}: mIoU* {100 * q['miou_star']:.1f}  IoU@50 {100 * q['iou50']:.1f}  "
              f"IoU@75 {100 * q['iou75']:.1f}  kept mIoU* {100 * kept['miou_star']:.1f} "
              f"(drop {100 * summary.drop_rate:.1f}%)", flush=True)

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    lines = [
        "# Head ablation on the demo data (bench/ablation.py)", "",
        f"Command: `python bench/ablation.py --steps {args.steps} --crop {args.crop} "
        f"--seed {args.seed}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}  ",
        f"Training: packaged `boxcaseg_demo_cpu.yaml` (tf_efficientnet_lite0, offline ImageNet "
        f"weights), {args.steps} steps of 16 (9 box + 7 salient crops); labeling crop "
        f"{args.crop}, threshold 0.5, merge on, drop at proxy IoU 0.95.  ",
        f"Proxy masks of the {len(gt['annotations'])} training boxes vs the hidden GT masks "
        "(percent).", "",
        "| heads | mIoU* | IoU@50 | IoU@75 | drop rate | mIoU* of kept | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, q, kept, drop, secs in rows:
        lines.append(f"| {name} | {f(q['miou_star'])} | {f(q['iou50'])} | {f(q['iou75'])} | "
                     f"{100 * drop:.1f}% | {f(kept['miou_star'])} | {secs:.0f} |")
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
