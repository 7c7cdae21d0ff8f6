"""Output writers (they consume a stream, so memory stays flat) and mask -> polygon conversion.

Formats (``--format``):

* ``dataset`` (default): the input COCO dataset JSON, every field kept, each labeled
  annotation with ``segmentation``, ``area``, ``ignore_mask``, ``proxy_iou``, ``score`` and
  ``mask_source``, GT masks of the input as given plus ``mask_source: "gt"``, ``score: 1.0``,
  and a top-level ``boxcaseg_label`` block. Byte for byte what ``json.dump`` of the whole dict
  writes, but streamed one annotation at a time.
* ``results``: a COCO results list (``COCO.loadRes``, ``COCOeval``): one entry per labeled
  annotation with ``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation`` and,
  as extras, ``annotation_id``, ``ignore_mask``, ``proxy_iou`` and ``mask_source``. ``score``
  comes from :func:`score` alone. GT masks of the input (mixed supervision) are not results
  and are left out (they are in the input file).
* ``jsonl``: a first line ``{"dataset": {...}}`` with every top-level key except ``images``
  and ``annotations`` (plus ``boxcaseg_label``), then one line per image
  ``{"image": {...}, "annotations": [...]}`` in input order: for sets too large to parse as
  one JSON document.

Segmentation (``--segmentation``): compressed RLE, or polygons traced exactly along pixel
edges (:func:`mask_polygons`). COCO polygons cannot have holes (pycocotools unions the
polygons of an annotation), so each hole is cut into its outer ring by a zero-width bridge
(a "keyhole"): the bridge is walked there and back, so it encloses no pixel, and the hole is
walked in the opposite orientation, so it is excluded under both the even-odd rule
(pycocotools) and the non-zero winding rule (most drawing tools). Rasterised by pycocotools,
the polygons give back exactly the mask's pixels. An empty mask (always ``ignore_mask``)
becomes one zero-area triangle at its box corner, so ``annToMask`` still works on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from boxcaseg.io import atomic_write
from boxcaseg.labeling.masks import BoxMask, to_rle

FORMATS = ("dataset", "results", "jsonl")
SEGMENTATIONS = ("rle", "polygon")
ANNOTATIONS = object()  # where the annotation list goes among the top-level keys


def score(fields: dict[str, Any]) -> float:
    """The ``score`` of a labeled mask in the results format (the one place that defines it).

    The labeler's predicted mask IoU (``labeling.score``, in every record since it exists);
    the proxy box agreement for records written before (older parts merged now).
    """
    return float(fields["score"]) if "score" in fields else float(fields["proxy_iou"])


# --------------------------------------------------------------------------------------------
# masks -> segmentation


def _edge_points(contour: np.ndarray, c0: int, r0: int) -> np.ndarray:
    """Contour of the 2x-upsampled, 1-padded mask -> pixel-edge vertices in the image.

    In the 2x grid, pixel ``c`` becomes columns ``2c, 2c+1``; a border traced on column ``q``
    (outer borders on the object's own pixels, hole borders on the object pixels next to the
    hole) lies on the pixel edge ``ceil(q / 2)``.
    """
    q = contour.reshape(-1, 2).astype(np.int64) - 1
    return (q + 1) // 2 + np.array([c0, r0], dtype=np.int64)


def mask_polygons(m: BoxMask) -> list[list[int]]:
    """Exact COCO polygons (flat ``[x0, y0, x1, y1, ...]`` lists) of a box mask; see module doc."""
    h, w = m.mask.shape
    if h == 0 or w == 0 or not m.mask.any():
        return [[m.c0, m.r0] * 3]
    up = np.zeros((2 * h + 2, 2 * w + 2), dtype=np.uint8)
    up[1:-1, 1:-1] = np.kron(m.mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hier = hierarchy[0]
    polygons = []
    for i, (_, _, child, parent) in enumerate(hier):
        if parent != -1:
            continue
        ring = _edge_points(contours[i], m.c0, m.r0)
        j = child
        while j != -1:  # cut each hole in at the ring vertex nearest to it
            hole = _edge_points(contours[j], m.c0, m.r0)
            d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
            a, b = np.unravel_index(int(np.argmin(d)), d.shape)
            hole = np.roll(hole, -int(b), axis=0)
            ring = np.concatenate([ring[:a + 1], hole, hole[:1], ring[a:]])
            j = hier[j][0]
        polygons.append(ring.reshape(-1).tolist())
    return polygons


def encode_segmentation(m: BoxMask, height: int, width: int, mode: str) -> Any:
    if mode == "rle":
        return to_rle(m, height, width)
    if mode == "polygon":
        return mask_polygons(m)
    raise ValueError(f"unknown segmentation mode {mode!r}; choose one of {SEGMENTATIONS}")


# --------------------------------------------------------------------------------------------
# writers


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
        for i, (key, value) in enumerate([*top, ("boxcaseg_label", label_block)]):
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
