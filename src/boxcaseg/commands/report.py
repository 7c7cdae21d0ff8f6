"""``boxcaseg report``: a static HTML report of labeled masks, for people to look at.

    boxcaseg report labels.json --images imgs/ --out report/
    boxcaseg report labels.json --images imgs/ --gt gt.json --baseline grabcut.json \\
        --baseline box.json --out report/

Writes OUT/index.html (open it from disk: no server, no network): counts, drops and speed
per method; with --gt mIoU*/IoU@k overall, per size and per class; score/IoU histograms,
score vs IoU and kept fraction vs threshold plots; and a gallery of every instance of
LABELS, worst first (lowest IoU with --gt, else lowest score), each crop with the mask
outlines of LABELS and of every --baseline side by side and the drop decision, in pages of
--page-size instances (OUT/gallery-N.html).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + "\n\n" + __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("labels", metavar="LABELS.json", help="boxcaseg label output to review")
    parser.add_argument("--images", required=True, help="folder of the images' file_name")
    parser.add_argument("--gt", help="COCO JSON with ground-truth masks (same annotation ids)")
    parser.add_argument("--baseline", action="append", default=[], metavar="OTHER.json",
                        help="another labels file of the same boxes, shown beside (repeatable)")
    parser.add_argument("--out", required=True, help="report folder (index.html goes there)")
    parser.add_argument("--page-size", type=int, default=100,
                        help="gallery instances per page (default 100)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the N worst instances in the gallery (default all)")
    parser.add_argument("--title", default="boxcaseg report")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.errors import ConfigError
    from boxcaseg.io import check_output_path, remove_stale_temp_files
    from boxcaseg.report.build import make_report
    from boxcaseg.runlock import OutputLock

    if args.page_size < 1:
        raise ConfigError(f"--page-size must be >= 1, got {args.page_size}")
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    out = check_output_path(args.out, kind="dir")  # before reading or drawing anything
    with OutputLock(out.resolve(), "boxcaseg report"):
        # left by a killed run (img/ and plots/ are rebuilt whole)
        remove_stale_temp_files(out / "index.html", *out.glob("gallery-*.html"))
        index = make_report(args.labels, out, images_root=args.images, gt=args.gt,
                            baselines=args.baseline, page_size=args.page_size,
                            limit=args.limit, title=args.title,
                            progress=not args.no_progress)
    print(f"report: {index.resolve()}")
    return 0
