"""Per-instance crops for the report: the box's neighbourhood with each method's mask (and
the GT mask's outline when there is one) drawn the way ``predict`` and the demo draw them."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from boxcaseg.data.coco import CocoData
from boxcaseg.errors import ImageReadError
from boxcaseg.io import atomic_write, read_image_rgb
from boxcaseg.maskrcnn.visualize import BOX_COLOUR, GT_COLOUR, draw_boxes, draw_masks, palette
from boxcaseg.labeling.review import Labels, worst_first
from boxcaseg.structures import segmentation_to_mask

log = logging.getLogger(__name__)

PANEL_SIZE = 176   # longest side of a crop in the gallery, pixels
CONTEXT = 0.25     # context around the box, as a fraction of its longer side
JPEG_QUALITY = 90  # crops are photos; PNG would make 10k instances ~5x larger


@dataclass
class Panel:
    title: str
    src: str                     # path relative to the report folder
    status: str                  # "kept" | "dropped" | "no mask" | "ground truth"
    score: float | None = None
    iou: float | None = None     # IoU with the GT mask, when GT is given
    width: int = 0               # pixels of the image file
    height: int = 0


@dataclass
class Item:
    ann_id: int
    image_file: str
    category: str
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Gallery:
    items: list[Item]
    sort_by: str                 # what "worst first" means in this report
    unreadable_images: int = 0   # instances left out because their image could not be read
    left_out: int = 0            # instances beyond --limit


def method_colours(n: int) -> list[tuple[int, int, int]]:
    return palette(max(n, 1))


def crop_window(box: Sequence[float], height: int, width: int, context: float = CONTEXT
                ) -> tuple[int, int, int, int]:
    """Integer XYXY window around an XYXY box: ``context`` x its longer side on each side
    (at least 8 px), clipped to the image."""
    x1, y1, x2, y2 = box
    pad = max(8.0, context * max(x2 - x1, y2 - y1))
    return (max(0, int(math.floor(x1 - pad))), max(0, int(math.floor(y1 - pad))),
            min(width, int(math.ceil(x2 + pad))), min(height, int(math.ceil(y2 + pad))))


def render_panel(rgb: np.ndarray, window: tuple[int, int, int, int], box: Sequence[float],
                 mask: np.ndarray | None, colour: tuple[int, int, int],
                 gt_mask: np.ndarray | None = None, size: int = PANEL_SIZE) -> np.ndarray:
    """The window of ``rgb`` scaled so its longer side is ``size``, with ``mask`` filled and
    outlined in ``colour``, ``gt_mask`` outlined in white and the box in yellow."""
    x0, y0, x1, y1 = window
    crop = rgb[y0:y1, x0:x1]
    scale = size / max(crop.shape[0], crop.shape[1])
    out_w, out_h = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = cv2.resize(crop, (out_w, out_h), interpolation=interp)

    def fit(m: np.ndarray) -> np.ndarray:
        return cv2.resize(m[y0:y1, x0:x1].astype(np.uint8), (out_w, out_h),
                          interpolation=cv2.INTER_NEAREST).astype(bool)

    if mask is not None:
        canvas = draw_masks(canvas, [fit(mask)], [colour], alpha=0.35, outline_width=2)
    if gt_mask is not None:
        canvas = draw_masks(canvas, [fit(gt_mask)], [GT_COLOUR], alpha=0.0, outline_width=1)
    bx1, by1, bx2, by2 = box
    sbox = ((bx1 - x0) * scale, (by1 - y0) * scale, (bx2 - x0) * scale, (by2 - y0) * scale)
    return draw_boxes(canvas, [sbox], [BOX_COLOUR])


def _save_jpeg(path: Path, rgb: np.ndarray) -> tuple[int, int]:
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="JPEG",
                                                             quality=JPEG_QUALITY))
    return rgb.shape[1], rgb.shape[0]


def build_gallery(sets: Sequence[Labels], out_dir: Path, *, gt: CocoData | None = None,
                  gt_ious: dict[str, dict[int, float]] | None = None, limit: int | None = None,
                  subdir: str = "img", progress: bool = False) -> Gallery:
    """Render the crops of every instance of ``sets[0]`` (the labels under review), with the
    same annotation of every other set beside it, worst first: lowest IoU with the GT when
    ``gt_ious`` is given, else lowest score. Files go to ``out_dir/subdir``."""
    main = sets[0]
    if gt_ious is not None:
        ious = gt_ious[main.name]
        keys = {i.ann_id: ious.get(i.ann_id) for i in main.instances}
        sort_by = (f"lowest IoU of {main.name} with the ground truth first (instances "
                   "without a GT mask first)")
    else:
        keys = {i.ann_id: i.score for i in main.instances}
        sort_by = f"lowest score of {main.name} first (masks without a score first)"
    order = worst_first(keys)
    left_out = 0
    if limit is not None and len(order) > limit:
        left_out = len(order) - limit
        order = order[:limit]
    rank = {aid: r for r, aid in enumerate(order)}
    by_id = [s.by_id() for s in sets]
    main_inst = by_id[0]
    images = main.images
    gt_anns = {}
    if gt is not None:
        gt_anns = {a.id: a for im in gt.images for a in im.annotations}
    colours = method_colours(len(sets))
    per_image: dict[int, list[int]] = defaultdict(list)
    for aid in order:
        per_image[main_inst[aid].image_id].append(aid)
    img_dir = out_dir / subdir
    img_dir.mkdir(parents=True, exist_ok=True)
    items: dict[int, Item] = {}
    unreadable = 0
    image_ids = sorted(per_image, key=lambda iid: min(rank[a] for a in per_image[iid]))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc="report gallery", unit="inst")
    for iid in image_ids:
        entry = images[iid]
        try:
            if entry.path is None:
                raise ImageReadError(f"image {iid} ({entry.file_name}): no image folder given")
            rgb = read_image_rgb(entry.path)
            if rgb.shape[:2] != (entry.height, entry.width):
                raise ImageReadError(f"{entry.path}: {rgb.shape[1]}x{rgb.shape[0]} on disk, "
                                     f"{entry.width}x{entry.height} in {main.path}")
        except ImageReadError as e:
            log.warning("report: %s; its %d instance(s) are left out of the gallery", e,
                        len(per_image[iid]))
            unreadable += len(per_image[iid])
            if bar is not None:
                bar.update(len(per_image[iid]))
            continue
        h, w = entry.height, entry.width
        for aid in per_image[iid]:
            inst = main_inst[aid]
            window = crop_window(inst.bbox, h, w)
            item = Item(aid, entry.file_name, inst.category)
            gt_mask = None
            g = gt_anns.get(aid)
            if g is not None and g.segmentation is not None:
                gt_mask = segmentation_to_mask(g.segmentation, h, w)
                src = f"{subdir}/{aid}-gt.jpg"
                pw, ph = _save_jpeg(out_dir / src, render_panel(rgb, window, inst.bbox, gt_mask,
                                                                GT_COLOUR))
                item.panels.append(Panel("ground truth", src, "ground truth", width=pw,
                                         height=ph))
            for k, (s, inst_of) in enumerate(zip(sets, by_id)):
                other = inst_of.get(aid)
                if other is None:
                    continue
                mask = other.mask(h, w) if other.labeled else None
                src = f"{subdir}/{aid}-{k}.jpg"
                pw, ph = _save_jpeg(out_dir / src, render_panel(rgb, window, inst.bbox, mask,
                                                                colours[k], gt_mask))
                status = ("no mask" if not other.labeled
                          else "dropped" if other.ignore_mask else "kept")
                iou = gt_ious[s.name].get(aid) if gt_ious is not None else None
                item.panels.append(Panel(s.name, src, status, other.score, iou, pw, ph))
            items[aid] = item
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Gallery([items[a] for a in order if a in items], sort_by, unreadable, left_out)
