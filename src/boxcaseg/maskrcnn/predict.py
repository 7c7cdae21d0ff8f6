"""Inference with a trained Proxy Mask R-CNN: checkpoints -> models, detections -> COCO results.

Results are COCO result dicts ``{"image_id", "category_id" (the dataset's original id),
"segmentation" (compressed RLE, str counts), "score", "bbox" [x, y, w, h]}``, one per
detection; masks are the model's per-pixel probabilities (pasted at the original image size by
torchvision) thresholded at ``mask_thresh`` (0.5, as torchvision and detectron2).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from boxcaseg.config import from_dict
from boxcaseg.engine.checkpoint import load_checkpoint, load_weights
from boxcaseg.errors import DataError, ImageReadError
from boxcaseg.io import atomic_write, atomic_write_json, read_image_rgb
from boxcaseg.maskrcnn.config import MaskRCNNConfig
from boxcaseg.maskrcnn.model import build_maskrcnn
from boxcaseg.structures import mask_to_rle, xyxy_to_xywh

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CHECKPOINT_FORMAT = "boxcaseg-maskrcnn"


def load_maskrcnn(checkpoint: str | os.PathLike | dict[str, Any],
                  device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`boxcaseg.maskrcnn.train.train_maskrcnn`.

    Returns ``(model in eval mode on device, checkpoint dict)``; the dict's ``config``
    (a MaskRCNNConfig dict) and ``categories`` (``[{"id", "name"}]`` in label order) describe
    it. No pretrained weights are fetched: every tensor comes from the checkpoint.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    where = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{where}: not a Mask R-CNN checkpoint of boxcaseg train-maskrcnn "
                        f"(format {ckpt.get('format')!r})")
    cfg = from_dict(MaskRCNNConfig, {**ckpt["config"], "pretrained": "none"}, where)
    model = build_maskrcnn(cfg, len(ckpt["categories"]))
    load_weights(model, ckpt["model"], where,
                 f"they do not match the checkpoint's own config, backbone {cfg.backbone}; use "
                 "a checkpoint as boxcaseg train-maskrcnn wrote it")
    return model.to(device).eval(), ckpt


def detections_to_results(output: dict[str, torch.Tensor], image_id: int,
                          categories: Sequence[dict[str, Any]], mask_thresh: float = 0.5,
                          score_thresh: float = 0.0) -> list[dict[str, Any]]:
    """One image's model output (``boxes`` [N,4] XYXY, ``labels`` [N] in 1..C, ``scores`` [N],
    ``masks`` [N,1,H,W] probabilities) -> COCO result dicts (original category ids)."""
    boxes = output["boxes"].detach().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    scores = output["scores"].detach().cpu().numpy()
    masks = (output["masks"].detach()[:, 0] >= mask_thresh).cpu().numpy()
    results = []
    for box, label, score, mask in zip(boxes, labels, scores, masks):
        if score < score_thresh:
            continue
        results.append({
            "image_id": int(image_id),
            "category_id": int(categories[int(label) - 1]["id"]),
            "segmentation": mask_to_rle(mask),
            "score": float(score),
            "bbox": [round(v, 2) for v in xyxy_to_xywh(box.tolist())],
        })
    return results


@torch.no_grad()
def run_model(model: nn.Module, images: Iterable[tuple[int, np.ndarray]],
              device: torch.device | str, categories: Sequence[dict[str, Any]],
              mask_thresh: float = 0.5, score_thresh: float = 0.0, batch_size: int = 4,
              progress: bool = True, total: int | None = None,
              on_image: Any = None) -> list[dict[str, Any]]:
    """Detections for ``(image_id, RGB uint8 [H,W,3])`` pairs, batched. ``on_image(image_id,
    rgb, results)`` is called per image (e.g. to draw it). Returns all results."""
    model.eval()
    device = torch.device(device)
    out: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc="predict", unit="img", disable=not progress)

    def flush(batch: list[tuple[int, np.ndarray]]) -> None:
        tensors = [torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0).to(device)
                   for _, rgb in batch]
        for (iid, rgb), det in zip(batch, model(tensors)):
            res = detections_to_results(det, iid, categories, mask_thresh, score_thresh)
            out.extend(res)
            if on_image is not None:
                on_image(iid, rgb, res)
        bar.update(len(batch))

    batch: list[tuple[int, np.ndarray]] = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    bar.close()
    return out


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, directories -> their ``.jpg/.jpeg/.png/.bmp`` files (sorted, not
    recursive). A path that does not exist is kept (reported when it is read)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir()
                              if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def predict_images(checkpoint: str | os.PathLike, image_paths: Sequence[str | os.PathLike],
                   out_dir: str | os.PathLike, score_thresh: float = 0.5, *,
                   image_ids: Sequence[int] | None = None, device: str = "auto",
                   batch_size: int = 2, draw: bool = True, progress: bool = True
                   ) -> list[dict[str, Any]]:
    """Run a checkpoint on images; write ``out_dir/results.json`` and one overlay PNG each.

    Args:
        checkpoint: ``final.pt`` / ``last.pt`` of ``boxcaseg train-maskrcnn``.
        image_paths: image files or directories (their jpg/png files).
        out_dir: created if needed; ``results.json`` (COCO results) and ``<stem>.png``
            overlays (masks, boxes, class names, scores) are written atomically.
        score_thresh: detections below are dropped (0.5 for viewing; ~0.05 for AP).
        image_ids: the ``image_id`` to write per path (e.g. a GT file's ids); default the
            position in the expanded list. Only with files, not directories.

    Missing or corrupt images are warned about, counted and skipped. Returns the results.
    """
    from boxcaseg.engine.distributed import resolve_device
    from boxcaseg.maskrcnn.visualize import draw_instances

    paths = expand_image_paths(image_paths)
    if image_ids is not None:
        if len(image_ids) != len(paths):
            raise DataError(f"{len(image_ids)} image ids for {len(paths)} images")
        ids = [int(i) for i in image_ids]
    else:
        ids = list(range(len(paths)))
    dev = resolve_device(device)
    model, ckpt = load_maskrcnn(checkpoint, dev)
    cats = ckpt["categories"]
    names = {int(c["id"]): str(c["name"]) for c in cats}
    mask_thresh = float(ckpt["config"].get("mask_thresh", 0.5))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    stems = {iid: p.stem for iid, p in zip(ids, paths)}
    used_names: Counter = Counter(stems.values())

    first_error: list[str] = []

    def readable():
        for iid, p in zip(ids, paths):
            try:
                yield iid, read_image_rgb(p)
            except ImageReadError as e:
                counts["unreadable"] += 1
                first_error[:] = first_error or [str(e)]
                log.warning("%s: skipped", e)

    def save_png(iid: int, rgb: np.ndarray, res: list[dict[str, Any]]) -> None:
        counts["images"] += 1
        if not draw:
            return
        name = stems[iid] if used_names[stems[iid]] == 1 else f"{stems[iid]}_{iid}"
        canvas = draw_instances(rgb, res, names)
        atomic_write(out / f"{name}.png", lambda tmp: _save_png(tmp, canvas))

    results = run_model(model, readable(), dev, cats, mask_thresh, score_thresh, batch_size,
                        progress, total=len(paths), on_image=save_png)
    if paths and counts["images"] == 0:  # an empty results.json would look like "no objects"
        raise DataError(f"none of the {len(paths)} image(s) could be read, first: "
                        f"{first_error[0]} "
                        "(check the image paths; nothing was written)")
    atomic_write_json(out / "results.json", results)
    log.info("predict: %d image(s), %d detection(s), %d unreadable image(s) skipped -> %s",
             counts["images"], len(results), counts["unreadable"], out / "results.json")
    if counts["unreadable"]:
        log.warning("%d of %d image(s) could not be read", counts["unreadable"], len(paths))
    return results


def _save_png(tmp: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(tmp, format="PNG")
