"""The auto-labeler: a box dataset in, the same COCO JSON with proxy masks out (paper Sec. 3.4).

For every non-crowd box: a mask (``boxcaseg`` model, ``grabcut`` or the filled ``box``), then,
per image, merge ("smaller object better") and drop ("proxy box agreement"). The output is the
input JSON with, on each labeled annotation, ``segmentation`` (compressed RLE), ``area``
(mask pixels), ``ignore_mask`` and ``proxy_iou``, plus a top-level ``boxcaseg_label`` block
(method, config, summary). Everything else is kept as it was, key order included: crowd
annotations, zero-size / outside boxes (skipped, counted) and the annotations of images that
cannot be read (counted as failed) are passed through untouched.

Resumability: per-image results are appended to ``<out>.partial.jsonl`` (flushed and fsynced
every ``cfg.chunk_images`` images). ``resume=True`` skips the images already there, so an
interrupted run finishes with the byte-identical file an uninterrupted run writes; the final
JSON is written atomically and the sidecar removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from boxcaseg.config import to_dict
from boxcaseg.data.coco import CocoData, ImageEntry
from boxcaseg.errors import ConfigError, DataError, ImageReadError
from boxcaseg.io import atomic_write_json, read_image_rgb, size_mismatch_message
from boxcaseg.labeling.baselines import box_mask, grabcut_mask_status
from boxcaseg.labeling.config import METHODS, LabelConfig, resolve_crop_size
from boxcaseg.labeling.merge_drop import drop_decisions, merge_smaller_first
from boxcaseg.structures import fill_missing_segmentations, mask_to_rle

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".partial.jsonl"
SIDECAR_VERSION = 1


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
            "grabcut_fallbacks": self.grabcut_fallbacks,
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
    return Path(str(out_path) + SIDECAR_SUFFIX)


# --------------------------------------------------------------------------------------------
# per-image work


def _masks_for_image(method: str, image: np.ndarray, boxes: np.ndarray, cfg: LabelConfig
                     ) -> tuple[np.ndarray, int]:
    """Raw masks [K, H, W] of the baselines (boxcaseg is batched across images elsewhere)."""
    h, w = image.shape[:2]
    if method == "box":
        return np.stack([box_mask(b, h, w) for b in boxes]), 0
    masks, fallbacks = [], 0
    for b in boxes:
        m, fell_back = grabcut_mask_status(image, b, cfg.grabcut_iters)
        masks.append(m)
        fallbacks += fell_back
    return np.stack(masks), fallbacks


def postprocess(masks: np.ndarray, boxes: np.ndarray, cfg: LabelConfig
                ) -> list[dict[str, Any]]:
    """Merge + drop the K raw masks of one image -> the annotation fields to write, in order."""
    if cfg.merge and len(masks) > 1:
        masks = merge_smaller_first(masks, boxes)
    ious, ignore = drop_decisions(masks, boxes, cfg.drop_iou, cfg.drop)
    return [{"segmentation": mask_to_rle(m), "area": int(m.sum()),
             "ignore_mask": ig, "proxy_iou": iou}
            for m, iou, ig in zip(masks, ious, ignore)]


def _targets(entry: ImageEntry) -> tuple[list[int], np.ndarray]:
    anns = [a for a in entry.annotations if not a.iscrowd]
    boxes = np.array([a.box for a in anns], dtype=np.float64).reshape(-1, 4)
    return [a.id for a in anns], boxes


def _load(entry: ImageEntry) -> np.ndarray:
    if entry.path is None:
        raise ImageReadError(f"image {entry.id} ({entry.file_name}): no image root given")
    image = read_image_rgb(entry.path)
    if image.shape[:2] != (entry.height, entry.width):
        raise ImageReadError(size_mismatch_message(
            entry.path, image.shape[1::-1], (entry.width, entry.height), "the JSON"))
    return image


def _chunks(items: Sequence[ImageEntry], n: int) -> Iterator[Sequence[ImageEntry]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# --------------------------------------------------------------------------------------------
# sidecar (resume)


def _header(coco: CocoData, method: str, cfg: LabelConfig) -> dict[str, Any]:
    return {"sidecar_version": SIDECAR_VERSION, "method": method, "config": to_dict(cfg),
            "images": len(coco.images), "annotations": len(coco.raw["annotations"])}


def _read_sidecar(path: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Records by image id from a previous run; a torn last line (crash mid-write) is ignored."""
    records: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if not lines or not lines[0].strip():
        return records
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable resume sidecar ({e}); delete it or run without "
                        "--resume") from e
    if first.get("header") != header:
        raise ConfigError(f"{path}: was written by a run with a different method, config or "
                          "input; rerun without --resume to start over (or restore the settings)")
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) or all(not x.strip() for x in lines[i:]):
                log.warning("%s: ignoring a torn last line (interrupted write)", path)
                break
            raise DataError(f"{path}: corrupt line {i}; delete it or run without --resume")
        records[int(rec["image_id"])] = rec
    return records


