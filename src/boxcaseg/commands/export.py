"""``boxcaseg export``: labels -> files a review tool imports as they are, worst score first.

    boxcaseg export labels.json --to cvat --images imgs/ --out review_cvat/
    boxcaseg export labels.json --to labelstudio --images imgs/ --out review_ls/
    boxcaseg export labels.json --to fiftyone --images imgs/ --out review_fo/

cvat:        OUT/annotations/instances_default.json (COCO 1.0, polygons) + OUT/images/default/
labelstudio: OUT/tasks.json (pre-annotations: brush masks in Label Studio's RLE, or
             --ls-mask polygon) + OUT/label_config.xml + OUT/images/
fiftyone:    OUT/labels.json (COCO, RLE instance masks) + OUT/data/, for
             fo.Dataset.from_dir(OUT, dataset_type=fo.types.COCODetectionDataset)

Images and annotations are ordered worst score first; every mask carries its score, proxy
IoU, drop decision (ignore_mask) and review rank. Images are hard-linked into OUT (copied
across file systems) unless --images-mode copy (or none). Brush masks need the encoder of
label-studio-converter: pip install "boxcaseg[export]".
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("cvat", "labelstudio", "fiftyone")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + "\n\n" + __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("labels", metavar="LABELS.json", help="boxcaseg label output")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the review tool")
    parser.add_argument("--images", required=True, help="folder of the images' file_name")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--images-mode", choices=("link", "copy", "none"), default="link",
                        help="put the images into OUT as hard links (default; copies "
                             "across file systems), copies, or not at all")
    parser.add_argument("--ls-mask", choices=("brush", "polygon"), default="brush",
                        help="labelstudio: masks as brush RLE (default) or polygons")
    parser.add_argument("--ls-url-prefix", default=None,
                        help="labelstudio: image URL = PREFIX + file_name (default: Label "
                             "Studio local files under OUT, /data/local-files/?d=images/)")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.io import check_output_path
    from boxcaseg.runlock import OutputLock

    out = check_output_path(args.out, kind="dir")  # before reading anything
    with OutputLock(out.resolve(), "boxcaseg export"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from boxcaseg.export import cvat, fiftyone, labelstudio
    from boxcaseg.io import remove_stale_temp_files
    from boxcaseg.labeling.review import load_labels

    out = Path(args.out)
    # left by a killed run
    remove_stale_temp_files(out / cvat.ANNOTATIONS, out / fiftyone.LABELS,
                            out / labelstudio.TASKS, out / labelstudio.CONFIG)
    labels = load_labels(args.labels, args.images)
    if args.to == "cvat":
        info = cvat.export_cvat(labels, out, args.images_mode)
    elif args.to == "fiftyone":
        info = fiftyone.export_fiftyone(labels, out, args.images_mode)
    else:
        info = labelstudio.export_labelstudio(
            labels, out, args.images_mode, mask_format=args.ls_mask,
            url_prefix=args.ls_url_prefix or labelstudio.DEFAULT_URL_PREFIX)
    counts = ", ".join(f"{k} {v}" for k, v in info.items() if isinstance(v, int))
    print(f"export {args.to}: {counts}")
    for f in info["files"]:
        print(f"wrote {f}")
    print(f"images in {info['images_dir']} ({args.images_mode})")
    return 0
