"""The labels file: the one definition of what ``boxcaseg label`` writes, and its one reader.

A labels file (format ``dataset``, the default) is the input COCO dataset, every field kept,
where each annotation the labeler answered gains

* ``segmentation``: the mask (compressed RLE of the image size, or exact polygons);
* ``area``: the mask's pixel count;
* ``ignore_mask``: the keep/drop decision (``labeling.postprocess.ignores``): Mask R-CNN
  leaves such masks out of its mask loss, ``eval --only-kept`` out of the scores;
* ``proxy_iou``: the paper's proxy box agreement; ``score``: the predicted mask IoU
  (``labeling.score``);
* ``mask_source``: who made the mask (:data:`MASK_SOURCES`).

Ground-truth masks of the input (mixed supervision) are passed through as given with
``mask_source: "gt"`` and ``score: 1.0``; annotations passed through without any mask get an
empty RLE marked ``boxcaseg_no_mask: true`` (:func:`with_empty_mask`) so every COCO tool can
read every annotation. A top-level ``boxcaseg_label`` block records the method, the config,
the run's summary and :data:`FORMAT_VERSION`.

Everything that reads a labels file (merge, report, export, calibrate, training's GT-mask
path, Mask R-CNN's dataset) takes these names from here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from boxcaseg.errors import ConfigError, DataError

FORMAT_VERSION = 1  # bump when a field changes meaning; written into every labels file

# field names on an annotation
SEGMENTATION = "segmentation"
AREA = "area"
IGNORE_MASK = "ignore_mask"
PROXY_IOU = "proxy_iou"
SCORE = "score"
MASK_SOURCE = "mask_source"
NO_MASK = "boxcaseg_no_mask"  # the empty mask of an annotation passed through without one
# the top-level block
LABEL_BLOCK = "boxcaseg_label"
VERSION_KEY = "format_version"

GT = "gt"  # mask_source of a mask the user gave
PROXY_SOURCES = ("boxcaseg", "grabcut", "box", "sam")  # the labeler's own mask sources
MASK_SOURCES = (*PROXY_SOURCES, GT)
LABEL_FIELDS = (IGNORE_MASK, PROXY_IOU, SCORE)  # on every annotation the labeler answered


# --------------------------------------------------------------------------------------------
# annotations


def is_labeled(ann: Mapping[str, Any]) -> bool:
    """True iff the labeler answered this annotation (it carries the label fields)."""
    return any(k in ann for k in LABEL_FIELDS)


def is_gt_annotation(ann: Mapping[str, Any]) -> bool:
    """True iff a raw COCO annotation carries a user-given (ground-truth) mask.

    The labeler marks its own masks with ``mask_source`` and the masks it passed through with
    ``"gt"``; a file labeled before ``mask_source`` existed is recognised by its
    ``proxy_iou``. So a labels file fed back in is never mistaken for ground truth."""
    if ann.get("iscrowd") or ann.get(NO_MASK):
        return False
    if not ann.get(SEGMENTATION):
        return False
    source = ann.get(MASK_SOURCE)
    if source is None:
        return PROXY_IOU not in ann
    return source == GT


def gt_annotation_ids(annotations: Sequence[Mapping[str, Any]]) -> set[int]:
    """Ids of the annotations of a raw COCO list that carry a ground-truth mask."""
    return {int(a["id"]) for a in annotations if is_gt_annotation(a)}


def score(fields: Mapping[str, Any]) -> float:
    """The quality score of a labeled mask (the one place that defines it): the labeler's
    predicted mask IoU; the proxy box agreement for files written before ``score`` existed."""
    return float(fields[SCORE]) if SCORE in fields else float(fields[PROXY_IOU])


def instance_score(ann: Mapping[str, Any]) -> float | None:
    """:func:`score` of an annotation, ``None`` where the labeler did not answer it or the
    value is not a finite number."""
    if not is_labeled(ann):
        return None
    try:
        v = float(score(ann))
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def empty_rle_counts(height: int, width: int) -> str:
    """Compressed RLE ``counts`` of an all-empty ``height x width`` mask (no array built)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects({"counts": [height * width], "size": [height, width]},
                                 height, width)
    return rle["counts"].decode("ascii")


