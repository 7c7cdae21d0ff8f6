"""Output writers: they consume a stream of annotations, so memory stays flat.

Formats (``--format``):

* ``dataset`` (default): the input COCO dataset JSON, every field kept, each labeled
  annotation with the fields of ``labeling.schema``, and the top-level ``boxcaseg_label``
  block. Byte for byte what ``json.dump`` of the whole dict writes, but streamed one
  annotation at a time.
* ``results``: a COCO results list (``COCO.loadRes``, ``COCOeval``): one entry per labeled
  annotation with ``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation`` and,
  as extras, ``annotation_id``, ``ignore_mask``, ``proxy_iou`` and ``mask_source``. GT masks
  of the input (mixed supervision) are not results and are left out (they are in the input).
  A list has no room for the format version; the other two formats carry it.
* ``jsonl``: a first line ``{"dataset": {...}}`` with every top-level key except ``images``
  and ``annotations`` (plus ``boxcaseg_label``), then one line per image
  ``{"image": {...}, "annotations": [...]}`` in input order: for sets too large to parse as
  one JSON document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from boxcaseg.io import atomic_write
from boxcaseg.labeling.job.inputs import ANNOTATIONS
from boxcaseg.labeling.schema import LABEL_BLOCK, score

FORMATS = ("dataset", "results", "jsonl")


def result_entry(ann: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """One COCO results entry for a labeled input annotation."""
    return {"image_id": ann["image_id"], "category_id": ann["category_id"],
            "bbox": ann["bbox"], "score": score(fields),
            "segmentation": fields["segmentation"], "annotation_id": ann["id"],
            "ignore_mask": fields["ignore_mask"], "proxy_iou": fields["proxy_iou"],
            "mask_source": ann.get("mask_source")}


def _write_list(f: IO[str], items: Iterable[Any]) -> None:
    # the separators json.dump uses, so the streamed file equals json.dump of the whole
    f.write("[")
    for i, item in enumerate(items):
        if i:
            f.write(", ")
        f.write(json.dumps(item))
    f.write("]")


def _atomic_stream(path: str | os.PathLike, body: Any) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            body(f)
            f.flush()
            os.fsync(f.fileno())
    return atomic_write(path, write)


def write_dataset(path: str | os.PathLike, top: list[tuple[str, Any]],
                  annotations: Iterable[dict[str, Any]], label_block: dict[str, Any]) -> Path:
    """``top``: the input's top-level (key, value) pairs in order, ``ANNOTATIONS`` as the value
    of ``"annotations"``; ``annotations`` streamed there; ``label_block`` appended last."""
    def body(f: IO[str]) -> None:
        f.write("{")
        for i, (key, value) in enumerate([*top, (LABEL_BLOCK, label_block)]):
            f.write((", " if i else "") + json.dumps(key) + ": ")
            if value is ANNOTATIONS:
                _write_list(f, annotations)
            else:
                f.write(json.dumps(value))
        f.write("}")
    return _atomic_stream(path, body)


def write_results(path: str | os.PathLike, entries: Iterable[dict[str, Any]]) -> Path:
    return _atomic_stream(path, lambda f: _write_list(f, entries))


def write_jsonl(path: str | os.PathLike, meta: dict[str, Any],
                images: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Path:
    def body(f: IO[str]) -> None:
        f.write(json.dumps({"dataset": meta}) + "\n")
        for image, anns in images:
            f.write(json.dumps({"image": image, "annotations": anns}) + "\n")
    return _atomic_stream(path, body)