class _Sidecar:
    def __init__(self, path: Path, header: dict[str, Any], append: bool):
        self.path = path
        if append and path.exists():
            data = path.read_bytes()
            keep = data[: data.rfind(b"\n") + 1]
            if len(keep) != len(data):  # a torn last line: cut it so records stay one per line
                os.truncate(path, len(keep))
            self.f = open(path, "a", encoding="utf-8")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "w", encoding="utf-8")
            self.f.write(json.dumps({"header": header}) + "\n")
            self._sync()

    def write(self, lines: list[str]) -> None:
        self.f.write("".join(line + "\n" for line in lines))
        self._sync()

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# --------------------------------------------------------------------------------------------
# the run


def _check_method(method: str, model: Any) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown labeling method {method!r}; choose one of {list(METHODS)}")
    if method == "boxcaseg" and model is None:
        raise ConfigError("method 'boxcaseg' needs a trained model (--checkpoint)")


def label_dataset(coco: CocoData, out_path: str | os.PathLike, method: str,
                  cfg: LabelConfig | None = None, model: Any = None, resume: bool = False,
                  progress: bool = True) -> LabelSummary:
    """Label every non-crowd box of ``coco`` and write the COCO JSON with masks to ``out_path``.

    method: ``"boxcaseg"`` (needs ``model``: an nn.Module with ``predict_proba`` or a
    ``BoxcasegPredictor``), ``"grabcut"`` or ``"box"``. Returns the run's summary.
    """
    cfg = cfg or LabelConfig()
    cfg.validate()
    _check_method(method, model)
    if method == "boxcaseg":  # record the crop actually used (the checkpoint's by default)
        cfg = resolve_crop_size(cfg, getattr(model, "model", model))
    out_path = Path(out_path)
    side = sidecar_path(out_path)
    header = _header(coco, method, cfg)
    summary = LabelSummary(method=method, images=len(coco.images),
                           clipped=coco.report.get("clipped_box", 0))

    done: dict[int, dict[str, Any]] = {}
    if resume and side.exists():
        done = _read_sidecar(side, header)
        log.info("resuming: %d of %d images already labeled in %s", len(done), len(coco.images),
                 side)
    elif side.exists():
        log.warning("%s exists from an earlier run; starting over (use --resume to continue)", side)
    summary.images_resumed = len(done)

    t0 = time.perf_counter()
    predictor = None
    if method == "boxcaseg":
        from boxcaseg.labeling.predict import get_predictor
        predictor = get_predictor(model, cfg)
        log.info("BoxCaseg predictor on %s, TorchScript %s", predictor.device,
                 "on" if predictor.jit_used else "off")
    summary.setup_seconds = time.perf_counter() - t0

    todo = [im for im in coco.images if im.id not in done]
    sidecar = _Sidecar(side, header, append=bool(done))
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool, tqdm(
                total=len(coco.images), initial=len(done), unit="img", desc=f"label {method}",
                disable=not progress) as bar:
            chunks = list(_chunks(todo, cfg.chunk_images))
            loads = _submit_loads(chunks[0], pool) if chunks else []
            for i, chunk in enumerate(chunks):
                current = loads
                # decode the next chunk's images while this one is being labeled
                loads = _submit_loads(chunks[i + 1], pool) if i + 1 < len(chunks) else []
                records = _label_chunk(chunk, method, cfg, predictor, current)
                lines = [json.dumps(r) for r in records]
                sidecar.write(lines)
                for line in lines:  # keep exactly what a resumed run would read back
                    rec = json.loads(line)
                    done[int(rec["image_id"])] = rec
                    summary.instances_this_run += len(rec["anns"])
                bar.update(len(chunk))
    finally:
        sidecar.close()
    summary.seconds = time.perf_counter() - t0

    output = _assemble(coco, done, method, cfg, summary)
    fill_missing_segmentations(output)  # issue 12: COCO tools need a segmentation everywhere
    atomic_write_json(out_path, output)
    side.unlink(missing_ok=True)
    return summary


