"""Where a run's mIoU* is lost on the COCO dev sets: inside other instances, or elsewhere.

For the labels a ``bench/real_photos.py`` run wrote (``OUT/labels/NAME/{set}-{seed}.json``),
per seed: mIoU* as is; with every pixel of another annotated instance taken out of each mask
(an oracle: it uses the GT masks); the GT masks sent through the network's output grid and
back (the resolution ceiling); and mIoU* on the boxes that hold more or less than
``--crowd`` of their area in other annotated instances. On labels written without the merge
(``--label merge=false``), pixels claimed by two or more masks ("contested") are also given
to the smaller mask (the merge's rule) and to their human owner (an oracle: to a claimant
whose GT mask holds them, else the smaller), which bounds what any merge rule could reach.
Why: it says whether a lever can reach a target at all (``bench/results_real.md``, "Longer
training within the budget", "Instance separation").
Data are read from ``../shared/data/real`` and never copied.

    python bench/real_overlap.py recipe2
    python bench/real_overlap.py recipe2-nomerge      # the merge oracle needs unmerged labels
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.evaluation.instance_iou import to_rle

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def class_mean(records: list[tuple[int, float]]) -> float:
    by_class: dict[int, list[float]] = defaultdict(list)
    for cid, v in records:
        by_class[cid].append(v)
    return float(np.mean([np.mean(v) for v in by_class.values()])) if by_class else float("nan")


def decode(segm, h: int, w: int, what: str) -> np.ndarray:
    return mask_utils.decode(to_rle(segm, h, w, what)).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def box_pixels(box: list[float], h: int, w: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels an ``[x, y, w, h]`` box touches (at least one)."""
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1 = min(max(int(np.ceil(box[0] + box[2])), x0 + 1), w)
    y1 = min(max(int(np.ceil(box[1] + box[3])), y0 + 1), h)
    return slice(y0, y1), slice(x0, x1)


def through_grid(gt: np.ndarray, box: tuple[slice, slice], grid: int) -> np.ndarray:
    """``gt`` inside ``box``, area-averaged to grid x grid and bilinearly back, at 0.5."""
    crop = gt[box].astype(np.float32)
    small = cv2.resize(crop, (grid, grid), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = np.zeros_like(gt)
    out[box] = back >= 0.5
    return out


def analyse(gt_json: Path, labels: Path, grid: int, crowd: float) -> dict[str, float]:
    gt = json.loads(gt_json.read_text())
    images = {i["id"]: i for i in gt["images"]}
    per_image: dict[int, list[dict]] = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd"):
            per_image[a["image_id"]].append(a)
    pred = {a["id"]: a for a in json.loads(labels.read_text())["annotations"]}
    rows: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for image_id, anns in per_image.items():
        h, w = images[image_id]["height"], images[image_id]["width"]
        masks = {a["id"]: decode(a["segmentation"], h, w, f"{gt_json}: annotation {a['id']}")
                 for a in anns}
        covering = np.sum(list(masks.values()), axis=0)  # instances on each pixel
        preds = {}
        for a in anns:
            segm = pred.get(a["id"], {}).get("segmentation")
            preds[a["id"]] = (decode(segm, h, w, f"{labels}: annotation {a['id']}") if segm
                              else np.zeros((h, w), bool))
        contested = np.sum(list(preds.values()), axis=0) > 1  # claimed by two or more masks
        # how many masks claim each pixel that their own human mask holds
        rightly_claimed = np.sum([preds[k] & masks[k] for k in preds], axis=0)
        # smallest predicted mask first: the merge's "smaller object better" order
        by_area = sorted(preds, key=lambda k: preds[k].sum())
        smaller_owner = np.full((h, w), -1)
        for k in reversed(by_area):
            smaller_owner[preds[k]] = k
        for a in anns:
            own = masks[a["id"]]
            if not own.any():
                continue
            p = preds[a["id"]]
            others = (covering - own > 0) & ~own
            rightly_claimed_by_others = rightly_claimed - (p & own) > 0
            # each contested pixel to one claimant: one whose human mask holds it, else the
            # smaller mask (the merge's rule), i.e. the best any merge rule could do
            oracle_owner = own | (~rightly_claimed_by_others & (smaller_owner == a["id"]))
            box = box_pixels(a["bbox"], h, w)
            cid, v = a["category_id"], iou(p, own)
            rows["as is"].append((cid, v))
            rows["without other instances' pixels (oracle)"].append((cid, iou(p & ~others, own)))
            rows["contested pixels to the smaller mask (the merge)"].append(
                (cid, iou(p & (~contested | (smaller_owner == a["id"])), own)))
            rows["contested pixels to their human owner (merge oracle)"].append(
                (cid, iou(p & (~contested | oracle_owner), own)))
            rows[f"GT through a {grid}x{grid} grid (ceiling)"].append(
                (cid, iou(through_grid(own, box, grid), own)))
            share = others[box].mean()
            rows[f"boxes {'over' if share > crowd else 'under'} {crowd:.0%} other instances"
                 ].append((cid, v))
    out = {k: class_mean(v) for k, v in rows.items()}
    out.update({f"n {k}": len(v) for k, v in rows.items() if k.startswith("boxes")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the real_photos.py run whose labels to analyse")
    p.add_argument("--out", default="runs/real", help="real_photos.py's --out")
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--sets", nargs="+", default=["coco-dev", "coco-mval-dev"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--grid", type=int, default=40,
                   help="the network's output grid: crop 160 / stride 4")
    p.add_argument("--crowd", type=float, default=0.05)
    args = p.parse_args(argv)
    for name in args.sets:
        per_seed = []
        for seed in args.seeds:
            labels = Path(args.out) / "labels" / args.name / f"{name}-{seed}.json"
            if not labels.is_file():
                raise SystemExit(f"{labels}: no labels; run bench/real_photos.py --name "
                                 f"{args.name} first")
            per_seed.append(analyse(Path(args.data) / name / "annotations.json", labels,
                                    args.grid, args.crowd))
        print(f"{name} ({args.name}, seeds {args.seeds})")
        for key in per_seed[0]:
            v = [r[key] for r in per_seed]
            fmt = "{:.0f}" if key.startswith("n ") else "{:.3f}"
            print(f"  {key}: {fmt.format(np.mean(v))} ({fmt.format(min(v))}-{fmt.format(max(v))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
