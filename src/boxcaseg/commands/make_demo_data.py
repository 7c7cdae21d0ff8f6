"""``boxcaseg make-demo-data OUT``: write the embedded synthetic dataset.

    boxcaseg make-demo-data data/demo --seed 0 [--n-salient 300 --n-train 120 --n-val 40
        --image-size 256 --salient-size 224]

Re-running with the same arguments on a complete output reuses it (nothing is rewritten).
"""

from __future__ import annotations

import argparse
import json

from boxcaseg.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-salient", type=int, default=300,
                        help="number of salient images (default 300)")
    parser.add_argument("--n-train", type=int, default=120,
                        help="number of box-supervised train images (default 120)")
    parser.add_argument("--n-val", type=int, default=40,
                        help="number of validation images with GT masks (default 40)")
    parser.add_argument("--image-size", type=int, default=256,
                        help="width of the box images; height is 0.75-1.0 x width (default 256)")
    parser.add_argument("--salient-size", type=int, default=224,
                        help="side of the square salient images (default 224)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.data.demo import make_demo_data
    from boxcaseg.io import check_output_path

    check_output_path(args.out, kind="dir")

    try:
        paths = make_demo_data(args.out, args.seed, n_salient=args.n_salient,
                               n_train=args.n_train, n_val=args.n_val,
                               image_size=args.image_size, salient_size=args.salient_size,
                               progress=not args.no_progress)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    for name in ("salient", "images", "train", "train_gt", "val_gt", "readme", "meta"):
        print(f"{name:<10} {paths[name]}")
    print("counts     " + ", ".join(f"{k}={v}" for k, v in meta["counts"].items()))
    return 0
