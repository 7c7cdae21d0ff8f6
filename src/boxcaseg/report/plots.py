"""The report's figures (matplotlib, Agg backend, PNG files written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never look for a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from boxcaseg.io import atomic_write  # noqa: E402
from boxcaseg.labeling.review import Labels  # noqa: E402

BINS = np.linspace(0.0, 1.0, 21)
THRESHOLDS = np.linspace(0.0, 1.0, 101)


def _hex(c: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % c


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100,
                                                   bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _legend(ax: plt.Axes, loc: str) -> None:
    """A legend, or where nothing was drawn (a labels file without labeled masks) a note
    saying so: matplotlib would warn "No artists with labels found" on the console."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc=loc)
    else:
        ax.text(0.5, 0.5, "no labeled masks", transform=ax.transAxes, ha="center",
                va="center", color="0.4")


def _scores(s: Labels) -> np.ndarray:
    return np.array([i.score for i in s.instances if i.labeled and i.score is not None],
                    dtype=np.float64)


def drop_threshold(s: Labels) -> float | None:
    """The proxy-IoU threshold the labeler dropped masks below (its config), if recorded."""
    cfg = s.label_info.get("config") or {}
    v = cfg.get("drop_iou") if isinstance(cfg, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _step_histograms(values: Sequence[tuple[str, np.ndarray]],
                     colours: Sequence[tuple[int, int, int]], xlabel: str, title: str,
                     path: Path) -> Path:
    """One step histogram per method on shared [0, 1] bins (methods stay comparable)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for (name, v), c in zip(values, colours):
        if v.size:
            ax.hist(v, bins=BINS, histtype="step", linewidth=1.8, color=_hex(c),
                    label=f"{name} (n={v.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("instances")
    ax.set_title(title)
    _legend(ax, "upper left")
    return _save(fig, path)


def score_histogram(sets: Sequence[Labels], colours: Sequence[tuple[int, int, int]],
                    path: Path) -> Path:
    return _step_histograms([(s.name, np.clip(_scores(s), 0, 1)) for s in sets], colours,
                            "score (higher is better)", "score of each mask", path)


def iou_histogram(sets: Sequence[Labels], ious: dict[str, dict[int, float]],
                  colours: Sequence[tuple[int, int, int]], path: Path) -> Path:
    return _step_histograms(
        [(s.name, np.array(list(ious[s.name].values()), dtype=np.float64)) for s in sets],
        colours, "IoU with the ground-truth mask", "true mask quality", path)


def score_vs_iou(sets: Sequence[Labels], ious: dict[str, dict[int, float]],
                 colours: Sequence[tuple[int, int, int]], path: Path) -> Path:
    """One scatter per method: does a low score find the bad masks? Spearman's rho in the
    title (rank agreement, what sorting by score relies on)."""
    from scipy.stats import spearmanr

    n = len(sets)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.4), squeeze=False, sharey=True)
    for ax, s, c in zip(axes[0], sets, colours):
        pairs = [(i.score, ious[s.name][i.ann_id]) for i in s.instances
                 if i.labeled and i.score is not None and i.ann_id in ious[s.name]]
        title = s.name
        if pairs:
            x, y = np.array(pairs, dtype=np.float64).T
            ax.scatter(x, y, s=6, alpha=0.5, color=_hex(c), edgecolors="none")
            if len(pairs) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
                title += f"  (Spearman {spearmanr(x, y).statistic:.2f})"
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("score")
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("IoU with ground truth")
    return _save(fig, path)


def kept_vs_threshold(sets: Sequence[Labels], colours: Sequence[tuple[int, int, int]],
                      path: Path, ious: dict[str, dict[int, float]] | None = None) -> Path:
    """Fraction of labeled masks with score >= t, and with GT the mean IoU of those kept:
    what a review threshold would keep, and what it would buy."""
    ncols = 2 if ious is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.4), squeeze=False)
    ax = axes[0][0]
    for s, c in zip(sets, colours):
        v = _scores(s)
        if not v.size:
            continue
        ax.plot(THRESHOLDS, [(v >= t).mean() for t in THRESHOLDS], color=_hex(c),
                linewidth=1.8, label=s.name)
        t = drop_threshold(s)
        if t is not None and s is sets[0]:
            ax.axvline(t, color="0.5", linestyle=":", linewidth=1)
            ax.annotate(f"drop_iou {t:g}", (t, 0.02), fontsize=7, color="0.35",
                        ha="right", rotation=90)
    ax.set_xlabel("score threshold t")
    ax.set_ylabel("fraction of masks with score >= t")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("kept fraction vs threshold")
    _legend(ax, "lower left")
    if ious is not None:
        ax = axes[0][1]
        for s, c in zip(sets, colours):
            pairs = np.array([(i.score, ious[s.name][i.ann_id]) for i in s.instances
                              if i.labeled and i.score is not None
                              and i.ann_id in ious[s.name]], dtype=np.float64).reshape(-1, 2)
            if not len(pairs):
                continue
            ys = [pairs[pairs[:, 0] >= t, 1].mean() if (pairs[:, 0] >= t).any() else np.nan
                  for t in THRESHOLDS]
            ax.plot(THRESHOLDS, ys, color=_hex(c), linewidth=1.8, label=s.name)
        ax.set_xlabel("score threshold t")
        ax.set_ylabel("mean IoU of the kept masks")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("what the threshold buys")
    return _save(fig, path)
