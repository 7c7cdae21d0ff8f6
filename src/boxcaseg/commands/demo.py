"""``boxcaseg demo``: the paper end to end on the embedded synthetic data, one table.

    boxcaseg demo                     # ~12 min on 2 CPU cores; writes runs/demo/results.json
    boxcaseg demo --quick             # < 3 min smoke version (tiny data, a few steps each)
    boxcaseg demo --out runs/d2 --seed 1 --fresh

A re-run with the same flags reuses every finished stage (see boxcaseg/demo.py).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and a few steps per stage: checks the pipeline, "
                             "numbers are meaningless")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--fresh", action="store_true",
                        help="redo every stage instead of reusing finished ones")
    parser.add_argument("--all-maskrcnn", action="store_true",
                        help="also train Mask R-CNN on the filled-box and GrabCut masks (4 "
                        "instead of 2; ~5 more minutes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from boxcaseg.demo import run_demo

    # the demo is sized for 2 cores; more threads than cores only adds contention
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    from boxcaseg.io import check_output_path
    check_output_path(out, kind="dir")  # before 11 minutes of work, not after
    run_demo(out, quick=args.quick, seed=args.seed, fresh=args.fresh,
             progress=not args.no_progress, all_maskrcnn=args.all_maskrcnn)
    return 0
