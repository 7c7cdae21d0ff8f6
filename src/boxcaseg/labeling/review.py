"""The review view of a labels file: every non-crowd box with what the labeler answered.

Built on the one reader (``schema.read_labels``) and the COCO validation of ``data.coco``;
``report`` and every exporter read labels files through :func:`load_labels`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxcaseg.data.coco import parse_coco
from boxcaseg.errors import DataError
from boxcaseg.labeling.schema import (IGNORE_MASK, LABEL_FIELDS, PROXY_IOU, SEGMENTATION,
                                      instance_score, is_labeled, label_info, read_labels)
from boxcaseg.structures import segmentation_to_mask



@dataclass
class Instance:
    """One non-crowd box of a labels file and what the labeler answered for it."""

    ann_id: int
    image_id: int
    category_id: int
    category: str
    bbox: tuple[float, float, float, float]  # XYXY, clipped to the image
    labeled: bool                            # the labeler answered this box
    ignore_mask: bool
    score: float | None
    proxy_iou: float | None
    segmentation: dict[str, Any] | list | None  # as in the file

    def mask(self, height: int, width: int) -> np.ndarray | None:
        """Boolean [H, W] mask, ``None`` when the instance has none (not labeled)."""
        if self.segmentation is None:
            return None
        return segmentation_to_mask(self.segmentation, height, width)

    @property
    def kept(self) -> bool:
        return self.labeled and not self.ignore_mask


@dataclass
class Labels:
    """A labels file: validated COCO view plus the instances in file order."""

    path: Path
    name: str  # method name shown in the report (file stem when two inputs share a method)
    coco: Any  # data.coco.CocoData
    instances: list[Instance]
    label_info: dict[str, Any] = field(default_factory=dict)  # the boxcaseg_label block

    @property
    def categories(self) -> dict[int, str]:
        return self.coco.categories

    @property
    def method(self) -> str:
        return str(self.label_info.get("method") or self.path.stem)

    @property
    def images(self) -> dict[int, Any]:  # id -> data.coco.ImageEntry
        return self.coco.image_by_id()

    def by_id(self) -> dict[int, Instance]:
        return {i.ann_id: i for i in self.instances}

    def counts(self) -> dict[str, int]:
        c = Counter()
        for i in self.instances:
            c["instances"] += 1
            c["labeled"] += i.labeled
            c["dropped"] += i.labeled and i.ignore_mask
            c["not_labeled"] += not i.labeled
        c["skipped_boxes"] = len(self.coco.skipped)
        return {k: int(c[k]) for k in ("instances", "labeled", "dropped", "not_labeled",
                                       "skipped_boxes")}

    def speed(self) -> float | None:
        """Instances per second, when the file records it."""
        for block in (self.label_info, self.label_info.get("summary") or {}):
            v = block.get("instances_per_s")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return float(v)
        return None


def load_labels(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                name: str | None = None) -> Labels:
    """Read and validate a labels file (``boxcaseg label``'s output)."""
    path = Path(path)
    data = read_labels(path)
    # every mask checked now: report and export decode them later, one by one
    coco = parse_coco(data, str(path), image_root, masks="labels")
    raw_by_id = {int(a["id"]): a for a in data["annotations"]}
    instances: list[Instance] = []
    for img in coco.images:
        for a in img.annotations:
            if a.iscrowd:
                continue
            raw = raw_by_id[a.id]
            labeled = is_labeled(raw)
            segm = raw.get(SEGMENTATION) if labeled else None
            if labeled and not segm:
                segm = None
            if isinstance(segm, dict) and list(segm.get("size", [])) != [img.height, img.width]:
                raise DataError(f"{path}: annotation {a.id}: mask size {segm.get('size')} does "
                                f"not match its {img.width}x{img.height} image {img.file_name}")
            proxy = raw.get(PROXY_IOU)
            instances.append(Instance(
                ann_id=a.id, image_id=img.id, category_id=a.category_id,
                category=coco.categories[a.category_id], bbox=a.box, labeled=labeled,
                ignore_mask=bool(raw.get(IGNORE_MASK, False)),
                score=instance_score(raw) if labeled else None,
                proxy_iou=float(proxy) if isinstance(proxy, (int, float)) else None,
                segmentation=segm))
    labels = Labels(path, name or "", coco, instances, label_info(data))
    if not labels.name:
        labels.name = labels.method
    if not any(i.labeled for i in instances) and instances:
        raise DataError(f"{path}: no annotation carries a mask from boxcaseg label "
                        f"(none has any of {list(LABEL_FIELDS)}); is this a labels file?")
    return labels


def load_label_sets(paths: list[str | os.PathLike], image_root: str | os.PathLike | None = None
                    ) -> list[Labels]:
    """Several labels files, each named by its method; files that share a method name are
    named by their file stems instead (e.g. BoxCaseg and its weak-head ablation)."""
    sets = [load_labels(p, image_root) for p in paths]
    methods = Counter(s.method for s in sets)
    for s in sets:
        if methods[s.method] > 1:
            s.name = s.path.stem
    names = Counter(s.name for s in sets)
    for s in sets:
        if names[s.name] > 1:
            s.name = str(s.path)
    return sets


def worst_first(scores: dict[int, float | None]) -> list[int]:
    """Keys ordered lowest score first; ``None`` (no mask, nothing to trust) before all."""
    return sorted(scores, key=lambda k: (scores[k] is not None, scores[k] or 0.0, k))
