"""Static HTML for the report: plain files that open from disk (no server, no network, no
script), one summary page (``index.html``, which also shows the first gallery page) and
further gallery pages of ``page_size`` instances each, images loaded lazily."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from boxcaseg.report.gallery import Gallery, Item

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;
color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;
border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4em 0 1em;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left;white-space:nowrap}th{background:#f0f0f0}
.meta{color:#666;font-size:.9em}.plots img{max-width:100%;margin:4px;border:1px solid #ddd;
background:#fff}
.nav{margin:.6em 0}.nav a,.nav span{margin-right:.4em}.nav span.cur{font-weight:bold}
.item{background:#fff;border:1px solid #ddd;margin:8px 0;padding:6px}
.item .head{font-size:.9em;margin-bottom:4px}.panels{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;text-align:center;font-size:.85em}figure img{display:block;
border:3px solid #ccc}
figure.kept img{border-color:#2a9d3a}figure.dropped img{border-color:#d62828}
figure.nomask img{border-color:#888}figure.gt img{border-color:#555}
.badge{display:inline-block;padding:0 5px;border-radius:3px;color:#fff;font-size:.85em}
.badge.kept{background:#2a9d3a}.badge.dropped{background:#d62828}.badge.nomask{background:#888}
.badge.gt{background:#555}.swatch{display:inline-block;width:.9em;height:.9em;
vertical-align:middle;margin:0 .2em 0 .6em;border:1px solid #999}
"""


@dataclass
class MethodRow:
    """One row of the summary table."""

    name: str
    source: str
    counts: dict[str, int]
    speed: float | None
    colour: tuple[int, int, int]
    quality: dict[str, Any] | None = None        # mask_quality(gt, labels)
    quality_kept: dict[str, Any] | None = None   # mask_quality(..., only_kept=True)


@dataclass
class ReportData:
    title: str
    methods: list[MethodRow]
    plots: list[tuple[str, str]]                 # (caption, path relative to the report)
    gallery: Gallery
    gt_source: str | None = None
    images_root: str | None = None
    notes: list[str] = field(default_factory=list)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _swatch(c: tuple[int, int, int]) -> str:
    return f'<span class="swatch" style="background:#{c[0]:02x}{c[1]:02x}{c[2]:02x}"></span>'


def summary_html(data: ReportData) -> str:
    has_gt = any(m.quality is not None for m in data.methods)
    headers = ["method", "instances", "labeled", "dropped", "dropped %", "no mask",
               "skipped boxes", "instances/s"]
    if has_gt:
        headers += ["mIoU*", "IoU@50", "IoU@75", "mIoU* kept"]
    rows = []
    for m in data.methods:
        c = m.counts
        r = [f"{_swatch(m.colour)}{_e(m.name)}", str(c["instances"]), str(c["labeled"]),
             str(c["dropped"]), _pct(c["dropped"] / c["labeled"] if c["labeled"] else None),
             str(c["not_labeled"]), str(c["skipped_boxes"]), _num(m.speed, ".1f")]
        if has_gt:
            q, k = m.quality or {}, m.quality_kept or {}
            r += [_pct(q.get("miou_star")), _pct(q.get("iou50")), _pct(q.get("iou75")),
                  _pct(k.get("miou_star"))]
        rows.append(r)
    parts = ["<h2>Summary</h2>", _table(headers, rows),
             '<p class="meta">dropped: masks flagged <code>ignore_mask</code> by the labeler '
             "(left out of the mask loss); no mask: boxes the labeler did not answer (e.g. "
             "unreadable image); percentages over the labeled instances"
             + ("; mIoU*: mean over classes of the mean IoU with the ground-truth masks, "
                "IoU@k: fraction of instances with IoU above k" if has_gt else "")
             + ".</p>"]
    if has_gt:
        sizes = ("small", "medium", "large")
        headers = ["method"] + [f"{s} {k}" for s in sizes for k in ("mIoU*", "IoU@50",
                                                                     "IoU@75", "N")]
        rows = []
        for m in data.methods:
            by = (m.quality or {}).get("by_size", {})
            r = [_e(m.name)]
            for s in sizes:
                q = by.get(s, {})
                r += [_pct(q.get("miou_star")), _pct(q.get("iou50")), _pct(q.get("iou75")),
                      str(q.get("n", 0))]
            rows.append(r)
        parts += ["<h2>By object size</h2>", '<p class="meta">COCO area ranges of the GT '
                  "mask: small &lt; 32², medium &lt; 96², large above.</p>",
                  _table(headers, rows)]
        classes: list[str] = []
        for m in data.methods:
            for name in (m.quality or {}).get("per_class", {}):
                if name not in classes:
                    classes.append(name)
        rows = []
        for cname in classes:
            r = [_e(cname)]
            for m in data.methods:
                pc = (m.quality or {}).get("per_class", {}).get(cname, {})
                r += [_pct(pc.get("miou")), str(pc.get("n", 0))]
            rows.append(r)
        headers = ["class"] + [h for m in data.methods for h in (f"{m.name} mIoU", "N")]
        parts += ["<h2>Per class</h2>", _table(headers, rows)]
    return "\n".join(parts)


