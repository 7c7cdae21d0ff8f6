"""``boxcaseg label``: proxy masks for every box of a COCO (or VOC) dataset.

    boxcaseg label --method boxcaseg --images DIR --boxes in.json --out out.json \\
        --checkpoint ckpt.pt [--config label.yaml] [crop_size=320 drop_iou=0.95 ...] [--resume]
    boxcaseg label --method grabcut --voc VOCdevkit/VOC2012 --image-set train --out out.json
"""

from __future__ import annotations

import argparse
import logging

from boxcaseg.config import load_config
from boxcaseg.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("boxcaseg", "grabcut", "box"), default="boxcaseg",
                        help="mask source: the BoxCaseg model, GrabCut, or the filled box")
    parser.add_argument("--images", help="image folder (COCO file_name is relative to it)")
    parser.add_argument("--boxes", help="COCO JSON with the boxes to label")
    parser.add_argument("--voc", metavar="VOC_ROOT",
                        help="read boxes from a PASCAL VOC tree instead of --boxes/--images")
    parser.add_argument("--image-set", default="train",
                        help="VOC image set name or list file (with --voc; default: train)")
    parser.add_argument("--out", required=True, help="output COCO JSON with proxy masks")
    parser.add_argument("--checkpoint", help="trained BoxCaseg checkpoint (method boxcaseg)")
    parser.add_argument("--config", help="YAML with LabelConfig fields")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from OUT.partial.jsonl")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="LabelConfig overrides, e.g. crop_size=256 drop_iou=0.9")


def _load_data(args: argparse.Namespace):
    if args.voc:
        if args.boxes or args.images:
            raise ConfigError("--voc replaces --boxes/--images; give one or the other")
        from boxcaseg.data.voc import load_voc
        return load_voc(args.voc, args.image_set)
    if not args.boxes or not args.images:
        raise ConfigError("give --boxes in.json and --images DIR (or --voc VOC_ROOT)")
    from boxcaseg.data.coco import load_coco
    return load_coco(args.boxes, args.images)


def run(args: argparse.Namespace) -> int:
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.labeler import label_dataset

    cfg = load_config(LabelConfig, args.config, args.overrides)
    model = None
    if args.method == "boxcaseg":
        if not args.checkpoint:
            raise ConfigError("--method boxcaseg needs --checkpoint (a trained BoxCaseg model); "
                              "--method grabcut and --method box need none")
        from boxcaseg.engine.distributed import resolve_device
        from boxcaseg.model import load_boxcaseg
        model, _ = load_boxcaseg(args.checkpoint, map_location=resolve_device(cfg.device))
    elif args.checkpoint:
        log.warning("--checkpoint is ignored by --method %s", args.method)
    coco = _load_data(args)
    summary = label_dataset(coco, args.out, args.method, cfg, model=model, resume=args.resume,
                            progress=not args.no_progress)
    print(summary.format())
    print(f"wrote {args.out}")
    return 0
