"""Which per-mask signals predict the true IoU: the candidates ``labeling/score.py`` chose from.

For each box of a set with hidden GT masks: the fused probability map of its crop (the
labeler's predictor), the raw and merged masks, and the salient / transferred / weak head
maps, then every candidate signal and a few products, each with its Spearman correlation to
the true IoU and its AUROC for IoU >= 0.75 (bench/results_score.md, "signals tried").

    python bench/score_features.py --checkpoint runs/mixed/f00/train/final.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from boxcaseg.data.coco import load_coco
from boxcaseg.io import read_image_rgb
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.postprocess import merge_smaller_first, proxy_iou
from boxcaseg.labeling.predictor import (crop_boxes, crop_regions, get_predictor, image_to_tensor,
                                         soft_ious)
from boxcaseg.labeling.score import auroc, spearman
from boxcaseg.structures import segmentation_to_mask, snap_box

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "coco-dev"


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def features(ckpt: Path, boxes: Path, gt: Path, images: Path) -> dict[str, np.ndarray]:
    from boxcaseg.model.boxcaseg import load_boxcaseg

    model, _ = load_boxcaseg(ckpt, map_location="cpu")
    pred = get_predictor(model, LabelConfig(device="cpu"))
    t = pred.cfg.threshold
    gt_masks = {a.id: a.segmentation for im in load_coco(gt, images).images
                for a in im.annotations}
    rows: dict[str, list[float]] = {}
    for im in load_coco(boxes, images).images:
        anns = [a for a in im.annotations if not a.iscrowd]
        if not anns:
            continue
        img = read_image_rgb(im.path)
        b = np.array([a.box for a in anns])
        ((raw_bm, probs),) = pred.predict([img], [b])
        x = crop_boxes(image_to_tensor(img, torch.device("cpu")), crop_regions(b, 0.0),
                       pred.cfg.crop_size)
        with torch.no_grad():
            heads = {k: torch.sigmoid(v) >= t for k, v in model.head_logits(x).items()}
        merged_bm = merge_smaller_first(raw_bm, b, im.height, im.width)
        proxy = [proxy_iou(m, x, im.height, im.width) for m, x in zip(merged_bm, b)]
        raw = [m.to_full(im.height, im.width) for m in raw_bm]
        merged = [m.to_full(im.height, im.width) for m in merged_bm]
        soft = soft_ious(probs, t)
        for k, a in enumerate(anns):
            c0, r0, c1, r1 = snap_box(a.box, im.height, im.width)
            box_px = max((c1 - c0) * (r1 - r0), 1)
            g = segmentation_to_mask(gt_masks[a.id], im.height, im.width)
            m = merged[k]
            p = probs[k, 0].double()
            fg = p >= t
            hi, lo = int((p >= t + 0.15).sum()), int((p >= t - 0.15).sum())
            fused = p >= t
            vals = {
                "iou": float((g & m).sum() / max((g | m).sum(), 1)),
                "proxy_iou": proxy[k],
                "soft_iou": soft[k],
                "merge_kept": float(m.sum() / max(raw[k].sum(), 1)),
                "fill": float(m.sum() / box_px),
                "stability": hi / lo if lo else 0.0,
                "contrast": float(max((p[fg].mean() if fg.any() else 0)
                                      - (p[~fg].mean() if (~fg).any() else 0), 0)),
                "mean_prob": float(p.mean()),
                "agree_salient_transferred": (
                    _iou(heads["salient"][k, 0], heads["transferred"][k, 0])
                    if "salient" in heads and "transferred" in heads else float("nan")),
                "agree_weak_fused": _iou(heads["weak"][k, 0], fused),
            }
            for key, v in vals.items():
                rows.setdefault(key, []).append(float(v))
    return {k: np.asarray(v) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--coco", default=str(SHARED))
    args = p.parse_args(argv)
    d = Path(args.coco)
    f = features(Path(args.checkpoint), d / "boxes.json", d / "annotations.json", d / "images")
    iou = f.pop("iou")
    good = iou >= 0.75
    sq = np.sqrt(f["proxy_iou"])
    combos = {
        "proxy_iou x stability": f["proxy_iou"] * f["stability"],
        "proxy_iou x stability x contrast": f["proxy_iou"] * f["stability"] * f["contrast"],
        "soft_iou x sqrt(proxy_iou)": f["soft_iou"] * sq,
        "soft_iou x merge_kept": f["soft_iou"] * f["merge_kept"],
        "soft_iou x merge_kept x proxy_iou": f["soft_iou"] * f["merge_kept"] * f["proxy_iou"],
        "soft_iou x merge_kept x stability": f["soft_iou"] * f["merge_kept"] * f["stability"],
        "soft_iou x merge_kept x agree_weak_fused":
            f["soft_iou"] * f["merge_kept"] * f["agree_weak_fused"],
        "score = soft_iou x merge_kept x sqrt(proxy_iou)": f["soft_iou"] * f["merge_kept"] * sq,
    }
    print(f"{len(iou)} instances, mean IoU {iou.mean():.3f}")
    print("| signal | Spearman | AUROC (IoU>=0.75) |\n|---|---:|---:|")
    for k, v in {**f, **combos}.items():
        print(f"| {k} | {spearman(v, iou):.3f} | {auroc(v, good):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
