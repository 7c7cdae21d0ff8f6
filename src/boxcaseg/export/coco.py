"""The COCO JSON the CVAT and FiftyOne exports share (review order, score attributes)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from boxcaseg.export.common import (ReviewImage, instance_mask, mask_to_polygons,
                                    polygon_fidelity, score_attributes, xywh)
from boxcaseg.labeling.review import Labels
from boxcaseg.structures import mask_to_rle

log = logging.getLogger(__name__)


def review_coco(labels: Labels, review: list[ReviewImage], segmentation: str
                ) -> tuple[dict[str, Any], dict[str, int]]:
    """COCO dict of ``labels`` in review order, and counts of what was written.

    ``segmentation``: ``"polygon"`` (the labeler's exact pixel-edge polygons, holes as
    keyholes; ``polygon_iou`` checks it) or ``"rle"`` (compressed RLE). Instances without a
    mask keep their box, with an empty polygon list, or an all-zero RLE (FiftyOne's importer drops
    a detection without a decodable mask, and the worst instances would vanish). Every
    annotation carries ``score`` (when known) and an ``attributes`` dict (annotation_id,
    score, proxy_iou, ignore_mask, labeled, review_rank), the place CVAT reads attributes
    from; unknown values are left out."""
    counts = {"annotations": 0, "without_mask": 0, "polygons_inexact": 0}
    images, anns = [], []
    for r in review:
        e = r.entry
        images.append({"id": e.id, "file_name": e.file_name, "width": e.width,
                       "height": e.height, "license": 0, "flickr_url": "", "coco_url": "",
                       "date_captured": 0})
        for inst, rank in zip(r.instances, r.ranks):
            mask = instance_mask(inst, e)
            attrs = {**score_attributes(inst, rank), "occluded": False}
            if mask is None:
                segm: Any = ([] if segmentation == "polygon" else
                             mask_to_rle(np.zeros((e.height, e.width), dtype=bool)))
                area = 0
                counts["without_mask"] += 1
            elif segmentation == "polygon":
                segm = mask_to_polygons(mask)
                fid = polygon_fidelity(mask, segm)
                attrs["polygon_iou"] = round(fid, 4)
                counts["polygons_inexact"] += fid < 1.0
                area = int(mask.sum())
            else:
                segm = mask_to_rle(mask)
                area = int(mask.sum())
            ann = {"id": inst.ann_id, "image_id": e.id, "category_id": inst.category_id,
                   "segmentation": segm, "area": area, "bbox": xywh(inst.bbox), "iscrowd": 0,
                   "attributes": attrs}
            if inst.score is not None:
                ann["score"] = inst.score
            anns.append(ann)
            counts["annotations"] += 1
    cats = [{"id": cid, "name": name, "supercategory": ""}
            for cid, name in sorted(labels.categories.items())]
    data = {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description":
                     f"boxcaseg export of {labels.path.name} ({labels.name}), worst score first",
                     "url": "", "version": "1.0", "year": ""},
            "categories": cats, "images": images, "annotations": anns}
    return data, counts
