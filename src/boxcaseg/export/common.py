"""What every exporter shares: review order, mask -> polygons, placing the images."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from boxcaseg.data.coco import ImageEntry
from boxcaseg.errors import ConfigError, DataError
from boxcaseg.labeling.masks import BoxMask, mask_polygons
from boxcaseg.labeling.review import Instance, Labels, worst_first
from boxcaseg.structures import mask_to_box

log = logging.getLogger(__name__)

IMAGE_MODES = ("link", "copy", "none")


@dataclass
class ReviewImage:
    """One image and its instances, both in review order (worst score first)."""

    entry: ImageEntry
    instances: list[Instance]
    ranks: list[int]  # 1 = the worst instance of the whole file

    @property
    def worst_score(self) -> float | None:
        return self.instances[0].score if self.instances else None


def review_order(labels: Labels) -> list[ReviewImage]:
    """Every image with at least one instance, ordered by its worst instance, each with its
    instances worst first. Instances without a mask or score come first (nothing to trust);
    images without any box come last, so a reviewer still sees the whole dataset."""
    order = worst_first({i.ann_id: i.score for i in labels.instances})
    by_id = labels.by_id()
    rank = {aid: r + 1 for r, aid in enumerate(order)}
    per_image: dict[int, list[Instance]] = {}
    for aid in order:
        per_image.setdefault(by_id[aid].image_id, []).append(by_id[aid])
    images = labels.images
    out = [ReviewImage(images[iid], inst, [rank[i.ann_id] for i in inst])
           for iid, inst in per_image.items()]
    out += [ReviewImage(im, [], []) for im in labels.coco.images if im.id not in per_image]
    return out


def score_attributes(inst: Instance, rank: int) -> dict[str, Any]:
    """The review attributes every exporter carries (plain JSON scalars). Unknown values
    are left out rather than written as null: datumaro refuses a null ``score``."""
    attrs = {"annotation_id": inst.ann_id, "score": inst.score, "proxy_iou": inst.proxy_iou,
             "ignore_mask": bool(inst.ignore_mask), "labeled": bool(inst.labeled),
             "review_rank": rank}
    return {k: v for k, v in attrs.items() if v is not None}


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a boolean [H, W] mask: the labeler's exact pixel-edge polygons
    (holes cut in as keyholes, :func:`boxcaseg.labeling.masks.mask_polygons`), which
    pycocotools rasterizes back to the same mask; ``[]`` for an empty mask."""
    box = mask_to_box(mask)
    if box is None:
        return []
    c0, r0, c1, r1 = box
    return [[float(v) for v in p]
            for p in mask_polygons(BoxMask(c0, r0, np.ascontiguousarray(mask[r0:r1, c0:c1])))]


def polygons_to_mask(polys: list[list[float]], height: int, width: int) -> np.ndarray:
    if not polys:
        return np.zeros((height, width), dtype=bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    return mask_utils.decode(rle).astype(bool)


def polygon_fidelity(mask: np.ndarray, polys: list[list[float]]) -> float:
    """IoU between a mask and its polygons rasterized back (a check: 1.0 for exact ones)."""
    back = polygons_to_mask(polys, *mask.shape)
    union = int((back | mask).sum())
    return float((back & mask).sum() / union) if union else 1.0


def place_images(review: list[ReviewImage], dest: Path, mode: str) -> None:
    """Put each image at ``dest/<file_name>``: a hard link to the original (``link``; a copy
    where the two folders are on different file systems), a copy (``copy``) or nothing
    (``none``: the tool is pointed at the original folder). Hard, not symbolic, links: the
    tools' loaders refuse files that resolve outside their dataset folder. Every image is
    looked for first: a missing one stops the export before anything is placed (naming how
    many are missing and the first few), not half-way through a filled folder."""
    if mode not in IMAGE_MODES:
        raise ConfigError(f"image mode {mode!r}: choose one of {list(IMAGE_MODES)}")
    if mode == "none":
        return
    if any(r.entry.path is None for r in review):
        raise ConfigError("exporting images needs the images folder (--images)")
    missing = [r.entry for r in review if not r.entry.path.is_file()]
    if missing:
        root = missing[0].path
        for _ in Path(missing[0].file_name).parts:  # path = images folder / file_name
            root = root.parent
        shown = ", ".join(e.file_name for e in missing[:3]) + (", ..." if len(missing) > 3
                                                              else "")
        raise DataError(f"{root}: image file not found for {len(missing)} of {len(review)} "
                        f"image(s) ({shown}); nothing was exported (check --images, or export "
                        "with --images-mode none)")
    for r in review:
        src = r.entry.path
        target = dest / r.entry.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if mode == "link":
            try:
                os.link(src, target)
                continue
            except OSError as e:  # other file system, or links not allowed there
                log.debug("hard link %s -> %s failed (%s); copying", src, target, e)
        shutil.copy2(src, target)


def instance_mask(inst: Instance, entry: ImageEntry) -> np.ndarray | None:
    """The instance's mask, ``None`` when it has none or it is empty."""
    m = inst.mask(entry.height, entry.width) if inst.labeled else None
    return m if m is not None and m.any() else None


def xywh(box_xyxy: tuple[float, float, float, float]) -> list[float]:
    x1, y1, x2, y2 = box_xyxy
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
