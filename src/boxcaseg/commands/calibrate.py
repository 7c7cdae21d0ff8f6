"""``boxcaseg calibrate``: fit the keep/ignore rule on a few GT masks, or apply a fitted rule.

    boxcaseg calibrate --gt few_masks.json --pred labels.json --min-kept-iou 0.75 --out rule.yaml
    boxcaseg calibrate --gt few_masks.json --pred labels.json --keep 0.8 --out rule.yaml
        prints the kept-fraction vs. mean-IoU-of-kept curve of the GT instances' proxy masks
        and writes the chosen rule as a label config (``boxcaseg label --config rule.yaml``)
    boxcaseg calibrate --apply rule.yaml --pred labels.json --out labels_calibrated.json
        re-sets ignore_mask on every proxy mask of an existing labels file by the rule

``--pred`` is a labels file in the dataset format (``label --format dataset``, the default);
results and JSON-lines files are refused with what to do: label (or ``merge-labels``) with
``--format dataset`` to calibrate, and apply a rule in any format by labeling with
``--config rule.yaml``. ``--apply`` writes the dataset format.

``--gt``: COCO JSON with masks for some instances (the same annotation ids as the labels
file; annotations without ``segmentation`` are left out). ``--signal``: fit a threshold on
the predicted-IoU ``score`` (default) or on the paper's ``proxy_iou`` (then ``drop_iou``).
"""

from __future__ import annotations

import argparse

from boxcaseg.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + "\n\n" + __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--pred", required=True, help="labels file written by boxcaseg label")
    parser.add_argument("--gt", help="COCO JSON with ground-truth masks of a few instances")
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--min-kept-iou", type=float,
                      help="goal: the kept masks average at least this IoU")
    goal.add_argument("--keep", type=float, help="goal: keep this fraction of the masks")
    parser.add_argument("--signal", choices=("score", "proxy_iou"), default="score",
                        help="what to threshold (default: score)")
    parser.add_argument("--apply", metavar="RULE_YAML",
                        help="apply a rule written by calibrate (or any label config) to --pred")
    parser.add_argument("--out", required=True,
                        help="fit: the rule as a label config YAML; --apply: the new labels file")


def _fit(args: argparse.Namespace) -> int:
    from boxcaseg.config import dump_yaml
    from boxcaseg.data.coco import parse_coco
    from boxcaseg.io import atomic_write_text, read_json
    from boxcaseg.labeling.calibrate import calibration_pairs, fit, format_curve, rule_config
    from boxcaseg.labeling.schema import label_info, read_labels

    if not args.gt:
        raise ConfigError("fitting a rule needs --gt FEW_MASKS.json (or --apply RULE_YAML to "
                          "apply one)")
    if args.min_kept_iou is None and args.keep is None:
        raise ConfigError("give a goal: --min-kept-iou X (e.g. 0.75) or --keep F (e.g. 0.8)")
    pred = read_labels(args.pred)
    gt = read_json(args.gt)
    # the human masks (and the proxies) are checked before any IoU is computed from them
    parse_coco(gt, str(args.gt), masks="truth")
    parse_coco(pred, str(args.pred), masks="labels")
    ids, signal, ious = calibration_pairs(gt, pred, args.signal)
    cal = fit(signal, ious, min_kept_iou=args.min_kept_iou, keep=args.keep, name=args.signal)
    print(f"{cal.n} calibration masks (GT instances with a proxy mask); mean IoU of all "
          f"{cal.all_mean_iou:.4f}")
    if cal.warning:
        print(f"warning: {cal.warning}")
    print(format_curve(cal))
    c = cal.chosen
    if not cal.reached:
        print(f"no threshold that keeps at least {cal.min_kept} masks reaches a kept mean IoU "
              f"of {args.min_kept_iou}; chose the best one")
    rng = ("" if cal.interval is None else
           f" (90 % bootstrap range {cal.interval[0]:.3f}-{cal.interval[1]:.3f})")
    print(f"rule: keep iff {args.signal} >= {c.threshold:.4f}: keeps {c.kept_fraction:.1%} "
          f"of the calibration masks, predicted mean IoU of the kept {c.kept_mean_iou:.4f}"
          f"{rng}")
    cfg = rule_config(label_info(pred).get("config"), cal.rule())
    header = (f"# boxcaseg calibrate: {args.signal} >= {c.threshold:.6f} fitted on {cal.n} GT "
              f"masks ({args.gt}) for {cal.goal}\n# predicted: keeps {c.kept_fraction:.4f} of "
              f"the masks, mean IoU of the kept {c.kept_mean_iou:.4f}{rng} (all: "
              f"{cal.all_mean_iou:.4f})\n"
              + (f"# warning: {cal.warning}\n" if cal.warning else "")
              + "# use: boxcaseg label --config THIS ...  or  "
              "boxcaseg calibrate --apply THIS --pred LABELS.json --out NEW.json\n")
    atomic_write_text(args.out, header + dump_yaml(cfg))
    print(f"wrote {args.out}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from boxcaseg.config import load_config
    from boxcaseg.io import atomic_write_json
    from boxcaseg.labeling.calibrate import apply_rule
    from boxcaseg.labeling.schema import read_labels
    from boxcaseg.labeling.config import LabelConfig

    if args.gt or args.min_kept_iou is not None or args.keep is not None:
        raise ConfigError("--apply takes a fitted rule; --gt and a goal are for fitting one")
    cfg = load_config(LabelConfig, args.apply, [])
    labels, counts = apply_rule(read_labels(args.pred), cfg)
    labels["boxcaseg_calibrate"] = {"rule": args.apply, "min_score": cfg.min_score,
                                    "drop": cfg.drop, "drop_iou": cfg.drop_iou, **counts}
    atomic_write_json(args.out, labels)
    n = max(counts["masks"], 1)
    print(f"{counts['masks']} proxy masks: ignored {counts['ignored_before']} "
          f"({counts['ignored_before'] / n:.1%}) before, {counts['ignored_after']} "
          f"({counts['ignored_after'] / n:.1%}) now; {counts['changed']} changed")
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from boxcaseg.io import check_output_path

    # before reading anything; a rule YAML written over the labels file would lose them
    check_output_path(args.out, inputs=[("--pred", args.pred), ("--gt", args.gt),
                                        ("--apply", args.apply)])
    return _apply(args) if args.apply else _fit(args)
