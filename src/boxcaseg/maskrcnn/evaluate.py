"""Evaluation of a Proxy Mask R-CNN: COCO mask + box AP and VOC mask AP@{25,50,70,75}.

Used by ``train-maskrcnn`` at the end of training (with ``val_json``) and on its own with a
checkpoint path.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from boxcaseg.data.coco import load_coco
from boxcaseg.engine.distributed import resolve_device, unwrap
from boxcaseg.errors import ImageReadError
from boxcaseg.io import atomic_write_json, read_image_rgb
from boxcaseg.maskrcnn.predict import load_maskrcnn, run_model

log = logging.getLogger(__name__)


def evaluate_maskrcnn(model_or_checkpoint: nn.Module | str | os.PathLike,
                      val_json: str | os.PathLike,
                      images_root: str | os.PathLike, *,
                      categories: list[dict[str, Any]] | None = None,
                      score_thresh: float | None = None, mask_thresh: float | None = None,
                      device: str | torch.device | None = None, batch_size: int = 2,
                      progress: bool = True, results_path: str | os.PathLike | None = None
                      ) -> dict[str, Any]:
    """COCO mask AP, COCO box AP and VOC mask AP@{25,50,70,75} on ``val_json`` (GT masks).

    ``model_or_checkpoint``: a model (then ``categories``, the label order, is required) or a
    checkpoint path. ``score_thresh`` / ``mask_thresh`` default to the checkpoint's config (or
    0.05 / 0.5). Unreadable images are warned about and count as images without detections.

    Returns ``{"segm": {AP, AP50, AP75, APs, APm, APl}, "bbox": {...}, "voc": {AP25, AP50,
    AP70, AP75}, "num_images", "num_detections", "unreadable_images"}`` (fractions).
    """
    from boxcaseg.evaluation.coco_ap import coco_mask_ap
    from boxcaseg.evaluation.voc_ap import voc_mask_ap

    if isinstance(model_or_checkpoint, nn.Module):
        if categories is None:
            raise ValueError("evaluate_maskrcnn(model, ...) needs categories (label order)")
        model = unwrap(model_or_checkpoint)
        dev = device or next(model.parameters()).device
        cfg_dict: dict[str, Any] = {}
    else:
        dev = device or resolve_device("auto")
        model, ckpt = load_maskrcnn(model_or_checkpoint, dev)
        categories = categories or ckpt["categories"]
        cfg_dict = ckpt["config"]
    score_thresh = float(cfg_dict.get("score_thresh", 0.05) if score_thresh is None
                         else score_thresh)
    mask_thresh = float(cfg_dict.get("mask_thresh", 0.5) if mask_thresh is None else mask_thresh)
    gt = load_coco(val_json, images_root)
    unreadable = 0

    def images():
        nonlocal unreadable
        for im in gt.images:
            try:
                yield im.id, read_image_rgb(im.path)
            except ImageReadError as e:
                unreadable += 1
                log.warning("%s: skipped in evaluation", e)

    was_training = model.training
    results = run_model(model, images(), dev, categories, mask_thresh, score_thresh,
                        batch_size, progress, total=len(gt.images))
    model.train(was_training)
    if results_path is not None:
        atomic_write_json(results_path, results)
    voc = voc_mask_ap(gt.raw, results)
    return {
        "segm": coco_mask_ap(gt.raw, results, "segm"),
        "bbox": coco_mask_ap(gt.raw, results, "bbox"),
        "voc": {k: v for k, v in voc.items() if k.startswith("AP")},
        "num_images": len(gt.images),
        "num_detections": len(results),
        "unreadable_images": unreadable,
    }


def format_metrics(metrics: dict[str, Any], title: str = "Mask R-CNN") -> str:
    from boxcaseg.evaluation.report import format_table

    coco_keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    rows = [{"what": "mask (COCO)", **metrics["segm"]}, {"what": "box (COCO)", **metrics["bbox"]}]
    parts = [format_table(rows, [("what", "", "s")] + [(k, k, "pct") for k in coco_keys],
                          f"{title}: COCO AP, {metrics['num_images']} images")]
    voc = metrics["voc"]
    parts.append(format_table([voc], [(k, k, "pct") for k in voc], "VOC mask AP"))
    return "\n\n".join(parts)
