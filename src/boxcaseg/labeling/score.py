"""A per-mask quality score in [0, 1] that predicts the proxy mask's IoU with the true mask.

No second network: the score is read off what the labeler already has for each box,

    score = soft_iou * merge_kept * sqrt(proxy_iou) * (1 - box_overlap)

* ``soft_iou``: the source's own expected IoU of its mask (``SourceMasks.quality``); for
  the BoxCaseg network ``predictor.soft_ious``. Read each pixel's fused
  probability ``p`` (over the box crop, at the model's output resolution, after the same
  ``threshold_mode`` rescaling the mask was thresholded with) as the chance that the pixel is
  object; the mask ``M = p >= t`` then has expected intersection ``sum_M p`` and union
  ``|M| + sum_(not M) p``. A soft or patchy map, or a mask that leaves confident pixels out,
  scores low; a sharp map that the mask follows scores near 1.
* ``merge_kept``: the share of the raw mask that survived merge ("smaller object better").
  A mask that lost much of itself to a smaller neighbour's box is often the wrong object.
* ``proxy_iou``: the paper's proxy box agreement (tight box of the final mask vs. the box),
  under a square root: on its own it says little (a filled box scores 1.0), but a mask that
  does not reach its box's sides is rarely good.
* ``box_overlap``: the largest IoU of the mask's box with another box of the same image
  (:func:`box_overlaps`). Where two boxes of similar size overlap (a crowd, a stack), the
  crop holds two candidate objects and the class-agnostic network cannot tell which one
  the box means; MIL is satisfied by either. A small box inside a big one overlaps it only by
  their area ratio and loses little (merge settles whose pixels are whose). Measured on real photos
  (``bench/results_real.md``, "The score"): Spearman with the true IoU on coco-dev 0.57 ->
  0.63 over 3 seeds (every seed up), unchanged where boxes do not overlap (coco-mval-dev).

On coco-dev and the demo data this ranks masks by true IoU better than the proxy IoU alone
(Spearman, AUROC for IoU >= 0.75: bench/results_score.md); the other signals tried there
(stability across thresholds, contrast inside vs. outside the mask, fill ratio) added
nothing on top. The score is meant to be calibrated on a few ground-truth masks (``boxcaseg
calibrate``): only its order matters for the keep/ignore rule it fits.

Masks with no probability map (``--method box`` / ``grabcut``) get ``merge_kept *
sqrt(proxy_iou) * (1 - box_overlap)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.structures import xyxy_to_xywh


@dataclass(frozen=True)
class MaskFeatures:
    """What the score is made of, each in [0, 1] (``soft_iou`` None: no probability map)."""

    proxy_iou: float
    merge_kept: float
    soft_iou: float | None = None
    box_overlap: float = 0.0


def merge_kept(area_after: int, area_before: int) -> float:
    """Share of the raw mask left after merge (1 without merge; 0 for an empty raw mask)."""
    return float(min(area_after / area_before, 1.0)) if area_before > 0 else 0.0


def mask_score(f: MaskFeatures) -> float:
    """The score in [0, 1] (module docstring); 0 for an empty mask."""
    s = f.merge_kept * math.sqrt(max(f.proxy_iou, 0.0)) * (1.0 - f.box_overlap)
    if f.soft_iou is not None:
        s *= f.soft_iou
    return float(min(max(s, 0.0), 1.0))


def box_overlaps(boxes_xyxy: np.ndarray, others_xyxy: np.ndarray | None = None,
                 chunk: int = 512) -> np.ndarray:
    """For each of the K boxes, its largest IoU with any other box of the image: the other
    K - 1 and the ``others`` (e.g. the image's GT-mask boxes); 0 when alone.

    pycocotools' box IoU (zero-area boxes overlap nothing), ``chunk`` rows at a time so a
    crowded image (thousands of boxes) never holds the whole K x K matrix."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    o = b if others_xyxy is None else np.concatenate(
        [b, np.asarray(others_xyxy, dtype=np.float64).reshape(-1, 4)])
    out = np.zeros(len(b))
    if len(o) < 2:
        return out
    # built row by row, hence C-ordered: pycocotools reads the raw buffer, and a
    # Fortran-ordered array (a transposed input) would give wrong IoUs without any error
    ow = np.array([xyxy_to_xywh(x) for x in o], dtype=np.float64)
    crowd = np.zeros(len(o), np.uint8)
    for r0 in range(0, len(b), chunk):
        rows_xywh = ow[r0:min(r0 + chunk, len(b))]  # ``o`` starts with the K boxes themselves
        iou = np.array(mask_utils.iou(rows_xywh, ow, crowd), dtype=np.float64, ndmin=2)
        rows = np.arange(len(iou))
        iou[rows, r0 + rows] = 0.0  # not with itself
        out[r0:r0 + len(iou)] = iou.max(axis=1)
    return np.clip(out, 0.0, 1.0)


def scores_for(areas_before: Sequence[int], areas_after: Sequence[int],
               proxy_ious: Sequence[float], soft: Sequence[float] | None,
               overlaps: Sequence[float] | None = None) -> list[float]:
    """Scores of the K masks of one image (pixel counts of the raw and merged masks; each
    box's :func:`box_overlaps`, None: 0), rounded to 6 digits so the labels file stays
    diff-friendly."""
    out = []
    for k in range(len(proxy_ious)):
        f = MaskFeatures(proxy_iou=float(proxy_ious[k]),
                         merge_kept=merge_kept(int(areas_after[k]), int(areas_before[k])),
                         soft_iou=None if soft is None else soft[k],
                         box_overlap=0.0 if overlaps is None else float(overlaps[k]))
        out.append(round(mask_score(f), 6))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U)."""
    from scipy.stats import rankdata
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
