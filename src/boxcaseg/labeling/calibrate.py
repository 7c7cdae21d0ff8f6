"""Calibration: fit the keep/ignore rule of the proxy masks on a few ground-truth masks.

The labeler flags masks it doubts with ``ignore_mask`` (Mask R-CNN then leaves them out of
its mask loss; ``eval --only-kept`` leaves them out of the scores). Which rule to use depends
on the data, so it is fitted on the masks a user has: for each candidate threshold on a
per-mask signal (``score``, the predicted IoU of ``labeling.score``, or the paper's
``proxy_iou``), the masks with ``signal >= threshold`` are kept. Over the calibration masks
that gives a curve: kept fraction vs. mean IoU of the kept masks (per instance; with ~50
masks a class-balanced mean would be noise). The user states a goal:

* ``min_kept_iou``: keep as many masks as possible while the kept ones average at least this
  IoU (the lowest threshold whose kept mean IoU reaches the goal);
* ``keep``: keep (at least) this fraction of the masks (the highest threshold that does).

How many masks (stated, enforced by :func:`fit`):

* at least :data:`MIN_MASKS` (10) calibration masks, else an error. Per-mask IoUs of proxy
  masks spread by ~0.15-0.25, so the mean of ``n`` of them is uncertain by about
  ``0.2 / sqrt(n)``: at 10 masks that is +-0.1 (90 %), as wide as the gap between a good and a
  bad rule; fewer tell nothing a default would not;
* fewer than :data:`RECOMMENDED_MASKS` (30, +-0.06): fitted, with a warning (``Calibration.
  warning``) that the prediction is rough;
* a threshold must keep at least :data:`MIN_KEPT` (5) masks to be chosen: a rule judged on one
  to four masks is chosen by those masks alone (and the bootstrap of one kept mask has zero
  width, a false certainty). The curve still shows the higher thresholds.

The chosen rule is a ``LabelConfig`` change (``min_score`` with ``drop: false`` for the score,
``drop_iou`` for the proxy IoU), so ``boxcaseg label --config`` applies it to new labels and
:func:`apply_rule` re-flags an existing labels file without relabeling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boxcaseg.errors import ConfigError, DataError
from boxcaseg.labeling.config import LabelConfig
from boxcaseg.labeling.postprocess import ignores
from boxcaseg.labeling.schema import GT, IGNORE_MASK, MASK_SOURCE, PROXY_IOU, SCORE

SIGNALS = ("score", "proxy_iou")
MIN_MASKS = 10          # fewer calibration masks: refused (see the module docstring)
RECOMMENDED_MASKS = 30  # fewer: fitted, with a warning
MIN_KEPT = 5            # a threshold must keep at least this many masks to be chosen


@dataclass
class CurvePoint:
    threshold: float       # keep iff signal >= threshold
    kept: int
    kept_fraction: float
    kept_mean_iou: float | None  # None when nothing is kept


@dataclass
class Calibration:
    signal: str
    n: int                            # calibration masks
    goal: dict[str, float]            # {"min_kept_iou": x} or {"keep": x}
    chosen: CurvePoint
    curve: list[CurvePoint] = field(default_factory=list)
    all_mean_iou: float = 0.0         # mean IoU with nothing dropped
    reached: bool = True              # False: no threshold meets min_kept_iou (best one kept)
    interval: tuple[float, float] | None = None  # 90 % bootstrap range of the kept mean IoU
    warning: str | None = None        # fitted on fewer than RECOMMENDED_MASKS masks
    min_kept: int = 1                 # fewest masks a candidate threshold had to keep

    def rule(self) -> dict[str, Any]:
        """The ``LabelConfig`` fields that implement the chosen threshold."""
        t = float(self.chosen.threshold)
        if self.signal == "score":
            return {"drop": False, "min_score": t}
        return {"drop": True, "drop_iou": t, "min_score": None}

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "n": self.n, "goal": self.goal,
                "chosen": dataclasses.asdict(self.chosen), "reached": self.reached,
                "all_mean_iou": self.all_mean_iou, "rule": self.rule(),
                "interval": self.interval, "warning": self.warning,
                "curve": [dataclasses.asdict(p) for p in self.curve]}


def kept_curve(signal: Sequence[float], ious: Sequence[float]) -> list[CurvePoint]:
    """One point per distinct signal value (descending thresholds), plus "keep nothing"."""
    s = np.asarray(signal, dtype=np.float64)
    v = np.asarray(ious, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 1:
        raise ValueError("signal and ious must be 1-D and of one length")
    n = len(s)
    order = np.argsort(-s, kind="stable")
    s_sorted, v_sorted = s[order], v[order]
    csum = np.cumsum(v_sorted)
    points = [CurvePoint(float("inf"), 0, 0.0, None)] if n else []
    for t in np.unique(s)[::-1]:
        k = int(np.searchsorted(-s_sorted, -t, side="right"))  # how many have s >= t
        points.append(CurvePoint(float(t), k, k / n, float(csum[k - 1] / k)))
    return points


def kept_iou_interval(signal: Sequence[float], ious: Sequence[float], threshold: float,
                      level: float = 0.9, n: int = 2000, seed: int = 0,
                      min_kept: int = MIN_KEPT) -> tuple[float, float] | None:
    """Bootstrap interval (``level``, percentile) of the kept masks' mean IoU at a fixed
    ``threshold``: how far the prediction from ~50 masks may be from the dataset's value
    (the threshold's own selection is not resampled, so the interval is on the short side).
    ``None`` when fewer than ``min_kept`` masks are kept: resampling one or two masks gives a
    (near) zero-width range, which would read as certainty."""
    s = np.asarray(signal, dtype=np.float64)
    v = np.asarray(ious, dtype=np.float64)
    kept = s >= threshold
    if int(kept.sum()) < max(1, min_kept):
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(s), size=(n, len(s)))
    k = kept[idx]
    counts = k.sum(1)
    means = (v[idx] * k).sum(1)[counts > 0] / counts[counts > 0]
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def fit(signal: Sequence[float], ious: Sequence[float], *, min_kept_iou: float | None = None,
        keep: float | None = None, name: str = "score", min_masks: int = MIN_MASKS,
        min_kept: int = MIN_KEPT) -> Calibration:
    """Choose the threshold for one goal (exactly one of ``min_kept_iou`` / ``keep``).

    ``min_masks`` / ``min_kept``: the sample-size floors of the module docstring (lower them
    only to test the curve logic by hand)."""
    if (min_kept_iou is None) == (keep is None):
        raise ConfigError("give exactly one goal: --min-kept-iou X or --keep F")
    if len(signal) == 0:
        raise DataError("no calibration masks: no ground-truth instance has a proxy mask")
    if len(signal) < min_masks:
        raise DataError(f"only {len(signal)} calibration mask(s) (GT instances with a proxy "
                        f"mask); a rule needs at least {min_masks} (better "
                        f"{RECOMMENDED_MASKS}+): from fewer the predicted IoU is noise (give "
                        "GT masks for more of the labeled boxes, same annotation ids)")
    curve = kept_curve(signal, ious)
    # thresholds that keep too few masks are shown in the curve but never chosen
    min_kept = min(max(1, min_kept), len(signal))
    points = [p for p in curve if p.kept >= min_kept]
    reached = True
    if min_kept_iou is not None:
        if not 0.0 <= min_kept_iou <= 1.0:
            raise ConfigError(f"--min-kept-iou must be in [0, 1], got {min_kept_iou}")
        ok = [p for p in points if p.kept_mean_iou >= min_kept_iou]
        if ok:
            chosen = max(ok, key=lambda p: (p.kept, -p.threshold))
        else:  # unreachable: keep the best-scoring tier, and say so
            reached = False
            chosen = max(points, key=lambda p: (p.kept_mean_iou, p.kept))
        goal = {"min_kept_iou": float(min_kept_iou)}
    else:
        if not 0.0 < keep <= 1.0:
            raise ConfigError(f"--keep must be a fraction in (0, 1], got {keep}")
        # float tolerance: keep=0.8 of 50 masks is 40, whatever 40/50 rounds to
        chosen = next(p for p in points if p.kept_fraction >= keep - 1e-9)
        goal = {"keep": float(keep)}
    warning = None
    if len(signal) < RECOMMENDED_MASKS:
        # 90 % half-width of a mean of n IoUs that spread by 0.2 (module docstring)
        warning = (f"only {len(signal)} calibration masks: the predicted mean IoU may be off by "
                   f"about +-{1.645 * 0.2 / np.sqrt(len(signal)):.2f}; {RECOMMENDED_MASKS} or "
                   "more are recommended")
    return Calibration(name, len(signal), goal, chosen, curve,
                       float(np.mean(np.asarray(ious, dtype=np.float64))), reached,
                       kept_iou_interval(signal, ious, chosen.threshold, min_kept=min_kept),
                       warning, min_kept)


def calibration_pairs(gt: Mapping[str, Any], pred: Mapping[str, Any], signal: str = "score"
                      ) -> tuple[list[int], list[float], list[float]]:
    """``(annotation ids, signal values, IoUs)`` of the GT instances with a proxy mask.

    ``gt``: COCO with masks for (some) instances: annotations without a ``segmentation`` are
    left out. ``pred``: a labels file (same annotation ids). A prediction that *is* the GT
    mask (``mask_source: "gt"``, label's mixed supervision) cannot calibrate anything: an error
    says to relabel with ``keep_gt_masks=false``.
    """
    from boxcaseg.evaluation.instance_iou import instance_records

    if signal not in SIGNALS:
        raise ConfigError(f"unknown signal {signal!r}; choose one of {list(SIGNALS)}")
    gt_anns = [a for a in gt.get("annotations", []) if a.get("segmentation")
               and not a.get("iscrowd")]
    if not gt_anns:
        raise DataError("the ground-truth file has no annotation with a 'segmentation'")
    preds = {int(a["id"]): a for a in pred.get("annotations", [])}
    passed = [int(a["id"]) for a in gt_anns
              if preds.get(int(a["id"]), {}).get(MASK_SOURCE) == GT]
    if passed:
        raise DataError(f"{len(passed)} of the ground-truth instances (e.g. annotation "
                        f"{passed[0]}) carry their GT mask in the labels file (mask_source gt), "
                        "so they say nothing about the proxy masks; label the boxes with "
                        "keep_gt_masks=false for calibration")
    usable = [a for a in gt_anns if "segmentation" in preds.get(int(a["id"]), {})]
    missing_signal = [int(a["id"]) for a in usable if signal not in preds[int(a["id"])]]
    if missing_signal:
        hint = ("relabel with this version of boxcaseg (it writes 'score') or use "
                "--signal proxy_iou" if signal == "score" else "it is written by boxcaseg label")
        raise DataError(f"labels file: annotation {missing_signal[0]} (and "
                        f"{len(missing_signal) - 1} more) has no '{signal}'; {hint}")
    sub = {**gt, "annotations": usable}
    ids, sig, ious = [], [], []
    for r in instance_records(sub, pred):
        ids.append(r.ann_id)
        sig.append(float(preds[r.ann_id][signal]))
        ious.append(r.iou)
    return ids, sig, ious


def rule_config(base: Mapping[str, Any] | None, rule: Mapping[str, Any]) -> LabelConfig:
    """The labels file's own ``LabelConfig`` (so relabeling reproduces its masks) with the
    fitted rule in place; defaults where the file records none."""
    known = {f.name for f in dataclasses.fields(LabelConfig)}
    fields = {k: v for k, v in (base or {}).items() if k in known}
    return LabelConfig(**{**fields, **rule})


def apply_rule(labels: dict[str, Any], cfg: LabelConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """A copy of a labels file with ``ignore_mask`` re-set by ``cfg``'s rule on every proxy
    mask (annotations with ``proxy_iou``; GT masks and untouched annotations stay as they
    are). Returns ``(new labels, counts)``."""
    counts = {"masks": 0, "ignored_before": 0, "ignored_after": 0, "changed": 0}
    anns = []
    for a in labels.get("annotations", []):
        if PROXY_IOU not in a or a.get(MASK_SOURCE) == GT:
            anns.append(a)
            continue
        if cfg.min_score is not None and SCORE not in a:
            raise DataError(f"labels file: annotation {a.get('id')} has no 'score'; relabel "
                            "with this version of boxcaseg or use a proxy_iou rule")
        new = dict(a)
        new[IGNORE_MASK] = ignores(int(a.get("area", 1)), float(a[PROXY_IOU]), a.get(SCORE),
                                     cfg)
        before = bool(a.get(IGNORE_MASK, False))
        counts["masks"] += 1
        counts["ignored_before"] += before
        counts["ignored_after"] += new[IGNORE_MASK]
        counts["changed"] += before != new[IGNORE_MASK]
        anns.append(new)
    out = {k: (anns if k == "annotations" else v) for k, v in labels.items()}
    return out, counts


def format_curve(cal: Calibration, max_rows: int = 12) -> str:
    """The kept-fraction vs. kept-mean-IoU table, thinned to about ``max_rows`` rows."""
    pts = [p for p in cal.curve if p.kept > 0]
    if len(pts) > max_rows:
        idx = sorted(set(np.linspace(0, len(pts) - 1, max_rows).round().astype(int).tolist()))
        pts = [pts[i] for i in idx]
    if cal.chosen not in pts:
        pts = sorted([*pts, cal.chosen], key=lambda p: -p.threshold)
    lines = [f"{cal.signal} >= threshold | kept | kept fraction | mean IoU of kept",
             "---|---:|---:|---:"]
    for p in pts:
        mark = "  <- chosen" if p is cal.chosen else ""
        lines.append(f"{p.threshold:.4f} | {p.kept} | {p.kept_fraction:.3f} | "
                     f"{p.kept_mean_iou:.4f}{mark}")
    return "\n".join(lines)
