"""Labeling at dataset scale: compact input, shards, resumable part files, merge with checks.

Layouts of one ``--out FILE`` (all decided by :func:`label_job`):

* one process: progress in ``FILE.partial.jsonl``; when done it is merged into ``FILE`` and
  removed (the behaviour before sharding existed).
* ``torchrun --nproc_per_node=N ...``: rank ``k`` labels shard ``k`` of ``N`` into
  ``FILE.part-0000k-of-0000N.jsonl`` (progress in ``<part>.partial.jsonl``, renamed to the part
  when complete); after a barrier rank 0 merges the parts into ``FILE`` and removes them.
* ``--shard K/N`` (job arrays, no process group): ``FILE`` *is* part ``K`` of ``N``;
  ``boxcaseg merge-labels PART... --out OUT`` (:func:`index_parts` + :func:`write_output`)
  joins them with the same checks.

Shards are disjoint and deterministic: images are dealt to shards heaviest first, each to
the shard with the fewest boxes so far (longest-processing-time rule), so shards are balanced
by box count, not image count. A part file is JSON lines: a header (method, config and its
fingerprint, the input's content hash, shard and number of shards), one record per image
(``labeler.label_images``), and an ``{"end": ...}`` line once complete. ``--resume`` continues
a part only if the header matches exactly, and says which of world size / input / method /
config differs otherwise. The merge checks that every image of the input has exactly one
record (duplicates from a part given twice are dropped by image and annotation id) and that
each record answers exactly its image's boxes; a missing one is an error, never a gap.

Memory stays flat: the input is held as numpy arrays plus one JSON string per annotation
(``BoxInput``), records go straight to the part file, and the merge streams them from the
parts into the output (an index of byte offsets per image, a small cache of parsed records).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from boxcaseg.config import to_dict
from boxcaseg.data.gt_masks import GT, is_gt_annotation
from boxcaseg.engine.distributed import DistInfo, all_true, barrier
from boxcaseg.errors import BoxcasegError, ConfigError, DataError
from boxcaseg.io import remove_stale_temp_files
from boxcaseg.labeling import formats
from boxcaseg.labeling.config import LabelConfig, resolve_crop_size
from boxcaseg.labeling.labeler import (ImageTask, LabelSummary, check_method, label_images,
                                       sidecar_path)
from boxcaseg.runlock import OutputLock, OutputLockedError, config_fingerprint, file_fingerprint
from boxcaseg.structures import with_empty_mask

log = logging.getLogger(__name__)

PART_VERSION = 2
LABEL, CROWD, SKIPPED, GT_MASK = 0, 1, 2, 3  # what happens to an input annotation
DIST_TIMEOUT = timedelta(hours=24)  # ranks done early wait this long for the slowest rank
_PART_RE = re.compile(r"\.part-(\d+)-of-(\d+)\.jsonl")


# --------------------------------------------------------------------------------------------
# compact input


@dataclass
class BoxInput:
    """A validated box dataset held compactly: arrays per annotation, one JSON string each.

    ``top``: the input's top-level (key, value) pairs in order, ``formats.ANNOTATIONS`` in
    place of the annotation list. Annotation ``p`` (input order): id ``ann_ids[p]``, image
    index ``ann_image[p]``, clipped XYXY box ``ann_boxes[p]``, ``ann_kind[p]`` (LABEL, CROWD,
    SKIPPED, GT_MASK) and its original JSON ``ann_raw[p]``. ``keep_gt_masks``: whether
    annotations with a ground-truth mask are GT_MASK (kept as given, fixed in merge) or LABEL
    (``LabelConfig.keep_gt_masks``; a run's input and config must agree).
    """

    source: str
    fingerprint: str
    top: list[tuple[str, Any]]
    images_raw: list[dict[str, Any]]
    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    file_names: list[str]
    paths: list[str | None]
    ann_ids: np.ndarray
    ann_image: np.ndarray
    ann_boxes: np.ndarray
    ann_kind: np.ndarray
    ann_raw: list[str]
    skipped: list[tuple[int, str]]
    clipped: int
    keep_gt_masks: bool = True
    _image_order: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _label_pos: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _label_ptr: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _all_pos: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _all_ptr: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        self._image_order = np.argsort(self.image_ids, kind="stable")

        def csr(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            order = positions[np.argsort(self.ann_image[positions], kind="stable")]
            ptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.ann_image[positions], minlength=n), out=ptr[1:])
            return order, ptr

        self._label_pos, self._label_ptr = csr(np.flatnonzero(self.ann_kind == LABEL))
        self._all_pos, self._all_ptr = csr(np.arange(len(self.ann_ids)))

    @classmethod
    def from_coco(cls, coco: Any, keep_gt_masks: bool = True) -> BoxInput:
        """From a validated ``CocoData`` (``data.coco.load_coco`` / ``data.voc.load_voc``)."""
        raw = coco.raw
        index = {im.id: i for i, im in enumerate(coco.images)}
        by_id = {a.id: (i, a) for i, im in enumerate(coco.images) for a in im.annotations}
        n = len(raw["annotations"])
        ann_ids = np.empty(n, dtype=np.int64)
        ann_image = np.empty(n, dtype=np.int64)
        ann_boxes = np.zeros((n, 4), dtype=np.float64)
        ann_kind = np.empty(n, dtype=np.int8)
        ann_raw = []
        for p, a in enumerate(raw["annotations"]):
            aid = int(float(a["id"]))
            hit = by_id.get(aid)
            ann_ids[p] = aid
            if hit is None:  # the reader skipped it (zero-size, outside its image)
                ann_image[p] = index[int(float(a["image_id"]))]
                ann_kind[p] = SKIPPED
            else:
                ann_image[p] = hit[0]
                ann_boxes[p] = hit[1].box
                ann_kind[p] = (CROWD if hit[1].iscrowd else
                               GT_MASK if keep_gt_masks and is_gt_annotation(a) else LABEL)
            ann_raw.append(json.dumps(a))
        source = str(coco.source)
        fingerprint = (file_fingerprint(source) if Path(source).is_file()
                       else config_fingerprint(raw))
        return cls(
            source=str(Path(source).resolve()) if Path(source).is_file() else source,
            fingerprint=fingerprint,
            top=[(k, formats.ANNOTATIONS if k == "annotations" else v) for k, v in raw.items()],
            images_raw=raw["images"],
            image_ids=np.array([im.id for im in coco.images], dtype=np.int64),
            heights=np.array([im.height for im in coco.images], dtype=np.int64),
            widths=np.array([im.width for im in coco.images], dtype=np.int64),
            file_names=[im.file_name for im in coco.images],
            paths=[None if im.path is None else str(im.path) for im in coco.images],
            ann_ids=ann_ids, ann_image=ann_image, ann_boxes=ann_boxes, ann_kind=ann_kind,
            ann_raw=ann_raw, skipped=list(coco.skipped),
            clipped=int(coco.report.get("clipped_box", 0)), keep_gt_masks=keep_gt_masks)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def image_index(self, image_id: int) -> int:
        """Position of ``image_id`` in the input, or -1."""
        j = int(np.searchsorted(self.image_ids, image_id, sorter=self._image_order))
        if j < len(self.image_ids) and self.image_ids[self._image_order[j]] == image_id:
            return int(self._image_order[j])
        return -1

    def label_positions(self, i: int) -> np.ndarray:
        """Annotation positions of image ``i`` to label, in input order."""
        return self._label_pos[self._label_ptr[i]:self._label_ptr[i + 1]]

    def all_positions(self, i: int) -> np.ndarray:
        return self._all_pos[self._all_ptr[i]:self._all_ptr[i + 1]]

    def boxes_per_image(self) -> np.ndarray:
        return np.diff(self._label_ptr)

    def task(self, i: int) -> ImageTask:
        pos = self.label_positions(i)
        path = self.paths[i]
        task = ImageTask(int(self.image_ids[i]), self.file_names[i],
                         None if path is None else Path(path), int(self.heights[i]),
                         int(self.widths[i]), self.ann_ids[pos], self.ann_boxes[pos])
        if len(pos):  # an image with nothing to label is not read, its GT masks not needed
            allp = self.all_positions(i)
            gt = allp[self.ann_kind[allp] == GT_MASK]
            if len(gt):
                task.gt_ids, task.gt_boxes = self.ann_ids[gt], self.ann_boxes[gt]
                task.gt_segmentations = [json.loads(self.ann_raw[p])["segmentation"]
                                         for p in gt]
        return task


def assign_shards(weights: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index [0, N) of every item: heaviest first, each to the least loaded shard.

    Deterministic: ties in weight go by position, ties in load by (fewest items, lowest shard).
    """
    weights = np.asarray(weights, dtype=np.int64)
    shard = np.zeros(len(weights), dtype=np.int64)
    heap = [(0, 0, k) for k in range(num_shards)]
    for i in np.lexsort((np.arange(len(weights)), -weights)):
        load, count, k = heapq.heappop(heap)
        shard[i] = k
        heapq.heappush(heap, (load + int(weights[i]), count + 1, k))
    return shard


# --------------------------------------------------------------------------------------------
# part files


def part_path(out: str | os.PathLike, shard: int, num_shards: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.part-{shard:05d}-of-{num_shards:05d}.jsonl")


def make_header(boxes: BoxInput, method: str, cfg: LabelConfig, shard: int,
                num_shards: int) -> dict[str, Any]:
    config = to_dict(cfg)
    return {"part_version": PART_VERSION, "method": method, "config": config,
            "config_fingerprint": config_fingerprint({"method": method, "config": config}),
            "input": {"source": boxes.source, "fingerprint": boxes.fingerprint,
                      "images": boxes.num_images, "annotations": len(boxes.ann_ids)},
            "shard": shard, "num_shards": num_shards}


def check_header(found: dict[str, Any], want: dict[str, Any], path: Path) -> None:
    """Refuse to continue a part written by another run; the message says what differs."""
    again = "rerun without --resume to start over"
    if found.get("part_version") != PART_VERSION:
        raise ConfigError(f"{path}: written by a different boxcaseg version (part format "
                          f"{found.get('part_version')}); {again}")
    if found["num_shards"] != want["num_shards"] or found["shard"] != want["shard"]:
        raise ConfigError(
            f"{path}: was started as shard {found['shard']} of {found['num_shards']} "
            f"(world size {found['num_shards']}), this run is shard {want['shard']} of "
            f"{want['num_shards']}: a different world size; rerun with "
            f"{found['num_shards']} processes/shards, or {again}")
    if found["input"]["fingerprint"] != want["input"]["fingerprint"]:
        raise ConfigError(f"{path}: was written for a different input: the box file "
                          f"{want['input']['source']} changed since that run (content hash "
                          f"differs); restore it, or {again}")
    if found["method"] != want["method"]:
        raise ConfigError(f"{path}: was written with a different method ({found['method']}, "
                          f"now {want['method']}); {again}")
    if found["config_fingerprint"] != want["config_fingerprint"]:
        a, b = found["config"], want["config"]
        diff = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                         if a.get(k) != b.get(k))
        raise ConfigError(f"{path}: was written with a different config ({diff}); restore "
                          f"the settings, or {again}")


def read_part_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        header = json.loads(first)["header"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a boxcaseg label part (unreadable header: {e}); delete "
                        "it or run without --resume") from e
    if not isinstance(header, dict) or "num_shards" not in header:
        raise DataError(f"{path}: not a boxcaseg label part (header has no shard info)")
    return header


def read_progress(path: Path) -> tuple[dict[str, Any], list[int], bool]:
    """(header, image ids with a record, complete) of a part; a torn last line is ignored."""
    header = read_part_header(path)
    done: list[int] = []
    complete = False
    with open(path, "rb") as f:
        f.readline()
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if all(not x.strip() for x in lines[i - 1:]):
                log.warning("%s: ignoring a torn last line (interrupted write)", path)
                break
            raise DataError(f"{path}: corrupt line {i}; delete it or run without --resume")
        if "end" in rec:
            complete = True
        else:
            done.append(int(rec["image_id"]))
    return header, done, complete


class PartWriter:
    """Appends records to a part's progress file, flushed and fsynced per chunk."""

    def __init__(self, path: Path, header: dict[str, Any], append: bool):
        self.path = path
        if append:
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

    def finish(self, records: int) -> None:
        self.write([json.dumps({"end": {"records": records}})])

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# --------------------------------------------------------------------------------------------
# merge


@dataclass
class PartIndex:
    """Where each image's record lies (part, byte offset), plus the merged summary."""

    boxes: BoxInput
    parts: list[Path]
    header: dict[str, Any]
    rec_part: np.ndarray
    rec_offset: np.ndarray
    summary: LabelSummary
    duplicates: int = 0

    def label_block(self) -> dict[str, Any]:
        return {"method": self.header["method"], "config": self.header["config"],
                "summary": self.summary.to_file_dict()}

    @property
    def all_failed(self) -> bool:
        s = self.summary
        return s.instances > 0 and s.instances_labeled == 0 and bool(s.images_failed)


def _scan(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as f:
        f.readline()
        while True:
            offset = f.tell()
            line = f.readline()
            if not line:
                return
            if line.strip():
                try:
                    yield offset, json.loads(line)
                except ValueError:
                    raise DataError(f"{path}: corrupt record at byte {offset} (torn write of "
                                    "an interrupted run?); rerun that shard with --resume"
                                    ) from None


def index_parts(parts: Sequence[str | os.PathLike], boxes: BoxInput) -> PartIndex:
    """Check the parts against each other and the input; index every image's record."""
    parts = [Path(p) for p in parts]
    if not parts:
        raise ConfigError("no part files given")
    headers = [read_part_header(p) for p in parts]
    first = headers[0]
    for p, h in zip(parts, headers):
        if h["input"]["fingerprint"] != boxes.fingerprint:
            raise DataError(f"{p}: was labeled from a different input than {boxes.source} "
                            "(content hash differs)")
        if (h["config_fingerprint"], h["num_shards"]) != (first["config_fingerprint"],
                                                          first["num_shards"]):
            raise DataError(f"{p}: made with another method, config or number of shards than "
                            f"{parts[0]} (shard {h['shard']} of {h['num_shards']} vs "
                            f"{first['shard']} of {first['num_shards']}); parts of one run only")
    # parts from before keep_gt_masks existed labeled every box
    if bool(first["config"].get("keep_gt_masks", False)) != boxes.keep_gt_masks:
        raise DataError(f"{parts[0]}: labeled with keep_gt_masks="
                        f"{first['config'].get('keep_gt_masks', False)} but the input was read "
                        f"with keep_gt_masks={boxes.keep_gt_masks} (BoxInput.from_coco)")
    missing = sorted(set(range(first["num_shards"])) - {h["shard"] for h in headers})
    if missing:
        raise DataError(f"parts of shard(s) {missing} of {first['num_shards']} are missing "
                        f"(given: {', '.join(map(str, parts))})")

    n = boxes.num_images
    rec_part = np.full(n, -1, dtype=np.int32)
    rec_offset = np.zeros(n, dtype=np.int64)
    s = LabelSummary(method=first["method"], images=n, skipped=list(boxes.skipped),
                     clipped=boxes.clipped)
    s.instances = int(np.isin(boxes.ann_kind, (LABEL, GT_MASK)).sum())  # GT ones count too
    s.crowd = int((boxes.ann_kind == CROWD).sum())
    s.gt_masks = int((boxes.ann_kind == GT_MASK).sum())
    failed: list[tuple[int, int, str]] = []
    duplicates = 0
    for j, p in enumerate(parts):
        complete = False
        for offset, rec in _scan(p):
            if "end" in rec:
                complete = True
                continue
            i = boxes.image_index(int(rec["image_id"]))
            if i < 0:
                raise DataError(f"{p}: record for image {rec['image_id']}, which the input "
                                "does not have")
            if rec_part[i] >= 0:  # the same image answered twice (a part given twice)
                duplicates += 1
                continue
            want = boxes.ann_ids[boxes.label_positions(i)].tolist()
            got = [int(a) for a, _ in rec["anns"]]
            if got != (want if rec["error"] is None else []):
                raise DataError(f"{p}: image {rec['image_id']} answers annotations "
                                f"{got[:10]} but the input has {want[:10]} to label")
            rec_part[i], rec_offset[i] = j, offset
            if rec["error"] is not None:
                failed.append((i, int(rec["image_id"]), rec["error"]))
                s.annotations_failed += len(want)
            s.grabcut_fallbacks += rec["fallbacks"]
            for _, f in rec["anns"]:
                s.instances_labeled += 1
                s.dropped += bool(f["ignore_mask"])
                s.empty_masks += f["area"] == 0
        if not complete:
            raise DataError(f"{p}: incomplete part (no end marker: the run writing it was "
                            "interrupted); rerun that shard with --resume")
    lost = np.flatnonzero(rec_part < 0)
    if len(lost):
        nboxes = int(boxes.boxes_per_image()[lost].sum())
        raise DataError(f"{len(lost)} image(s) with {nboxes} box(es) have no record in the "
                        f"parts (first image ids {boxes.image_ids[lost[:5]].tolist()}); a part "
                        "is missing or was cut short")
    if duplicates:
        log.warning("%d image record(s) appear in more than one part; duplicates dropped",
                    duplicates)
    s.images_failed = [(iid, err) for _, iid, err in sorted(failed)]
    return PartIndex(boxes, parts, first, rec_part, rec_offset, s, duplicates)


class _Records:
    """Parsed records by image index, read on demand from the parts (small LRU cache)."""

    def __init__(self, index: PartIndex, capacity: int = 512):
        self.index = index
        self.files = [open(p, "rb") for p in index.parts]
        self.cache: OrderedDict[int, dict[int, dict[str, Any]]] = OrderedDict()
        self.capacity = capacity

    def fields(self, i: int) -> dict[int, dict[str, Any]]:
        hit = self.cache.get(i)
        if hit is not None:
            self.cache.move_to_end(i)
            return hit
        f = self.files[self.index.rec_part[i]]
        f.seek(int(self.index.rec_offset[i]))
        rec = json.loads(f.readline())
        hit = {int(a): fl for a, fl in rec["anns"]}
        self.cache[i] = hit
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return hit

    def annotation(self, p: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(output annotation, its labeling fields or None) of input annotation ``p``.

        Labeled annotations gain ``mask_source`` (the method); GT masks (mixed supervision)
        are passed through as given plus ``mask_source: "gt"`` and ``score: 1.0``.
        Annotations passed through without a mask get an empty one marked
        ``boxcaseg_no_mask`` (``structures.fill_missing_segmentations``), so COCO tools can
        read every annotation."""
        boxes = self.index.boxes
        ann = json.loads(boxes.ann_raw[p])
        fields = None
        i = int(boxes.ann_image[p])
        if boxes.ann_kind[p] == LABEL:
            fields = self.fields(i).get(int(boxes.ann_ids[p]))
            if fields is not None:
                ann.update(fields)  # existing keys keep their position, new ones go last
                ann["mask_source"] = self.index.header["method"]
        elif boxes.ann_kind[p] == GT_MASK:
            ann.update({"mask_source": GT, "score": 1.0})
        if fields is None and not ann.get("segmentation"):
            ann = with_empty_mask(ann, int(boxes.heights[i]), int(boxes.widths[i]))
        return ann, fields

    def close(self) -> None:
        for f in self.files:
            f.close()


def write_output(index: PartIndex, out: str | os.PathLike, fmt: str = "dataset") -> Path:
    """Stream the merged labels into ``out`` in format ``fmt`` (``formats.FORMATS``)."""
    if fmt not in formats.FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {list(formats.FORMATS)}")
    boxes = index.boxes
    records = _Records(index)
    try:
        if fmt == "dataset":
            anns = (records.annotation(p)[0] for p in range(len(boxes.ann_ids)))
            return formats.write_dataset(out, boxes.top, anns, index.label_block())
        if fmt == "results":
            entries = (formats.result_entry(a, f) for a, f in
                       (records.annotation(p) for p in range(len(boxes.ann_ids)))
                       if f is not None)
            return formats.write_results(out, entries)
        meta = {k: v for k, v in boxes.top if k not in ("images", "annotations")}
        meta["boxcaseg_label"] = index.label_block()
        per_image = ((boxes.images_raw[i],
                      [records.annotation(int(p))[0] for p in boxes.all_positions(i)])
                     for i in range(boxes.num_images))
        return formats.write_jsonl(out, meta, per_image)
    finally:
        records.close()


def all_failed_error(index: PartIndex) -> DataError:
    s = index.summary
    iid, err = s.images_failed[0]
    return DataError(f"every image failed to load ({len(s.images_failed)} image(s), no mask "
                     f"written; first: image {iid}: {err}); check --images (the folder the "
                     "COCO file_name entries are relative to)")


# --------------------------------------------------------------------------------------------
# the job


def _other_layouts(out: Path, num_shards: int) -> list[tuple[Path, int]]:
    """Progress files / parts of ``out`` left by runs with another number of processes."""
    found = []
    if num_shards > 1 and sidecar_path(out).exists():
        found.append((sidecar_path(out), 1))
    for p in sorted(out.parent.glob(out.name + ".part-*-of-*.jsonl*")):
        m = _PART_RE.search(p.name[len(out.name):])
        if m and not p.name.endswith(".lock") and int(m.group(2)) != num_shards:
            found.append((p, int(m.group(2))))
    return found


def label_job(boxes: BoxInput, out: str | os.PathLike, method: str, cfg: LabelConfig,
              model: Any = None, resume: bool = False, progress: bool = True,
              fmt: str = "dataset", shard: tuple[int, int] | None = None,
              dist: DistInfo | None = None) -> LabelSummary:
    """Label ``boxes`` into ``out``: one process, a torchrun rank (``dist``), or one
    ``shard=(K, N)`` of a job array (then ``out`` is the part file). See the module doc."""
    cfg.validate()
    check_method(method, model)
    if boxes.keep_gt_masks != cfg.keep_gt_masks:
        raise ConfigError(f"the input was read with keep_gt_masks={boxes.keep_gt_masks}, the "
                          f"config says {cfg.keep_gt_masks}; build it with "
                          "BoxInput.from_coco(coco, keep_gt_masks=cfg.keep_gt_masks)")
    if method == "boxcaseg":  # record the crop actually used (the checkpoint's by default)
        cfg = resolve_crop_size(cfg, getattr(model, "model", model))
    if fmt not in formats.FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {list(formats.FORMATS)}")
    out = Path(out)
    info = dist or DistInfo()
    if shard is not None and info.distributed:
        raise ConfigError("--shard K/N is for job arrays without a process group; under "
                          "torchrun every rank takes its shard by itself (drop --shard)")
    if shard is not None:
        k, n = shard
        if not 0 <= k < n:
            raise ConfigError(f"--shard {k}/{n}: K must be in [0, N)")
        mode, part = "shard", out
    elif info.distributed:
        k, n, mode = info.rank, info.world_size, "ranks"
        part = part_path(out, k, n)
    else:
        k, n, mode, part = 0, 1, "single", None

    locks: list[OutputLock] = []
    try:
        if mode == "ranks":
            # rank 0 holds the output; nobody touches a part before it has it
            error: BoxcasegError | None = None
            if info.is_main:
                try:
                    locks.append(OutputLock(out, "boxcaseg label"))
                    locks[-1].acquire()
                except OutputLockedError as e:
                    locks.pop()
                    error = e
            if not all_true(error is None, info):
                raise error or DataError(f"{out}: in use by another run (rank 0 could not "
                                         "take its lock; see rank 0's message)")
            locks.append(OutputLock(part, "boxcaseg label"))
            locks[-1].acquire()
        else:
            locks.append(OutputLock(out, "boxcaseg label"))
            locks[-1].acquire()

        if mode != "shard":
            if info.is_main:  # leftovers of a write of OUT killed midway (we hold its lock)
                remove_stale_temp_files(out)
            for p, other in _other_layouts(out, n):
                if resume:
                    raise ConfigError(
                        f"{p}: was started with world size {other}, this run has {n}: a "
                        f"different world size; rerun with {other} process(es), or without "
                        "--resume to start over")
                if info.is_main:
                    log.warning("%s: left by a run with %d process(es); removing it (starting "
                                "over)", p, other)
                    p.unlink(missing_ok=True)

        header = make_header(boxes, method, cfg, k, n)
        progress_file = sidecar_path(part if part is not None else out)
        summary = _label_part(boxes, progress_file, part, header, method, cfg, model, resume,
                              progress, info)
        if mode == "shard":
            return summary

        barrier(info)
        error = None
        merged: LabelSummary | None = None
        if info.is_main:
            parts = [part_path(out, j, n) for j in range(n)] if mode == "ranks" \
                else [sidecar_path(out)]
            try:
                t0 = time.perf_counter()
                index = index_parts(parts, boxes)
                if index.all_failed:
                    for p in parts:  # a rerun must retry them, not resume the failures
                        p.unlink(missing_ok=True)
                    raise all_failed_error(index)
                write_output(index, out, fmt)
                for p in parts:
                    p.unlink(missing_ok=True)
                merged = index.summary
                log.info("merged %d part(s) into %s in %.1f s", len(parts), out,
                         time.perf_counter() - t0)
            except BoxcasegError as e:
                error = e
        if not all_true(error is None, info):
            raise error or DataError(f"{out}: rank 0 could not merge the parts (see its "
                                     "message)")
        if merged is not None:
            for name in ("images_resumed", "instances_this_run", "seconds", "setup_seconds"):
                setattr(merged, name, getattr(summary, name))
            return merged
        return summary
    finally:
        for lock in reversed(locks):
            lock.release()


def _label_part(boxes: BoxInput, progress_file: Path, part: Path | None,
                header: dict[str, Any], method: str, cfg: LabelConfig, model: Any, resume: bool,
                progress: bool, info: DistInfo) -> LabelSummary:
    """Label this shard's images into ``progress_file``; rename it to ``part`` when complete
    (``part`` None: the one-process layout, merged from the progress file)."""
    k, n = header["shard"], header["num_shards"]
    summary = LabelSummary(method=method)
    shard_images = np.flatnonzero(assign_shards(boxes.boxes_per_image(), n) == k)
    summary.images = len(shard_images)

    if part is not None and part.exists():
        if resume:
            found, done_ids, complete = read_progress(part)
            check_header(found, header, part)
            if complete:
                log.info("%s: complete from an earlier run; nothing to label", part)
                summary.images_resumed = len(done_ids)
                return summary
        log.warning("%s exists from an earlier run; starting over%s", part,
                    "" if resume else " (use --resume to continue)")
        part.unlink()
    done: set[int] = set()
    append = False
    if progress_file.exists():
        if resume:
            found, done_ids, _ = read_progress(progress_file)
            check_header(found, header, progress_file)
            done, append = set(done_ids), True
            log.info("resuming: %d of %d images already labeled in %s", len(done),
                     len(shard_images), progress_file)
        else:
            log.warning("%s exists from an earlier run; starting over (use --resume to "
                        "continue)", progress_file)
    elif resume:
        log.warning("--resume: no progress file %s (nothing to resume); labeling from the "
                    "first image", progress_file)
    summary.images_resumed = len(done)

    t0 = time.perf_counter()
    predictor = None
    if method == "boxcaseg":
        from boxcaseg.labeling.predict import get_predictor
        # the config stays as the user wrote it (it is in the header); each rank drives its
        # own device
        pcfg = dataclasses.replace(cfg, device=str(info.device)) if info.distributed else cfg
        predictor = get_predictor(model, pcfg)
        log.info("BoxCaseg predictor on %s, TorchScript %s", predictor.device,
                 "on" if predictor.jit_used else "off")
    summary.setup_seconds = time.perf_counter() - t0

    todo = [int(i) for i in shard_images if int(boxes.image_ids[i]) not in done]
    writer = PartWriter(progress_file, header, append=append)
    records = len(done)
    desc = f"label {method}" + (f" [{k}/{n}]" if n > 1 else "")
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(shard_images), initial=len(done), unit="img", desc=desc,
                  disable=not progress, position=k if n > 1 else None) as bar:
            for chunk in label_images((boxes.task(i) for i in todo), method, cfg, predictor):
                writer.write([json.dumps(r) for r in chunk])
                records += len(chunk)
                summary.instances_this_run += sum(len(r["anns"]) for r in chunk)
                bar.update(len(chunk))
        writer.finish(records)
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - t0
    log.info("shard %d/%d: labeled %d instances in %.2f s (%d images resumed)", k, n,
             summary.instances_this_run, summary.seconds, summary.images_resumed)
    if part is not None:
        os.replace(progress_file, part)
    return summary
