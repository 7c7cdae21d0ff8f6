"""Cost of the up-front training-data screen (issue 12) against decoding the same images.

``boxcaseg train`` and ``train-maskrcnn`` read every box image's header (size, EXIF
orientation) before the first step; this measures that per image, next to a full decode
(what the first epoch does anyway), in the same run. Images: any folder of JPEG/PNG files
(read only; nothing is copied or written besides the results file).

    python bench/bench_screen.py /work/shared/data/real --limit 600 --out bench/results_screen.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from PIL import Image

from boxcaseg.io import EXIF_ORIENTATION, image_size, read_image_rgb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--limit", type=int, default=600)
    p.add_argument("--decode", type=int, default=100, help="images to decode fully")
    p.add_argument("--out", help="append a results block to this markdown file")
    args = p.parse_args()
    paths = sorted(q for q in Path(args.folder).rglob("*")
                   if q.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    if not paths:
        print(f"{args.folder}: no images", file=sys.stderr)
        return 2
    for q in paths[:20]:  # warm the page cache for both measurements alike
        q.read_bytes()
    t = time.perf_counter()
    for q in paths:
        image_size(q)
    header_ms = 1e3 * (time.perf_counter() - t) / len(paths)
    sub = paths[: args.decode]
    t = time.perf_counter()
    for q in sub:
        read_image_rgb(q)
    decode_ms = 1e3 * (time.perf_counter() - t) / len(sub)
    tagged = 0
    for q in paths:
        with Image.open(q) as im:
            tagged += im.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    load = os.getloadavg()
    block = "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"command: `python bench/bench_screen.py {args.folder} --limit {args.limit} "
        f"--decode {args.decode}`",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "",
        "| what | ms per image |",
        "|---|---:|",
        f"| header + EXIF size (`io.image_size`), {len(paths)} images | {header_ms:.3f} |",
        f"| full decode (`io.read_image_rgb`), {len(sub)} images | {decode_ms:.2f} |",
        "",
        f"ratio header / decode: {header_ms / decode_ms:.4f}; images with an EXIF orientation "
        f"tag other than 1: {tagged} of {len(paths)}",
        "",
    ])
    print(block)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(block + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
