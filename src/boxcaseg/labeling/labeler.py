"""The auto-labeler: image tasks in, one record per image out (paper Sec. 3.4).

For every non-crowd box: a mask (``boxcaseg`` model, ``grabcut`` or the filled ``box``), then,
per image, merge ("smaller object better") and drop ("proxy box agreement"). Masks are held
per box (``boxmask.BoxMask``: box-sized arrays), never as K full-image arrays.

:func:`label_images` is the whole labeler: it knows nothing of files, ranks or output
formats. A record is ``{"image_id", "error", "fallbacks", "anns": [[annotation id, fields],
...]}`` with ``fields`` = ``segmentation`` (compressed RLE or polygons), ``area`` (mask
pixels), ``ignore_mask``, ``proxy_iou`` and ``score`` (the mask's predicted IoU,
``labeling.score``, from the fused probability maps). ``labeling.shards`` writes records to
resumable part files, shards over processes and merges (adding ``mask_source``);
``labeling.formats`` writes the outputs.

Mixed supervision (``data.gt_masks``, ``cfg.keep_gt_masks``): annotations that already carry a
ground-truth mask are not labeled (no record field; the merge passes them through as given,
``mask_source: "gt"``, ``score: 1.0``), but an image's GT masks (``ImageTask.gt_*``) take part
in "smaller object better" as fixed masks: a GT mask takes its pixels from any proxy mask
with a larger box and loses none.

:func:`label_dataset` is the one-call API (``CocoData`` in, output file out); see
``shards.label_job`` for what it does with resume, locks and torchrun.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from boxcaseg.data.gt_masks import decode_gt_mask
from boxcaseg.errors import ConfigError, ImageReadError
from boxcaseg.io import read_image_rgb, size_mismatch_message
from boxcaseg.labeling import masks as boxmask
from boxcaseg.labeling.baselines import grabcut_mask_status
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.calibrate import rule_ignores
from boxcaseg.labeling.config import METHODS, LabelConfig
from boxcaseg.labeling.score import scores_for, soft_ious

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".partial.jsonl"


@dataclass
class LabelSummary:
    """What a labeling run did. ``to_file_dict`` holds the deterministic part (in the JSON)."""

    method: str
    images: int = 0                   # images in the dataset
    instances: int = 0                # non-crowd annotations with a usable box
    instances_labeled: int = 0        # ... that got a mask (kept or dropped)
    dropped: int = 0                  # labeled, but ignore_mask (empty or low proxy IoU)
    empty_masks: int = 0              # dropped because the mask was empty
    crowd: int = 0                    # crowd annotations, passed through
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (annotation id, reason)
    clipped: int = 0                  # boxes sticking out of their image, clipped by the reader
    images_failed: list[tuple[int, str]] = field(default_factory=list)  # (image id, error)
    annotations_failed: int = 0       # annotations of failed images (no mask)
    grabcut_fallbacks: int = 0        # boxes GrabCut could not run on (filled box used)
    gt_masks: int = 0                 # annotations with a GT mask, passed through unchanged
    # run-specific (not written into the output file)
    images_resumed: int = 0           # images taken from a previous run's sidecar
    instances_this_run: int = 0
    seconds: float = 0.0              # wall time of the labeling loop of this run
    setup_seconds: float = 0.0        # model preparation (device, TorchScript trace)

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.instances_labeled if self.instances_labeled else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.instances_this_run / self.seconds if self.seconds > 0 else 0.0

    def skipped_reasons(self) -> dict[str, int]:
        return dict(Counter(_reason_kind(r) for _, r in self.skipped))

    def to_file_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "instances": self.instances,
            "instances_labeled": self.instances_labeled, "dropped": self.dropped,
            "drop_rate": round(self.drop_rate, 6), "empty_masks": self.empty_masks,
            "crowd_passed_through": self.crowd, "skipped": len(self.skipped),
            "skipped_reasons": self.skipped_reasons(),
            "images_failed": len(self.images_failed),
            "annotations_failed": self.annotations_failed,
            "grabcut_fallbacks": self.grabcut_fallbacks, "gt_masks": self.gt_masks,
        }

    def format(self) -> str:
        lines = [
            f"method {self.method}: {self.instances_labeled} instances labeled in "
            f"{self.images} images ({self.images_resumed} resumed)",
            f"  dropped (ignore_mask): {self.dropped} ({100 * self.drop_rate:.1f}%), "
            f"of which empty masks: {self.empty_masks}",
            f"  skipped boxes: {len(self.skipped)} {self.skipped_reasons() or ''}".rstrip(),
            f"  boxes clipped to their image: {self.clipped}",
            f"  crowd annotations passed through: {self.crowd}",
            f"  ground-truth masks kept as given (mask_source gt): {self.gt_masks}",
            f"  images failed: {len(self.images_failed)} "
            f"({self.annotations_failed} annotations left without masks)",
        ]
        for image_id, err in self.images_failed[:10]:
            lines.append(f"    image {image_id}: {err}")
        if self.method == "grabcut":
            lines.append(f"  GrabCut fell back to the filled box: {self.grabcut_fallbacks}")
        lines.append(f"  speed: {self.instances_per_s:.2f} instances/s "
                     f"({self.instances_this_run} in {self.seconds:.1f} s; "
                     f"setup {self.setup_seconds:.1f} s)")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    if "sub-pixel" in reason:
        return "sub_pixel_box"
    if "outside" in reason:
        return "box_outside_image"
    if "zero" in reason or "negative" in reason:
        return "zero_size_box"
    return reason


def sidecar_path(out_path: str | os.PathLike) -> Path:
    """The progress file of ``out_path`` (removed when the output is complete)."""
    return Path(str(out_path) + SIDECAR_SUFFIX)


@dataclass
class ImageTask:
    """What labeling needs of one image: its file, size and the non-crowd boxes to label
    (XYXY [K, 4]); ``gt_*``: its annotations with a ground-truth mask (mixed supervision),
    not labeled, fixed masks in merge: ids, XYXY boxes [G, 4], raw ``segmentation``s."""

    id: int
    file_name: str
    path: Path | None
    height: int
    width: int
    ann_ids: np.ndarray
    boxes: np.ndarray
    gt_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    gt_segmentations: list[Any] = field(default_factory=list)

    def fixed_masks(self) -> list[BoxMask]:
        """The GT masks as box masks over each mask's own extent (a drawn mask may reach
        outside its box), decoded one at a time; ``DataError`` naming a malformed one."""
        out = []
        for aid, segm in zip(self.gt_ids, self.gt_segmentations):
            full = decode_gt_mask(segm, self.height, self.width,
                                  f"annotation {int(aid)} (image {self.id}; keep_gt_masks=false "
                                  "labels it instead)")
            rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
            if rows.size == 0:
                out.append(BoxMask(0, 0, np.zeros((0, 0), dtype=bool)))
                continue
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            out.append(BoxMask(c0, r0, np.ascontiguousarray(full[r0:r1, c0:c1])))
        return out


# --------------------------------------------------------------------------------------------
# per-image work


def _masks_for_image(method: str, image: np.ndarray, boxes: np.ndarray, cfg: LabelConfig
                     ) -> tuple[list[BoxMask], int]:
    """Raw box masks of the baselines (boxcaseg is batched across images elsewhere)."""
    h, w = image.shape[:2]
    if method == "box":
        return [BoxMask.filled(b, h, w) for b in boxes], 0
    masks, fallbacks = [], 0
    for b in boxes:  # GrabCut needs the whole image; one full-size mask at a time
        m, fell_back = grabcut_mask_status(image, b, cfg.grabcut_iters)
        masks.append(BoxMask.from_full(m, b))
        fallbacks += fell_back
    return masks, fallbacks


def postprocess_box_masks(masks: Sequence[BoxMask], boxes: np.ndarray, height: int, width: int,
                          cfg: LabelConfig, soft: Sequence[float] | None = None,
                          fixed: tuple[Sequence[BoxMask], np.ndarray] | None = None
                          ) -> list[dict[str, Any]]:
    """Merge + drop + score the K raw masks of one image -> the annotation fields to write.

    ``soft``: the masks' expected IoUs under their probability maps (``score.soft_ious``; None
    for the baselines). ``fixed``: the image's GT masks and boxes (XYXY [G, 4]); they take part
    in "smaller object better" like any mask but are not written (they stay as given)."""
    from boxcaseg.labeling.formats import encode_segmentation

    raw_areas = [m.area for m in masks]
    if cfg.merge and fixed is not None and len(fixed[0]):
        merged = boxmask.merge_smaller_first(
            [*masks, *fixed[0]], np.concatenate([np.asarray(boxes, dtype=np.float64)
                                                 .reshape(-1, 4), fixed[1]]), height, width)
        masks = merged[:len(masks)]
    elif cfg.merge and len(masks) > 1:
        masks = boxmask.merge_smaller_first(masks, boxes, height, width)
    ious, _ = boxmask.drop_decisions(masks, boxes, height, width, cfg.drop_iou, cfg.drop)
    scores = scores_for(raw_areas, [m.area for m in masks], ious, soft)
    ignore = [rule_ignores(m.area, iou, sc, cfg) for m, iou, sc in zip(masks, ious, scores)]
    return [{"segmentation": encode_segmentation(m, height, width, cfg.segmentation),
             "area": m.area, "ignore_mask": ig, "proxy_iou": iou, "score": sc}
            for m, iou, ig, sc in zip(masks, ious, ignore, scores)]


def postprocess(masks: np.ndarray, boxes: np.ndarray, cfg: LabelConfig,
                soft: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """``postprocess_box_masks`` for full-image masks [K, H, W] confined to their boxes."""
    h, w = masks.shape[1:]
    return postprocess_box_masks([BoxMask.from_full(m, b) for m, b in zip(masks, boxes)],
                                 boxes, h, w, cfg, soft)


def _load(task: ImageTask) -> np.ndarray:
    if task.path is None:
        raise ImageReadError(f"image {task.id} ({task.file_name}): no image root given")
    image = read_image_rgb(task.path)
    if image.shape[:2] != (task.height, task.width):
        raise ImageReadError(size_mismatch_message(
            task.path, image.shape[1::-1], (task.width, task.height), "the JSON"))
    return image


# TEMP wiring for sam (lead replaces): the MaskSource given to label_job as ``model`` does
# not reach label_images without touching shards.py, so check_method (which label_job calls
# with it) keeps it here for _label_chunk.
_TEMP_SOURCE: list[Any] = [None]


def check_method(method: str, model: Any) -> None:
    _TEMP_SOURCE[0] = model if method == "sam" else None  # TEMP wiring for sam
    if method == "sam" and model is None:  # TEMP wiring for sam
        raise ConfigError("method 'sam' needs a SAM model (--sam-checkpoint)")
    if method not in METHODS:
        raise ConfigError(f"unknown labeling method {method!r}; choose one of {list(METHODS)}")
    if method == "boxcaseg" and model is None:
        raise ConfigError("method 'boxcaseg' needs a trained model (--checkpoint)")


def _chunks(items: Iterable[ImageTask], n: int) -> Iterator[list[ImageTask]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def label_images(tasks: Iterable[ImageTask], method: str, cfg: LabelConfig, predictor: Any = None
                 ) -> Iterator[list[dict[str, Any]]]:
    """Records of ``tasks``, in order, one list per chunk of ``cfg.chunk_images`` images.

    ``predictor`` (method boxcaseg): a ``labeling.predict.BoxcasegPredictor``. The images of
    the next chunk are decoded on a thread while the current one is labeled.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = _chunks(tasks, cfg.chunk_images)
        current = next(chunks, None)
        loads = _submit_loads(current, pool) if current else []
        while current:
            following = next(chunks, None)
            next_loads = _submit_loads(following, pool) if following else []
            yield _label_chunk(current, method, cfg, predictor, loads)
            current, loads = following, next_loads


