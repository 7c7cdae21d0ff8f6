"""CVAT: a "COCO 1.0" dataset (the layout CVAT exports and imports, read by datumaro):

    OUT/annotations/instances_default.json   exact polygons (holes as keyholes), worst first
    OUT/images/default/<file_name>           the images (links or copies)

Create a CVAT task from ``images/default`` (in this order), then upload
``annotations/instances_default.json`` as "COCO 1.0"; or zip OUT and import it as a dataset.
Scores are in each annotation's ``attributes`` (CVAT keeps the ones its labels declare).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxcaseg.export.coco import review_coco
from boxcaseg.export.common import place_images, review_order
from boxcaseg.io import atomic_write_json
from boxcaseg.labeling.review import Labels

ANNOTATIONS = "annotations/instances_default.json"
IMAGES = "images/default"


def export_cvat(labels: Labels, out_dir: str | Path, images: str = "link") -> dict[str, Any]:
    out = Path(out_dir)
    review = review_order(labels)
    place_images(review, out / IMAGES, images)
    data, counts = review_coco(labels, review, "polygon")
    atomic_write_json(out / ANNOTATIONS, data)
    return {"files": [str(out / ANNOTATIONS)], "images_dir": str(out / IMAGES), **counts}
