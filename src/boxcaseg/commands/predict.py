"""``boxcaseg predict``: run a trained Mask R-CNN on images -> COCO results JSON + overlay PNGs.

Examples:

    boxcaseg predict --checkpoint runs/maskrcnn/final.pt photos/ extra.jpg --out preds/
    boxcaseg predict --checkpoint runs/maskrcnn/final.pt --gt val_gt.json --images-root imgs/ \\
        --out preds/ --score-thresh 0.05 --no-draw     # image ids of val_gt.json, for AP

Writes OUT/results.json (COCO results: image_id, category_id, RLE segmentation, score, bbox)
and OUT/<image stem>.png with masks, boxes, class names and scores drawn. Without --gt the
image_id of each image is its position in the (expanded, directories sorted) list. Missing or
corrupt images are warned about, counted and skipped; if none can be read, nothing is written
and the exit code is 2. A second run on the same --out is refused while the first runs.
"""

from __future__ import annotations

import argparse

from boxcaseg.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + "\n\n" + __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--checkpoint", required=True, help="final.pt / last.pt of train-maskrcnn")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files or directories (their jpg/png files)")
    parser.add_argument("--gt", help="COCO JSON: predict its images, writing its image ids")
    parser.add_argument("--images-root", help="image folder of --gt")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="drop detections below this score (default 0.5; ~0.05 for AP)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--no-draw", action="store_true", help="results.json only, no PNGs")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.io import check_output_path, remove_stale_temp_files
    from boxcaseg.runlock import OutputLock

    out = check_output_path(args.out, kind="dir")  # before loading a model or any image
    with OutputLock(out.resolve(), "boxcaseg predict"):
        remove_stale_temp_files(out / "results.json")  # left by a killed run
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from boxcaseg.maskrcnn.predict import predict_images

    paths: list = list(args.images)
    ids = None
    if args.gt:
        from boxcaseg.data.coco import load_coco

        if paths:
            raise DataError("give either IMAGE paths or --gt, not both")
        if not args.images_root:
            raise DataError("--gt needs --images-root (the folder of its file_names)")
        gt = load_coco(args.gt, args.images_root)
        paths = [im.path for im in gt.images]
        ids = [im.id for im in gt.images]
    if not paths:
        raise DataError("no images given (IMAGE paths or --gt)")
    results = predict_images(args.checkpoint, paths, args.out, args.score_thresh,
                             image_ids=ids, device=args.device, batch_size=args.batch_size,
                             draw=not args.no_draw)
    print(f"{len(results)} detection(s) -> {args.out}/results.json")
    return 0