def plots_html(data: ReportData) -> str:
    if not data.plots:
        return ""
    imgs = "".join(f'<img src="{_e(src)}" alt="{_e(cap)}" title="{_e(cap)}">'
                   for cap, src in data.plots)
    return f'<h2>Plots</h2><div class="plots">{imgs}</div>'


def _item_html(rank: int, item: Item) -> str:
    figs = []
    for p in item.panels:
        cls = {"kept": "kept", "dropped": "dropped", "no mask": "nomask",
               "ground truth": "gt"}[p.status]
        lines = [f"<b>{_e(p.title)}</b>"]
        stats = []
        if p.score is not None:
            stats.append(f"score {p.score:.3f}")
        if p.iou is not None:
            stats.append(f"IoU {p.iou:.3f}")
        if stats:
            lines.append(" · ".join(stats))
        lines.append(f'<span class="badge {cls}">{_e(p.status)}</span>')
        figs.append(f'<figure class="{cls}"><img loading="lazy" src="{_e(p.src)}" '
                    f'width="{p.width}" height="{p.height}" alt="{_e(p.title)}: '
                    f'{_e(item.category)} {item.ann_id}"><figcaption>{"<br>".join(lines)}'
                    "</figcaption></figure>")
    head = (f"<b>#{rank}</b> {_e(item.category)} · annotation {item.ann_id} · "
            f"{_e(item.image_file)}")
    return (f'<div class="item" id="ann-{item.ann_id}"><div class="head">{head}</div>'
            f'<div class="panels">{"".join(figs)}</div></div>')


def page_name(page: int) -> str:
    return "index.html" if page == 1 else f"gallery-{page}.html"


def _nav(page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = []
    if page > 1:
        links.append(f'<a href="{page_name(page - 1)}">&larr; previous</a>')
    for p in range(1, pages + 1):
        if p == page:
            links.append(f'<span class="cur">{p}</span>')
        elif p <= 3 or p > pages - 3 or abs(p - page) <= 3:
            links.append(f'<a href="{page_name(p)}">{p}</a>')
        elif links[-1] != "<span>…</span>":
            links.append("<span>…</span>")
    if page < pages:
        links.append(f'<a href="{page_name(page + 1)}">next &rarr;</a>')
    return f'<div class="nav">gallery pages: {" ".join(links)}</div>'


def _document(title: str, body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style>"
            f"</head><body>\n{body}\n</body></html>\n")


def render_pages(data: ReportData, page_size: int = 100) -> dict[str, str]:
    """``{file name: HTML}`` for the whole report; ``index.html`` first."""
    items = data.gallery.items
    pages = max(1, math.ceil(len(items) / page_size))
    legend = "".join(f"{_swatch(m.colour)}{_e(m.name)}" for m in data.methods)
    meta = [f"labels: {', '.join(_e(m.source) for m in data.methods)}"]
    if data.images_root:
        meta.append(f"images: {_e(data.images_root)}")
    if data.gt_source:
        meta.append(f"ground truth: {_e(data.gt_source)}")
    out: dict[str, str] = {}
    for page in range(1, pages + 1):
        chunk = items[(page - 1) * page_size: page * page_size]
        first = (page - 1) * page_size + 1
        g = data.gallery
        intro = [f"{len(items)} instances, {_e(g.sort_by)}; outlines: method colour,"
                 " ground truth white, the annotated box yellow; frame: green kept, "
                 f"red dropped (ignore_mask). Methods: {legend}"]
        if g.left_out:
            intro.append(f"{g.left_out} more instances were left out (--limit).")
        if g.unreadable_images:
            intro.append(f"{g.unreadable_images} instances left out: image unreadable.")
        gallery = (f"<h2>Gallery</h2><p class=\"meta\">{' '.join(intro)}</p>"
                   + _nav(page, pages)
                   + "\n".join(_item_html(first + i, it) for i, it in enumerate(chunk))
                   + _nav(page, pages))
        if page == 1:
            body = (f"<h1>{_e(data.title)}</h1><p class=\"meta\">{' · '.join(meta)}</p>"
                    + "".join(f"<p class=\"meta\">{_e(n)}</p>" for n in data.notes)
                    + summary_html(data) + plots_html(data) + gallery)
        else:
            body = (f"<h1>{_e(data.title)}: gallery page {page} of {pages}</h1>"
                    f"<p class=\"meta\"><a href=\"index.html\">summary and plots</a></p>"
                    + gallery)
        out[page_name(page)] = _document(data.title if page == 1
                                         else f"{data.title} ({page}/{pages})", body)
    return out
