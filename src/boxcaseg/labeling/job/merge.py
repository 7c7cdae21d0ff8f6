"""Merge: check the parts against each other and the input, then stream the output.

The merge checks that every image of the input has exactly one record (duplicates from a part
given twice are dropped by image id), that each record was made from the image's current
annotations (its ``input`` hash) and answers exactly its image's boxes; a missing one is an
error, never a gap. Memory stays flat: an index of byte offsets per image and a small cache
of parsed records feed the writers.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxcaseg.errors import ConfigError, DataError
from boxcaseg.labeling.job.inputs import CROWD, GT_MASK, LABEL, BoxInput
from boxcaseg.labeling.job.parts import read_part_header, scan
from boxcaseg.labeling.job.summary import LabelSummary
from boxcaseg.labeling.job.writers import (FORMATS, result_entry, write_dataset, write_jsonl,
                                           write_results)
from boxcaseg.labeling.schema import (GT, LABEL_BLOCK, MASK_SOURCE, SCORE, SEGMENTATION,
                                      label_block, with_empty_mask)

log = logging.getLogger(__name__)


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
        return label_block(self.header["method"], self.header["config"],
                           self.summary.to_file_dict())

    @property
    def all_failed(self) -> bool:
        s = self.summary
        return s.instances > 0 and s.instances_labeled == 0 and bool(s.images_failed)


def index_parts(parts: Sequence[str | os.PathLike], boxes: BoxInput) -> PartIndex:
    """Check the parts against each other and the input; index every image's record."""
    parts = [Path(p) for p in parts]
    if not parts:
        raise ConfigError("no part files given")
    headers = [read_part_header(p) for p in parts]
    first = headers[0]
    for p, h in zip(parts, headers):
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
        for offset, rec in scan(p):
            if "end" in rec:
                complete = True
                continue
            i = boxes.image_index(int(rec["image_id"]))
            if i < 0:
                raise DataError(f"{p}: record for image {rec['image_id']}, which the input "
                                "does not have")
            if rec.get("input") != boxes.image_hash(i):
                raise DataError(f"{p}: image {rec['image_id']} was labeled from other "
                                f"annotations than {boxes.source} has now (its entry or boxes "
                                "changed); relabel that shard with --resume")
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
        ``boxcaseg_no_mask`` (``schema.with_empty_mask``), so COCO tools can read every
        annotation."""
        boxes = self.index.boxes
        ann = json.loads(boxes.ann_raw[p])
        fields = None
        i = int(boxes.ann_image[p])
        if boxes.ann_kind[p] == LABEL:
            fields = self.fields(i).get(int(boxes.ann_ids[p]))
            if fields is not None:
                ann.update(fields)  # existing keys keep their position, new ones go last
                ann[MASK_SOURCE] = self.index.header["method"]
        elif boxes.ann_kind[p] == GT_MASK:
            ann.update({MASK_SOURCE: GT, SCORE: 1.0})
        if fields is None and not ann.get(SEGMENTATION):
            ann = with_empty_mask(ann, int(boxes.heights[i]), int(boxes.widths[i]))
        return ann, fields

    def close(self) -> None:
        for f in self.files:
            f.close()


def write_output(index: PartIndex, out: str | os.PathLike, fmt: str = "dataset") -> Path:
    """Stream the merged labels into ``out`` in format ``fmt`` (``FORMATS``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    boxes = index.boxes
    records = _Records(index)
    try:
        if fmt == "dataset":
            anns = (records.annotation(p)[0] for p in range(len(boxes.ann_ids)))
            return write_dataset(out, boxes.top, anns, index.label_block())
        if fmt == "results":
            entries = (result_entry(a, f) for a, f in
                       (records.annotation(p) for p in range(len(boxes.ann_ids)))
                       if f is not None)
            return write_results(out, entries)
        meta = {k: v for k, v in boxes.top if k not in ("images", "annotations")}
        meta[LABEL_BLOCK] = index.label_block()
        per_image = ((boxes.images_raw[i],
                      [records.annotation(int(p))[0] for p in boxes.all_positions(i)])
                     for i in range(boxes.num_images))
        return write_jsonl(out, meta, per_image)
    finally:
        records.close()


def all_failed_error(index: PartIndex) -> DataError:
    s = index.summary
    iid, err = s.images_failed[0]
    return DataError(f"every image failed to load ({len(s.images_failed)} image(s), no mask "
                     f"written; first: image {iid}: {err}); check --images (the folder the "
                     "COCO file_name entries are relative to)")