def _submit_loads(chunk: Sequence[ImageEntry], pool: ThreadPoolExecutor) -> list[Future | None]:
    """Start decoding the images of a chunk; images with nothing to label are not read."""
    return [pool.submit(_load, im) if any(not a.iscrowd for a in im.annotations) else None
            for im in chunk]


def _label_chunk(chunk: Sequence[ImageEntry], method: str, cfg: LabelConfig, predictor: Any,
                 futures: Sequence[Future | None]) -> list[dict[str, Any]]:
    """Records (one per image, in chunk order) for a chunk of images being loaded."""
    targets = [_targets(im) for im in chunk]
    images: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for im, fut in zip(chunk, futures):
        if fut is None:
            images.append(None)
            errors.append(None)
            continue
        try:
            images.append(fut.result())
            errors.append(None)
        except ImageReadError as e:
            log.warning("image %s: %s; its %d annotation(s) get no mask", im.id, e,
                        sum(1 for a in im.annotations if not a.iscrowd))
            images.append(None)
            errors.append(str(e))

    raw_masks: list[np.ndarray | None] = [None] * len(chunk)
    fallbacks = [0] * len(chunk)
    if method == "boxcaseg":
        idx = [i for i, img in enumerate(images) if img is not None]
        masks = predictor.predict_images([images[i] for i in idx], [targets[i][1] for i in idx])
        for i, m in zip(idx, masks):
            raw_masks[i] = m
    else:
        for i, img in enumerate(images):
            if img is not None:
                raw_masks[i], fallbacks[i] = _masks_for_image(method, img, targets[i][1], cfg)

    records = []
    for i, im in enumerate(chunk):
        ids, boxes = targets[i]
        rec: dict[str, Any] = {"image_id": im.id, "error": errors[i], "fallbacks": fallbacks[i],
                               "anns": []}
        if raw_masks[i] is not None:
            fields = postprocess(raw_masks[i], boxes, cfg)
            rec["anns"] = [[aid, f] for aid, f in zip(ids, fields)]
        records.append(rec)
    return records


def _assemble(coco: CocoData, done: dict[int, dict[str, Any]], method: str, cfg: LabelConfig,
              summary: LabelSummary) -> dict[str, Any]:
    """The input dict, annotation fields filled in, key order kept, plus ``boxcaseg_label``."""
    updates: dict[int, dict[str, Any]] = {}
    for im in coco.images:
        rec = done[im.id]
        if rec["error"] is not None:
            summary.images_failed.append((im.id, rec["error"]))
            summary.annotations_failed += sum(1 for a in im.annotations if not a.iscrowd)
        summary.grabcut_fallbacks += rec["fallbacks"]
        for aid, fields in rec["anns"]:
            updates[int(aid)] = fields
            summary.instances_labeled += 1
            summary.dropped += bool(fields["ignore_mask"])
            summary.empty_masks += fields["area"] == 0
        summary.crowd += sum(1 for a in im.annotations if a.iscrowd)
        summary.instances += sum(1 for a in im.annotations if not a.iscrowd)
    summary.skipped = list(coco.skipped)

    anns = []
    for a in coco.raw["annotations"]:
        fields = updates.get(int(a["id"]))
        if fields is None:
            anns.append(a)
        else:
            new = dict(a)
            new.update(fields)  # existing keys keep their position, new ones go last
            anns.append(new)
    output = {k: (anns if k == "annotations" else v) for k, v in coco.raw.items()}
    output["boxcaseg_label"] = {"method": method, "config": to_dict(cfg),
                                "summary": summary.to_file_dict()}
    return output


def config_with(cfg: LabelConfig, **changes: Any) -> LabelConfig:
    """A validated copy of ``cfg`` with some fields changed."""
    return dataclasses.replace(cfg, **changes)
