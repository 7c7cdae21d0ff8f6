"""``boxcaseg eval``: score masks against ground truth, or detections by AP.

    boxcaseg eval --gt gt.json --pred labels.json [--only-kept] [--out metrics.json]
        box->mask quality of a labeler's output (same annotation ids as the GT):
        mIoU*, IoU@50, IoU@75, per size and per class
    boxcaseg eval --gt gt.json --pred results.json [--out metrics.json]
        mask AP of a COCO results list (Mask R-CNN predictions): COCO AP table and
        VOC AP table (IoU 0.25 / 0.50 / 0.70 / 0.75)

``--kind`` defaults to ``masks`` when PRED is a COCO dict with "annotations" and to
``results`` when it is a list.
"""

from __future__ import annotations

import argparse
from typing import Any

from boxcaseg.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + "\n\n" + __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--gt", required=True, help="COCO JSON with ground-truth masks")
    parser.add_argument("--pred", required=True,
                        help="labeler output (COCO dict) or Mask R-CNN results (COCO results list)")
    parser.add_argument("--kind", choices=("masks", "results"),
                        help="what PRED holds (default: from its shape)")
    parser.add_argument("--only-kept", action="store_true",
                        help="masks: score only masks without ignore_mask (the kept ones)")
    parser.add_argument("--per-class", action="store_true", help="results: per-class VOC AP rows")
    parser.add_argument("--iou-type", choices=("segm", "bbox"), default="segm",
                        help="results: COCO AP on masks (default) or boxes")
    parser.add_argument("--verbose-cocoeval", action="store_true",
                        help="results: show COCOeval's own summary")
    parser.add_argument("--out", help="write the metrics as JSON here (atomically)")


def detect_kind(pred: Any, source: str) -> str:
    if isinstance(pred, dict) and "annotations" in pred:
        return "masks"
    if isinstance(pred, list):
        return "results"
    raise DataError(f"{source}: neither a COCO dict with 'annotations' (labeler output) nor a "
                    "list of COCO results")


def run(args: argparse.Namespace) -> int:
    if not args.out:
        return _run(args)
    from boxcaseg.io import check_output_path, remove_stale_temp_files
    from boxcaseg.runlock import OutputLock

    # before reading and scoring anything
    out = check_output_path(args.out, kind="file",
                            inputs=[("--gt", args.gt), ("--pred", args.pred)])
    with OutputLock(out.resolve(), "boxcaseg eval"):
        remove_stale_temp_files(out)  # left by a killed run
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from boxcaseg.data.coco import parse_coco
    from boxcaseg.evaluation import report
    from boxcaseg.io import atomic_write_json, read_json

    gt = parse_coco(read_json(args.gt), str(args.gt), masks="truth")
    pred = read_json(args.pred)
    kind = args.kind or detect_kind(pred, str(args.pred))
    metrics: dict[str, Any] = {"kind": kind, "gt": str(args.gt), "pred": str(args.pred)}
    if kind == "masks":
        from boxcaseg.evaluation.instance_iou import mask_quality
        if not isinstance(pred, dict):
            raise DataError(f"{args.pred}: --kind masks needs a COCO dict with 'annotations'")
        # same validation as every other input
        pred_coco = parse_coco(pred, str(args.pred), masks="labels")
        q = mask_quality(gt, pred_coco, only_kept=args.only_kept)
        metrics.update(q)
        print(report.format_quality(q))
    else:
        if args.only_kept:
            raise ConfigError("--only-kept applies to --kind masks only")
        from boxcaseg.evaluation.coco_ap import coco_mask_ap
        from boxcaseg.evaluation.voc_ap import voc_mask_ap
        if not isinstance(pred, list):
            raise DataError(f"{args.pred}: --kind results needs a list of COCO results")
        try:
            coco = coco_mask_ap(gt, pred, args.iou_type, verbose=args.verbose_cocoeval)
            voc = voc_mask_ap(gt, pred) if args.iou_type == "segm" else None
        except DataError as e:
            raise DataError(f"{args.pred}: {e}") from e
        metrics["coco"] = coco
        print(report.format_coco_ap(coco, "COCO mask AP" if args.iou_type == "segm"
                                    else "COCO box AP"))
        if voc is not None:
            metrics["voc"] = voc
            print()
            print(report.format_voc_ap(voc, per_class=args.per_class))
    if args.out:
        atomic_write_json(args.out, metrics, indent=1)
        print(f"wrote {args.out}")
    return 0
