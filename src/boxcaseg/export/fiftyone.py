"""FiftyOne: a ``fiftyone.types.COCODetectionDataset`` folder with instance masks:

    OUT/labels.json     COCO, masks as compressed RLE (exact), worst score first
    OUT/data/<file_name>

    import fiftyone as fo
    ds = fo.Dataset.from_dir(dataset_dir="OUT", dataset_type=fo.types.COCODetectionDataset,
                             label_types=["segmentations"])

Each detection's ``confidence`` is the score; ``proxy_iou``, ``ignore_mask``,
``review_rank`` and ``labels_image_id`` come along as detection attributes (sort or filter
by them in the App). FiftyOne's COCO importer orders samples by image id, so the image ids
here are the review positions (1 = the image with the worst mask); annotation ids are those
of the labels file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxcaseg.export.coco import review_coco
from boxcaseg.export.common import place_images, review_order
from boxcaseg.io import atomic_write_json
from boxcaseg.labeling.review import Labels

LABELS = "labels.json"
DATA = "data"


def export_fiftyone(labels: Labels, out_dir: str | Path, images: str = "link"
                    ) -> dict[str, Any]:
    out = Path(out_dir)
    review = review_order(labels)
    place_images(review, out / DATA, images)
    data, counts = review_coco(labels, review, "rle")
    new_id = {im["id"]: k + 1 for k, im in enumerate(data["images"])}
    for im in data["images"]:
        im["id"] = new_id[im["id"]]
    for a in data["annotations"]:
        a["attributes"]["labels_image_id"] = a["image_id"]
        a["image_id"] = new_id[a["image_id"]]
    atomic_write_json(out / LABELS, data)
    return {"files": [str(out / LABELS)], "images_dir": str(out / DATA), **counts}
