"""``make_report``: labels files (+ optional GT) -> a static HTML report folder."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from boxcaseg.data.coco import parse_coco
from boxcaseg.errors import DataError
from boxcaseg.io import atomic_write_text, read_json
from boxcaseg.report import plots
from boxcaseg.report.gallery import build_gallery, method_colours
from boxcaseg.labeling.review import Labels, load_label_sets
from boxcaseg.report.page import MethodRow, ReportData, render_pages

log = logging.getLogger(__name__)

IMG_DIR = "img"
PLOT_DIR = "plots"


def _clear_previous(out: Path) -> None:
    """Remove what an earlier report in ``out`` wrote (and only that)."""
    for sub in (IMG_DIR, PLOT_DIR):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    for f in out.glob("gallery-*.html"):
        f.unlink()


def _check_same_images(sets: Sequence[Labels]) -> None:
    main = sets[0]
    ids = {i.ann_id: i.image_id for i in main.instances}
    for s in sets[1:]:
        for i in s.instances:
            if i.ann_id in ids and ids[i.ann_id] != i.image_id:
                raise DataError(f"{s.path}: annotation {i.ann_id} is on image {i.image_id} but "
                                f"on image {ids[i.ann_id]} in {main.path}; a baseline must "
                                "label the same boxes")


def make_report(labels: str | os.PathLike, out_dir: str | os.PathLike, *,
                images_root: str | os.PathLike | None = None,
                gt: str | os.PathLike | None = None,
                baselines: Sequence[str | os.PathLike] = (), page_size: int = 100,
                limit: int | None = None, title: str = "boxcaseg report",
                speeds: dict[str, float] | None = None, progress: bool = False) -> Path:
    """Write ``out_dir/index.html`` (+ ``gallery-N.html``, ``img/``, ``plots/``).

    Args:
        labels: the labels file under review (``boxcaseg label`` output); its instances
            make the gallery.
        images_root: folder of the images' ``file_name``; without it the gallery is empty.
        gt: COCO JSON with GT masks (same annotation ids): adds mIoU*/IoU@k tables, the IoU
            plots, and sorts the gallery by IoU instead of score.
        baselines: more labels files of the same boxes, shown beside ``labels``.
        speeds: instances/s by method name, for files that do not record it.
    Returns the path of ``index.html``.
    """
    if page_size < 1:
        raise DataError(f"page size must be >= 1, got {page_size}")
    sets = load_label_sets([labels, *baselines], images_root)
    _check_same_images(sets)
    # every input is read and checked before an earlier report in out_dir is touched
    gt_coco = None if gt is None else parse_coco(read_json(gt), str(gt), masks="truth")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    colours = method_colours(len(sets))

    ious: dict[str, dict[int, float]] | None = None
    rows = [MethodRow(s.name, str(s.path), s.counts(),
                      (speeds or {}).get(s.name) or s.speed(), c) for s, c in zip(sets, colours)]
    if gt_coco is not None:
        from boxcaseg.evaluation.instance_iou import instance_records, mask_quality

        ious = {}
        for s, row in zip(sets, rows):
            ious[s.name] = {r.ann_id: r.iou for r in instance_records(gt_coco, s.coco)}
            if not ious[s.name]:
                raise DataError(f"{s.path}: no annotation id in common with the GT {gt}")
            row.quality = mask_quality(gt_coco, s.coco)
            row.quality_kept = mask_quality(gt_coco, s.coco, only_kept=True)

    plot_files: list[tuple[str, str]] = []

    def plot(caption: str, name: str, fn, *args) -> None:
        fn(*args, out / PLOT_DIR / name)
        plot_files.append((caption, f"{PLOT_DIR}/{name}"))

    plot("score histogram", "scores.png", plots.score_histogram, sets, colours)
    if ious is not None:
        plot("IoU histogram", "iou.png", plots.iou_histogram, sets, ious, colours)
        plot("score vs IoU", "score_vs_iou.png", plots.score_vs_iou, sets, ious, colours)
    plots.kept_vs_threshold(sets, colours, out / PLOT_DIR / "kept.png", ious)
    plot_files.append(("kept fraction vs threshold", f"{PLOT_DIR}/kept.png"))

    notes = []
    if images_root is None:
        notes.append("no --images folder given: the gallery has no crops")
        from boxcaseg.report.gallery import Gallery
        gallery = Gallery([], "no images", 0, 0)
    else:
        gallery = build_gallery(sets, out, gt=gt_coco, gt_ious=ious, limit=limit,
                                subdir=IMG_DIR, progress=progress)
    data = ReportData(title, rows, plot_files, gallery,
                      gt_source=str(gt) if gt is not None else None,
                      images_root=str(images_root) if images_root is not None else None,
                      notes=notes)
    pages = render_pages(data, page_size)
    # index.html last: a report folder with an index is a finished one
    for name, text in pages.items():
        if name != "index.html":
            atomic_write_text(out / name, text)
    return atomic_write_text(out / "index.html", pages["index.html"])
