"""``boxcaseg merge-labels``: join the part files of a ``label --shard K/N`` job array.

    boxcaseg merge-labels parts/part-*.jsonl --out labels.json [--format dataset|results|jsonl]

Every part must come from the same input, method and config and be complete; together they
must cover every shard and answer every box of the input exactly once (a part given twice is
de-duplicated). The input box file is read from the path the parts recorded (``--boxes`` if it
moved; its content hash must match). The parts are left in place.
"""

from __future__ import annotations

import argparse
import logging

from boxcaseg.errors import DataError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="+", metavar="PART", help="part files (label --shard)")
    parser.add_argument("--out", required=True, help="merged output file")
    parser.add_argument("--format", choices=("dataset", "results", "jsonl"), default="dataset",
                        help="output format (see `boxcaseg label --help`)")
    parser.add_argument("--boxes", help="the input COCO JSON, if it is no longer where the "
                        "parts say it was")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from boxcaseg.data.coco import load_coco
    from boxcaseg.labeling.job.inputs import BoxInput
    from boxcaseg.labeling.job.merge import all_failed_error, index_parts, write_output
    from boxcaseg.labeling.job.parts import read_part_header
    from boxcaseg.runlock import OutputLock

    from boxcaseg.io import check_not_input, check_output_path
    check_output_path(args.out, inputs=[*(("part", p) for p in args.parts),
                                        ("--boxes", args.boxes)])
    for p in args.parts:
        if not Path(p).is_file():
            raise DataError(f"{p}: part file not found")
    header = read_part_header(Path(args.parts[0]))
    source = args.boxes or header["input"]["source"]
    if not Path(source).is_file():
        raise DataError(f"{source}: the input box file of these parts is not there (pass "
                        "--boxes with its new location)")
    check_not_input(args.out, [("box file (named in the parts)", source)])
    # GT masks kept as the labeling run did (parts from before keep_gt_masks labeled all)
    keep_gt = bool(header["config"].get("keep_gt_masks", False))
    boxes = BoxInput.from_coco(load_coco(source, masks="gt" if keep_gt else None),
                               keep_gt_masks=keep_gt)
    with OutputLock(args.out, "boxcaseg merge-labels"):
        index = index_parts(args.parts, boxes)
        if index.all_failed:
            raise all_failed_error(index)
        write_output(index, args.out, args.format)
    print(index.summary.format().split("\n  speed:")[0])
    print(f"merged {len(args.parts)} part(s) into {args.out}")
    return 0
