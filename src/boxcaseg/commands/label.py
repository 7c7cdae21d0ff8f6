"""``boxcaseg label``: proxy masks for every box of a COCO (or VOC) dataset.

    boxcaseg label --method boxcaseg --images DIR --boxes in.json --out out.json \\
        --checkpoint ckpt.pt [--config label.yaml] [crop_size=320 drop_iou=0.95 ...] [--resume]
    boxcaseg label --method grabcut --voc VOCdevkit/VOC2012 --image-set train --out out.json
    boxcaseg label --method sam --sam-checkpoint sam_vit_b_01ec64.pth [--sam-model vit_b] \
        --images DIR --boxes in.json --out out.json      (pip install -e ".[sam]")
    torchrun --nproc_per_node=4 -m boxcaseg.cli label ...      (one shard per process)
    boxcaseg label ... --shard 3/8 --out part3.jsonl           (job arrays; then merge-labels)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from boxcaseg.config import load_config
from boxcaseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("boxcaseg", "grabcut", "box", "sam"),
                        default="boxcaseg",
                        help="mask source: the BoxCaseg model, GrabCut, the filled box, or a "
                        "Segment Anything checkpoint (sam)")
    parser.add_argument("--images", help="image folder (COCO file_name is relative to it)")
    parser.add_argument("--boxes", help="COCO JSON with the boxes to label")
    parser.add_argument("--voc", metavar="VOC_ROOT",
                        help="read boxes from a PASCAL VOC tree instead of --boxes/--images")
    parser.add_argument("--image-set", default="train",
                        help="VOC image set name or list file (with --voc; default: train)")
    parser.add_argument("--out", required=True, help="output COCO JSON with proxy masks")
    parser.add_argument("--checkpoint", help="trained BoxCaseg checkpoint (method boxcaseg)")
    parser.add_argument("--sam-checkpoint", metavar="PATH",
                        help="SAM checkpoint .pth (method sam; needs pip install -e \".[sam]\")")
    parser.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"),
                        help="SAM model type of --sam-checkpoint (sets the sam_model config "
                        "field; default vit_b)")
    parser.add_argument("--config", help="YAML with LabelConfig fields")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: finished images are kept unless "
                        "their annotations changed (any number of processes / shards; device, "
                        "batch size, jit and precision may change; the method, mask settings "
                        "and model may not)")
    parser.add_argument("--format", choices=("dataset", "results", "jsonl"), default="dataset",
                        help="dataset: the input COCO JSON with masks (default); results: a "
                        "COCO results list with score (loadRes, COCOeval); jsonl: one line per "
                        "image")
    parser.add_argument("--segmentation", choices=("rle", "polygon"),
                        help="mask encoding: compressed RLE (default) or exact polygons "
                        "(sets the segmentation config field)")
    parser.add_argument("--shard", metavar="K/N",
                        help="label only shard K (0-based) of N and write it as a part file to "
                        "--out; join the parts with `boxcaseg merge-labels`")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="LabelConfig overrides, e.g. crop_size=256 drop_iou=0.9")


def _load_data(args: argparse.Namespace, keep_gt_masks: bool = True):
    if args.voc:
        if args.boxes or args.images:
            raise ConfigError("--voc replaces --boxes/--images; give one or the other")
        from boxcaseg.data.voc import load_voc
        return load_voc(args.voc, args.image_set)
    if not args.boxes or not args.images:
        raise ConfigError("give --boxes in.json and --images DIR (or --voc VOC_ROOT)")
    from boxcaseg.data.coco import load_coco
    # GT masks that will be passed through are checked now, with the boxes, before any work
    return load_coco(args.boxes, args.images, masks="gt" if keep_gt_masks else None)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text}: need N >= 1 and 0 <= K < N (K is 0-based)")
    return k, n


def run(args: argparse.Namespace) -> int:
    from boxcaseg.engine.distributed import cleanup, init_distributed
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.job.inputs import BoxInput
    from boxcaseg.labeling.job.run import DIST_TIMEOUT, label_job

    cfg = load_config(LabelConfig, args.config, args.overrides)
    if args.segmentation:
        cfg = dataclasses.replace(cfg, segmentation=args.segmentation)
    if args.sam_model:
        cfg = dataclasses.replace(cfg, sam_model=args.sam_model)
    shard = parse_shard(args.shard) if args.shard else None
    if shard is not None and args.format != "dataset":
        log.warning("--format is chosen when the parts are joined (merge-labels --format); "
                    "ignored with --shard")
    if args.method == "boxcaseg" and not args.checkpoint:
        raise ConfigError("--method boxcaseg needs --checkpoint (a trained BoxCaseg model); "
                          "--method grabcut and --method box need none")
    if args.method == "sam":
        if not args.sam_checkpoint:
            raise ConfigError("--method sam needs --sam-checkpoint (a Segment Anything "
                              ".pth, e.g. sam_vit_b_01ec64.pth) and --sam-model if it is not "
                              "vit_b")
        from boxcaseg.labeling.sam import import_segment_anything
        import_segment_anything()  # the extra's absence is one line, before any data is read
        if args.checkpoint:
            log.warning("--checkpoint (a BoxCaseg model) is ignored by --method sam")
        if not Path(args.sam_checkpoint).is_file():
            raise DataError(f"{args.sam_checkpoint}: SAM checkpoint not found "
                            "(--sam-checkpoint)")
    elif args.sam_checkpoint:
        log.warning("--sam-checkpoint is ignored by --method %s", args.method)
    if args.images and not Path(args.images).is_dir():
        raise DataError(f"{args.images}: image folder not found (--images is the folder the "
                        "COCO file_name entries are relative to)")
    from boxcaseg.io import check_output_path
    check_output_path(args.out, inputs=[("--boxes", args.boxes)])  # before hours of labeling
    # input errors first, before any process group or model
    coco = _load_data(args, cfg.keep_gt_masks)
    boxes = BoxInput.from_coco(coco, keep_gt_masks=cfg.keep_gt_masks)
    del coco  # the compact form is all labeling needs
    info = init_distributed(cfg.device, timeout=DIST_TIMEOUT)
    try:
        model = None
        if args.method == "boxcaseg":
            from boxcaseg.model import load_boxcaseg
            model, _ = load_boxcaseg(args.checkpoint, map_location=info.device)
        elif args.method == "sam":
            from boxcaseg.labeling.sam import SamSource
            model = SamSource.from_config(args.sam_checkpoint, cfg, device=info.device)
        elif args.checkpoint:
            log.warning("--checkpoint is ignored by --method %s", args.method)
        summary = label_job(boxes, args.out, args.method, cfg, model=model, resume=args.resume,
                            progress=not args.no_progress, fmt=args.format, shard=shard,
                            dist=info)
    finally:
        cleanup(info)
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {summary.images} images, "
              f"{summary.instances_this_run} instances labeled in this run "
              f"({summary.images_resumed} images resumed), "
              f"{summary.instances_per_s:.2f} instances/s")
        print(f"wrote part {args.out} (join the parts with `boxcaseg merge-labels`)")
    elif info.is_main:
        print(summary.format())
        print(f"wrote {args.out}")
    return 0
