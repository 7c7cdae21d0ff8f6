"""Teacher masks: a labels file (``boxcaseg label`` of any source) as pixel supervision.

``train`` with ``teacher_labels: labels.json`` turns every box of ``boxes_json`` whose
annotation has a usable mask in the labels file into a pixel-supervised sample, exactly as a
box with a ground-truth mask is (``data.gt_masks``: :func:`~boxcaseg.data.gt_masks.
box_crop_with_mask` in ``data.train_sets.BoxCropDataset``). The source does not matter: a
SAM checkpoint (``--method sam``: SAM as a teacher), GrabCut, or BoxCaseg's own masks
(``--method boxcaseg``: self-training, one round per label + train).

Which masks are used (:func:`teacher_masks`):

* never a mask the labeler marked ``ignore_mask: true`` (empty, failed the proxy box
  agreement or the calibrated rule), nor the empty mask it writes for a box it could not label
  (``boxcaseg_no_mask``), nor a crowd annotation;
* with ``teacher_min_score`` set, only masks whose ``score`` (``labeling/score.py``: the
  source's own IoU estimate x merge x proxy box agreement) is at least that;
* a box that carries a ground-truth mask in ``boxes_json`` (``gt_masks: true``) keeps its GT.

Weight (``teacher_weight``): ``score`` multiplies the sample's pixel loss by the mask's score
(``losses.boxcaseg_loss``, ``weight`` in the sample), ``uniform`` uses 1, as for GT and
salient samples. The MIL term is not weighted.

Matching: by annotation id; an annotation found in both files must be on the same image with
the same ``bbox`` (the labeler copies them), else the files are of different datasets and the
run stops naming the first one that differs. The labels file may be the same file as
``boxes_json`` (a labels file is the input dataset plus masks). Formats: ``dataset``,
``results`` (``annotation_id``) and ``jsonl`` (``boxcaseg label --format``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxcaseg.errors import DataError
from boxcaseg.labeling.schema import (IGNORE_MASK, MASK_SOURCE, NO_MASK, SEGMENTATION,
                                      iter_annotations, score)

log = logging.getLogger(__name__)

TEACHER_WEIGHTS = ("score", "uniform")


@dataclass(frozen=True)
class TeacherMask:
    """A teacher's mask of one box: its raw ``segmentation`` and its pixel-loss weight."""

    segmentation: Any
    weight: float


@dataclass
class TeacherSummary:
    """What a labels file gave: masks used and why the others were not."""

    source: str
    used: int = 0
    ignored: int = 0                # ignore_mask: true
    below_min_score: int = 0
    no_mask: int = 0                # no segmentation / boxcaseg_no_mask / crowd
    gt_kept: int = 0                # the box has a GT mask in boxes_json: the GT is used
    not_in_boxes: int = 0           # annotation ids boxes_json does not have
    by_source: Counter = field(default_factory=Counter)  # mask_source of the masks used

    def format(self) -> str:
        src = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_source.items())) or "none"
        return (f"{self.source}: {self.used} teacher masks train the pixel heads ({src}); "
                f"not used: {self.ignored} ignore_mask, {self.below_min_score} below "
                f"teacher_min_score, {self.no_mask} without a mask, {self.gt_kept} boxes with "
                f"a GT mask, {self.not_in_boxes} not in boxes_json")


def _score(ann: Mapping[str, Any]) -> float:
    try:
        v = score(ann)  # files from before the score: the proxy IoU
    except KeyError:
        v = 1.0
    return min(max(float(v), 0.0), 1.0)


def teacher_masks(path: str | os.PathLike, boxes_annotations: Iterable[Mapping[str, Any]],
                  gt_ids: set[int] | frozenset[int] = frozenset(),
                  min_score: float | None = None, weight: str = "score"
                  ) -> tuple[dict[int, TeacherMask], TeacherSummary]:
    """``{annotation id: TeacherMask}`` for the boxes of ``boxes_annotations`` (the raw
    annotations of ``boxes_json``) that the labels file at ``path`` gives a usable mask; see
    the module doc. ``gt_ids``: boxes whose GT mask is used instead."""
    if weight not in TEACHER_WEIGHTS:
        raise ValueError(f"teacher weight must be one of {TEACHER_WEIGHTS}, got {weight!r}")
    path = Path(path)
    boxes = {int(a["id"]): a for a in boxes_annotations if "id" in a}
    summary = TeacherSummary(str(path))
    out: dict[int, TeacherMask] = {}
    matched = 0
    for ann in iter_annotations(path):
        try:
            aid = int(ann["id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: an annotation without an integer id") from None
        box = boxes.get(aid)
        if box is None:
            summary.not_in_boxes += 1
            continue
        matched += 1
        if ann.get("image_id") != box.get("image_id") or not _same_bbox(ann.get("bbox"),
                                                                         box.get("bbox")):
            raise DataError(
                f"{path}: annotation {aid} is on image {ann.get('image_id')} with bbox "
                f"{ann.get('bbox')}, but boxes_json has it on image {box.get('image_id')} with "
                f"bbox {box.get('bbox')}: teacher_labels must be `boxcaseg label` output for "
                "the same boxes_json")
        if ann.get("iscrowd") or box.get("iscrowd") or not ann.get(SEGMENTATION) \
                or ann.get(NO_MASK):
            summary.no_mask += 1
            continue
        if ann.get(IGNORE_MASK, False):
            summary.ignored += 1
            continue
        w = _score(ann)
        if min_score is not None and w < min_score:
            summary.below_min_score += 1
            continue
        if aid in gt_ids:
            summary.gt_kept += 1
            continue
        out[aid] = TeacherMask(ann[SEGMENTATION], w if weight == "score" else 1.0)
        summary.used += 1
        summary.by_source[str(ann.get(MASK_SOURCE))] += 1
    if matched == 0:
        raise DataError(f"{path}: none of its annotation ids is in boxes_json: "
                        "teacher_labels must be `boxcaseg label` output for the same boxes")
    return out, summary


def _same_bbox(a: Any, b: Any) -> bool:
    try:
        return len(a) == len(b) == 4 and all(
            abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y))) for x, y in zip(a, b))
    except (TypeError, ValueError):
        return False
