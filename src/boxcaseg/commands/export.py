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
    from boxcaseg.report.labels import load_labels

    labels = load_labels(args.labels, args.images)
    if args.to == "cvat":
        from boxcaseg.export.cvat import export_cvat
        info = export_cvat(labels, args.out, args.images_mode)
    elif args.to == "fiftyone":
        from boxcaseg.export.fiftyone import export_fiftyone
        info = export_fiftyone(labels, args.out, args.images_mode)
    else:
        from boxcaseg.export.labelstudio import DEFAULT_URL_PREFIX, export_labelstudio
        info = export_labelstudio(labels, args.out, args.images_mode, mask_format=args.ls_mask,
                                  url_prefix=args.ls_url_prefix or DEFAULT_URL_PREFIX)
    counts = ", ".join(f"{k} {v}" for k, v in info.items() if isinstance(v, int))
    print(f"export {args.to}: {counts}")
    for f in info["files"]:
        print(f"wrote {f}")
    print(f"images in {info['images_dir']} ({args.images_mode})")
    return 0
