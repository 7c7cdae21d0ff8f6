"""Plain aligned text tables for metrics (every command and the demo print these).

    >>> print(format_table([{"m": "box", "miou": 0.718, "n": 12}],
    ...                    [("m", "method", "s"), ("miou", "mIoU*", "pct"), ("n", "N", "d")]))
    method  mIoU*   N
    ------  -----  --
    box      71.8  12
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Formatter = str | Callable[[Any], str]
Column = tuple[str, str, Formatter]

MISSING = "-"


def format_value(value: Any, fmt: Formatter) -> str:
    """One cell. ``fmt``: ``"pct"`` (fraction -> percent, one decimal: 0.718 -> ``71.8``),
    ``"pct2"`` (two decimals), any ``format()`` spec (``".3f"``, ``"d"``, ``"s"``) or a
    callable. ``None`` and NaN print as ``-``."""
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    if callable(fmt):
        return str(fmt(value))
    if fmt == "pct":
        return f"{100.0 * float(value):.1f}"
    if fmt == "pct2":
        return f"{100.0 * float(value):.2f}"
    if fmt in ("", "s"):
        return str(value)
    return format(value, fmt)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                 title: str | None = None) -> str:
    """Rows of dicts -> a text table. ``columns``: ``(key, header, fmt)`` per column (see
    :func:`format_value`). Text columns (``"s"``) are left-aligned, numbers right-aligned;
    a key a row lacks prints as ``-``."""
    cells = [[format_value(r.get(key), fmt) for key, _, fmt in columns] for r in rows]
    headers = [h for _, h, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    left = [fmt in ("", "s") for _, _, fmt in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(values, widths, left)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(c) for c in cells)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# the standard tables (eval command, demo)

QUALITY_COLUMNS: list[Column] = [("subset", "subset", "s"), ("miou_star", "mIoU*", "pct"),
                                 ("iou50", "IoU@50", "pct"), ("iou75", "IoU@75", "pct"),
                                 ("n", "N", "d")]


def format_quality(metrics: Mapping[str, Any], title: str | None = "box->mask quality",
                   per_class: bool = True) -> str:
    """The :func:`~boxcaseg.evaluation.instance_iou.mask_quality` dict as tables: overall and
    by size, then per class (mean IoU), then missing / drop counts."""
    rows = [{"subset": "all", **metrics, "n": metrics.get("num_instances")}]
    rows += [{"subset": size, **m} for size, m in metrics.get("by_size", {}).items()]
    parts = [format_table(rows, QUALITY_COLUMNS, title)]
    pc = metrics.get("per_class") or {}
    if per_class and pc:
        parts.append(format_table([{"class": k, **v} for k, v in pc.items()],
                                  [("class", "class", "s"), ("miou", "mIoU", "pct"),
                                   ("n", "N", "d")]))
    mean = format_value(metrics.get("mean_iou"), "pct")
    parts.append(f"mean IoU over instances {mean}; missing masks {metrics.get('missing', 0)}; "
                 f"dropped (ignore_mask) {metrics.get('num_dropped', 0)} "
                 f"({format_value(metrics.get('drop_rate'), 'pct')}%)"
                 + ("; scored: kept masks only" if metrics.get("only_kept") else ""))
    return "\n\n".join(parts)


def format_coco_ap(metrics: Mapping[str, Any], title: str | None = "COCO mask AP") -> str:
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return format_table([metrics], [(k, k, "pct") for k in keys], title)


def format_voc_ap(metrics: Mapping[str, Any], title: str | None = "VOC mask AP",
                  per_class: bool = False) -> str:
    keys = [k for k in metrics if k.startswith("AP")]
    cols: list[Column] = [("name", "class", "s")] + [(k, k, "pct") for k in keys]
    rows = [{"name": "mean", **metrics}]
    if per_class:
        rows += [{"name": n, **v} for n, v in (metrics.get("per_class") or {}).items()]
    return format_table(rows, cols, title)
