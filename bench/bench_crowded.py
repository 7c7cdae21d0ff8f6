"""Peak memory of ``boxcaseg label`` on one crowded image (issue 19): 1000 and 3000 boxes on
one 1024x768 photo-sized image, ``--method boxcaseg`` (an EfficientNet-Lite0 BoxCaseg at the
real-photo recipe's crop 160, untrained: memory does not depend on the weights) and
``--method box``. Each run is its own process; the peak resident set size comes from
``getrusage(RUSAGE_CHILDREN)``. ``--baseline-src`` measures another checkout the same way in
the same run (e.g. the code before crops were made in groups), for the ratio.

    python bench/bench_crowded.py [--baseline-src /path/to/old/src] [--boxes 1000 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_data(root: Path, n_boxes: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h, w = 768, 1024
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "images" / "crowd.jpg", quality=90)
    bw = rng.uniform(12, 120, n_boxes)
    bh = rng.uniform(12, 120, n_boxes)
    x = rng.uniform(0, w - bw)
    y = rng.uniform(0, h - bh)
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "bbox": [round(float(a), 2), round(float(b), 2), round(float(c), 2),
                      round(float(d), 2)], "area": float(c * d)}
            for i, (a, b, c, d) in enumerate(zip(x, y, bw, bh))]
    data = {"images": [{"id": 1, "file_name": "crowd.jpg", "width": w, "height": h}],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    path = root / f"boxes_{n_boxes}.json"
    path.write_text(json.dumps(data))
    return path


def make_checkpoint(path: Path) -> Path:
    from boxcaseg.config import to_dict
    from boxcaseg.model import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none",
                      out_indices=(1, 2, 3, 4), head_channels=64, transfer_hidden=64)
    torch.save({"model": build_model(cfg).state_dict(), "model_config": to_dict(cfg),
                "train_config": {"crop_size": 160}}, path)
    return path


def peak_rss_mib(src: Path, args: list[str]) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of ``boxcaseg label ARGS`` run from ``src``."""
    code = ("import resource, sys; from boxcaseg.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="2")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, "label", *args, "--no-progress"],
                         env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"label failed:\n{out.stderr[-2000:]}")
    kib = int(next(line.split()[1] for line in out.stdout.splitlines()
                   if line.startswith("PEAK")))
    return kib / 1024, took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boxes", type=int, nargs="+", default=[1000, 3000])
    p.add_argument("--baseline-src", default=None)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_crowded.json"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="crowded-"))
    ckpt = make_checkpoint(work / "lite0.pt")
    sources = {"this": REPO / "src"}
    if args.baseline_src:
        sources["baseline"] = Path(args.baseline_src)
    rows = []
    for n in args.boxes:
        boxes = make_data(work, n)
        for method in ("boxcaseg", "box"):
            for name, src in sources.items():
                extra = ["--checkpoint", str(ckpt)] if method == "boxcaseg" else []
                out = work / f"{name}-{method}-{n}.json"
                mib, s = peak_rss_mib(src, ["--method", method, "--boxes", str(boxes),
                                            "--images", str(work / "images"), "--out",
                                            str(out), *extra])
                rows.append({"boxes": n, "method": method, "code": name,
                             "peak_rss_mib": round(mib), "seconds": round(s, 1)})
                print(rows[-1], flush=True)
    result = {"command": " ".join([sys.executable, *sys.argv]),
              "load": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