def _submit_loads(chunk: Sequence[ImageTask], pool: ThreadPoolExecutor) -> list[Future | None]:
    """Start decoding the images of a chunk; images with nothing to label are not read."""
    return [pool.submit(_load, t) if len(t.ann_ids) else None for t in chunk]


def _label_chunk(chunk: Sequence[ImageTask], method: str, cfg: LabelConfig, predictor: Any,
                 futures: Sequence[Future | None]) -> list[dict[str, Any]]:
    """Records (one per image, in chunk order) for a chunk of images being loaded."""
    images: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for t, fut in zip(chunk, futures):
        if fut is None:
            images.append(None)
            errors.append(None)
            continue
        try:
            images.append(fut.result())
            errors.append(None)
        except ImageReadError as e:
            log.warning("image %s: %s; its %d annotation(s) get no mask", t.id, e,
                        len(t.ann_ids))
            images.append(None)
            errors.append(str(e))

    raw_masks: list[list[BoxMask] | None] = [None] * len(chunk)
    fallbacks = [0] * len(chunk)
    soft: list[list[float] | None] = [None] * len(chunk)
    if method == "boxcaseg":
        idx = [i for i, img in enumerate(images) if img is not None]
        masks = predictor.predict_images_with_probs(
            [images[i] for i in idx], [chunk[i].boxes for i in idx], box_masks=True)
        for i, (m, probs) in zip(idx, masks):
            raw_masks[i] = m
            soft[i] = soft_ious(probs, cfg.threshold, cfg.threshold_mode)
    elif method == "sam":  # TEMP wiring for sam: any MaskSource; quality is the score's soft
        idx = [i for i, img in enumerate(images) if img is not None]
        source = predictor or _TEMP_SOURCE[0]
        for i, sm in zip(idx, source.masks([images[i] for i in idx],
                                           [chunk[i].boxes for i in idx])):
            raw_masks[i], soft[i], fallbacks[i] = sm.masks, sm.quality, sm.fallbacks
    else:
        for i, img in enumerate(images):
            if img is not None:
                raw_masks[i], fallbacks[i] = _masks_for_image(method, img, chunk[i].boxes, cfg)

    records = []
    for i, t in enumerate(chunk):
        rec: dict[str, Any] = {"image_id": t.id, "error": errors[i], "fallbacks": fallbacks[i],
                               "anns": []}
        if raw_masks[i] is not None:
            fixed = (t.fixed_masks(), t.gt_boxes) if len(t.gt_ids) else None
            fields = postprocess_box_masks(raw_masks[i], t.boxes, t.height, t.width, cfg,
                                           soft[i], fixed)
            rec["anns"] = [[int(aid), f] for aid, f in zip(t.ann_ids, fields)]
        records.append(rec)
    return records


def label_dataset(coco: Any, out_path: str | os.PathLike, method: str,
                  cfg: LabelConfig | None = None, model: Any = None, resume: bool = False,
                  progress: bool = True, fmt: str = "dataset", **job: Any) -> LabelSummary:
    """Label every non-crowd box of ``coco`` (``CocoData``) and write ``out_path``.

    method: ``"boxcaseg"`` (needs ``model``: an nn.Module with ``predict_proba`` or a
    ``BoxcasegPredictor``), ``"grabcut"`` or ``"box"``; fmt: ``dataset``, ``results`` or
    ``jsonl``. Further keywords (``shard``, ``dist``) go to ``shards.label_job``. Returns the
    run's summary.
    """
    from boxcaseg.labeling.shards import BoxInput, label_job

    cfg = cfg or LabelConfig()
    return label_job(BoxInput.from_coco(coco, keep_gt_masks=cfg.keep_gt_masks), out_path, method, cfg,
                     model=model, resume=resume, progress=progress, fmt=fmt, **job)


def config_with(cfg: LabelConfig, **changes: Any) -> LabelConfig:
    """A validated copy of ``cfg`` with some fields changed."""
    return dataclasses.replace(cfg, **changes)
