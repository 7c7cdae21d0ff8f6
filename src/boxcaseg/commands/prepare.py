"""``boxcaseg prepare {duts-single,voc}``: derive the paper's training sets from public data.

    boxcaseg prepare duts-single --duts DUTS-TR --out data/duts_single
    boxcaseg prepare voc --voc VOCdevkit/VOC2012 --sbd benchmark_RELEASE --out data/voc_aug
"""

from __future__ import annotations

import argparse
import json

from boxcaseg.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="dataset")

    d = sub.add_parser("duts-single", help="keep the DUTS-TR images whose mask is one object",
                       description="Filter DUTS-TR into DUTS-Single (images/ + masks/ + "
                                   "manifest.json). Rule: binarise (>127), 8-connected "
                                   "components, ignore specks, keep iff exactly one remains.")
    d.add_argument("--duts", required=True, help="DUTS-TR folder (holds DUTS-TR-Image/ and "
                                                  "DUTS-TR-Mask/)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--min-component-fraction", type=float, default=0.05,
                   help="components below this fraction of the mask area are specks, ignored "
                        "(default 0.05)")
    d.add_argument("--min-mask-fraction", type=float, default=0.0,
                   help="drop masks covering less than this fraction of the image (default 0: off)")
    d.add_argument("--fill-holes", action="store_true",
                   help="fill mask holes first (an object inside another's hole then "
                        "counts as one)")
    d.add_argument("--threshold", type=int, default=127, help="foreground iff mask > this (127)")
    d.add_argument("--exclude-classes", metavar="FILE",
                   help="text file of image names (one per line) to drop as 'excluded', e.g. "
                        "images showing PASCAL categories; DUTS has no class labels, so this "
                        "list is yours to make")
    d.add_argument("--clean-masks", action="store_true",
                   help="write 0/255 masks with the ignored specks removed instead of linking")
    mode = d.add_mutually_exclusive_group()
    mode.add_argument("--link", dest="mode", action="store_const", const="link",
                      help="symlink images and masks (default)")
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy",
                      help="copy images and masks")
    d.set_defaults(mode="link")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("voc", help="augmented VOC 2012 (SBD + VOC) as COCO JSON",
                       description="Write voc_aug_train.json (10,582 train images, boxes), "
                                   "voc_2012_val_gt.json (1,449 val images, GT masks) and "
                                   "optionally voc_aug_train_gt.json (SBD/VOC GT masks).")
    v.add_argument("--voc", required=True, help="VOCdevkit/VOC2012")
    v.add_argument("--sbd", required=True, help="SBD benchmark_RELEASE (or its dataset/ folder)")
    v.add_argument("--out", required=True, help="output folder for the JSON files")
    v.add_argument("--train-gt", action="store_true",
                   help="also write voc_aug_train_gt.json (GT masks of the train images: VOC "
                        "PNG where present, else SBD inst/*.mat) for the oracle")
    v.add_argument("--min-iou", type=float, default=0.5,
                   help="min IoU between an instance's tight box and its XML box (default 0.5)")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.io import check_output_path
    check_output_path(args.out, kind="dir")  # before reading thousands of files
    if args.dataset == "duts-single":
        from boxcaseg.prepare.duts_single import (DutsSingleParams, prepare_duts_single,
                                                  read_exclude_list)
        for flag, value in (("--min-component-fraction", args.min_component_fraction),
                            ("--min-mask-fraction", args.min_mask_fraction)):
            if not 0.0 <= value <= 1.0:
                raise DataError(f"{flag} must be within [0, 1], got {value}")
        params = DutsSingleParams(min_component_fraction=args.min_component_fraction,
                                  min_mask_fraction=args.min_mask_fraction,
                                  fill_holes=args.fill_holes, threshold=args.threshold,
                                  mode=args.mode, clean_masks=args.clean_masks)
        exclude = read_exclude_list(args.exclude_classes) if args.exclude_classes else None
        manifest = prepare_duts_single(args.duts, args.out, params, exclude,
                                       progress=not args.no_progress)
        print(json.dumps(manifest["counts"], indent=1))
        print(f"wrote {args.out}/images, {args.out}/masks, {args.out}/manifest.json")
        return 0
    if args.dataset == "voc":
        from boxcaseg.prepare.voc_aug import prepare_voc_aug
        report = prepare_voc_aug(args.voc, args.sbd, args.out, train_gt=args.train_gt,
                                 min_iou=args.min_iou, progress=not args.no_progress)
        for name, info in report["files"].items():
            print(f"{args.out}/{name}: {info['images']} images, {info['annotations']} annotations")
        return 0
    raise DataError(f"unknown dataset {args.dataset!r}")