def with_empty_mask(ann: dict[str, Any], height: int, width: int,
                    counts: str | None = None) -> dict[str, Any]:
    """A copy of ``ann`` with an empty RLE of its image's size, marked :data:`NO_MASK`.

    Annotations passed through without a mask (boxes the labeler skipped, boxes of images it
    could not read, crowd regions without a mask) would otherwise make ``COCO.annToMask`` and
    ``COCOeval`` raise. The mark says the empty mask is no label: ``train-maskrcnn`` leaves
    such annotations out, ``eval`` scores them as missing; ``area`` is set to 0 where absent
    (COCOeval needs it)."""
    new = dict(ann)
    new[SEGMENTATION] = {"size": [height, width],
                         "counts": counts or empty_rle_counts(height, width)}
    new.setdefault(AREA, 0)
    new[NO_MASK] = True
    return new


def label_block(method: str, config: Mapping[str, Any], summary: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The top-level ``boxcaseg_label`` block of an output."""
    return {"method": method, "config": dict(config), "summary": dict(summary),
            VERSION_KEY: FORMAT_VERSION}


# --------------------------------------------------------------------------------------------
# the reader


def read_labels(path: str | os.PathLike) -> dict[str, Any]:
    """A labels file in the ``dataset`` format, as a dict; the one reader of labels files.

    ``results`` lists and ``jsonl`` files are refused with what to do (label, or
    ``merge-labels`` the parts, with ``--format dataset``); a file of a newer format version
    than this boxcaseg knows is refused too."""
    from boxcaseg.io import read_json

    fix = ("this command reads the dataset format; label (or merge-labels the parts) with "
           "--format dataset")
    p = Path(path)
    if p.is_file():
        with open(p, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16).lstrip()
        if head.startswith("["):
            raise ConfigError(f"{p}: a COCO results list (label --format results); {fix}")
        first = head.split("\n", 1)[0]
        try:
            line = json.loads(first)
        except ValueError:
            line = None
        if isinstance(line, dict) and set(line) == {"dataset"} and "\n" in head.rstrip():
            raise ConfigError(f"{p}: a JSON-lines labels file (label --format jsonl); {fix}")
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{p}: not a COCO labels file (no 'annotations' list)")
    block = data.get(LABEL_BLOCK)
    version = block.get(VERSION_KEY, 0) if isinstance(block, dict) else 0
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{p}: labels format version {version!r} is newer than this boxcaseg "
                        f"reads ({FORMAT_VERSION}); upgrade boxcaseg")
    return data


def label_info(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``boxcaseg_label`` block of a labels dict ({} when absent)."""
    block = data.get(LABEL_BLOCK)
    return dict(block) if isinstance(block, dict) else {}


def iter_annotations(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The annotations of a labels file in any ``boxcaseg label --format`` (``dataset``,
    ``results``, ``jsonl``), streamed where the format allows; results entries are given
    their ``annotation_id`` as ``id``."""
    from boxcaseg.io import read_json

    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n} is not JSON ({e.msg})") from None
                yield from row.get("annotations", [])
        return
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        yield from data["annotations"]
    elif isinstance(data, list):  # results format
        for r in data:
            if not isinstance(r, dict) or "annotation_id" not in r:
                raise DataError(f"{path}: a results list whose entries lack annotation_id "
                                "(teacher_labels takes `boxcaseg label` output)")
            yield {**r, "id": r["annotation_id"]}
    else:
        raise DataError(f"{path}: not a labels file (a COCO dataset with annotations, a "
                        "results list or a jsonl file from `boxcaseg label`)")
