"""Label Studio: tasks with pre-annotations ("predictions") to import, review and correct.

    OUT/tasks.json          one task per image, worst score first
    OUT/label_config.xml    the project's labeling config (Image + BrushLabels or
                            PolygonLabels, RectangleLabels for boxes without a mask)
    OUT/images/<file_name>  the images (links or copies)

Masks are brush regions in Label Studio's own RLE, encoded by ``label-studio-converter``'s
``brush.mask2rle`` (``pip install "boxcaseg[export]"``), or polygons (``mask_format=
"polygon"``, no extra needed). Image URLs are ``url_prefix + file_name`` with the file name
percent-encoded (``/`` kept: ``a&b #1.jpg`` -> ``a%26b%20%231.jpg``; unencoded, ``&`` and ``#``
would end the query value and load another file or none); the default
serves OUT/images through Label Studio's local files storage: start Label Studio with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=OUT``.
Each region carries ``score``, and its ``meta.text`` shows score / proxy IoU / drop decision;
each task's data has ``worst_score`` and ``review_rank`` to sort the data manager by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from boxcaseg.errors import ConfigError
from boxcaseg.export.common import (ReviewImage, instance_mask, mask_to_polygons, place_images,
                                    review_order, score_attributes)
from boxcaseg.io import atomic_write_json, atomic_write_text
from boxcaseg.labeling.review import Instance, Labels

TASKS = "tasks.json"
CONFIG = "label_config.xml"
IMAGES = "images"
DEFAULT_URL_PREFIX = "/data/local-files/?d=images/"
MASK_FORMATS = ("brush", "polygon")
IMAGE_TAG, MASK_TAG, BOX_TAG = "image", "mask", "box"


def _brush_encoder():
    try:
        from label_studio_converter.brush import mask2rle
    except ImportError as e:
        raise ConfigError("Label Studio brush masks need label-studio-converter: "
                          "pip install \"boxcaseg[export]\", or export polygons "
                          "(--ls-mask polygon)") from e
    return mask2rle


def label_config(labels: Labels, mask_format: str) -> str:
    names = "".join(f"\n    <Label value={quoteattr(n)}/>"
                    for _, n in sorted(labels.categories.items()))
    mask_tag = "BrushLabels" if mask_format == "brush" else "PolygonLabels"
    return (f"<View>\n  <Image name=\"{IMAGE_TAG}\" value=\"$image\" zoom=\"true\"/>\n"
            f"  <{mask_tag} name=\"{MASK_TAG}\" toName=\"{IMAGE_TAG}\">{names}\n"
            f"  </{mask_tag}>\n"
            f"  <RectangleLabels name=\"{BOX_TAG}\" toName=\"{IMAGE_TAG}\">{names}\n"
            "  </RectangleLabels>\n</View>\n")


def _meta(inst: Instance, rank: int) -> dict[str, Any]:
    status = ("no mask" if not inst.labeled else
              "dropped (ignore_mask)" if inst.ignore_mask else "kept")
    score = "-" if inst.score is None else f"{inst.score:.3f}"
    proxy = "-" if inst.proxy_iou is None else f"{inst.proxy_iou:.3f}"
    return {"text": [f"review rank {rank}; score {score}; proxy IoU {proxy}; {status}; "
                     f"annotation {inst.ann_id}"], **score_attributes(inst, rank)}


def _results(r: ReviewImage, mask_format: str, encode) -> tuple[list[dict[str, Any]], int]:
    e = r.entry
    out: list[dict[str, Any]] = []
    no_mask = 0
    for inst, rank in zip(r.instances, r.ranks):
        base = {"to_name": IMAGE_TAG, "original_width": e.width, "original_height": e.height,
                "image_rotation": 0, "origin": "prediction", "meta": _meta(inst, rank)}
        if inst.score is not None:
            base["score"] = inst.score
        mask = instance_mask(inst, e)
        if mask is None:
            x1, y1, x2, y2 = inst.bbox
            out.append({**base, "id": f"b{inst.ann_id}", "from_name": BOX_TAG,
                        "type": "rectanglelabels",
                        "value": {"x": 100 * x1 / e.width, "y": 100 * y1 / e.height,
                                  "width": 100 * (x2 - x1) / e.width,
                                  "height": 100 * (y2 - y1) / e.height, "rotation": 0,
                                  "rectanglelabels": [inst.category]}})
            no_mask += 1
        elif mask_format == "brush":
            # Label Studio's brush layer is RGBA; the encoder repeats the value 4x, so the
            # mask goes in as 0/255 (the alpha Label Studio paints with)
            rle = encode(mask.astype(np.uint8) * 255)
            out.append({**base, "id": f"m{inst.ann_id}", "from_name": MASK_TAG,
                        "type": "brushlabels",
                        "value": {"format": "rle", "rle": [int(v) for v in rle],
                                  "brushlabels": [inst.category]}})
        else:
            for k, poly in enumerate(mask_to_polygons(mask)):
                pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                pts = pts / np.array([e.width, e.height]) * 100.0
                out.append({**base, "id": f"p{inst.ann_id}_{k}", "from_name": MASK_TAG,
                            "type": "polygonlabels",
                            "value": {"points": [[round(x, 4), round(y, 4)] for x, y in pts],
                                      "closed": True, "polygonlabels": [inst.category]}})
    return out, no_mask


def export_labelstudio(labels: Labels, out_dir: str | Path, images: str = "link", *,
                       mask_format: str = "brush", url_prefix: str = DEFAULT_URL_PREFIX
                       ) -> dict[str, Any]:
    if mask_format not in MASK_FORMATS:
        raise ConfigError(f"Label Studio mask format {mask_format!r}: choose one of "
                          f"{list(MASK_FORMATS)}")
    encode = _brush_encoder() if mask_format == "brush" else None
    out = Path(out_dir)
    review = review_order(labels)
    place_images(review, out / IMAGES, images)
    tasks = []
    regions = no_mask = 0
    for r in review:
        results, nm = _results(r, mask_format, encode)
        regions += len(results)
        no_mask += nm
        data = {IMAGE_TAG: url_prefix + quote(r.entry.file_name, safe="/"),
                "image_id": r.entry.id,
                "file_name": r.entry.file_name, "worst_score": r.worst_score,
                "review_rank": r.ranks[0] if r.ranks else None}
        task: dict[str, Any] = {"data": data}
        if results:
            scores = [i.score for i in r.instances if i.score is not None]
            task["predictions"] = [{"model_version": f"boxcaseg {labels.name}",
                                    "score": min(scores) if scores else None,
                                    "result": results}]
        tasks.append(task)
    atomic_write_json(out / TASKS, tasks)
    atomic_write_text(out / CONFIG, label_config(labels, mask_format))
    return {"files": [str(out / TASKS), str(out / CONFIG)], "images_dir": str(out / IMAGES),
            "tasks": len(tasks), "regions": regions, "without_mask": no_mask}
