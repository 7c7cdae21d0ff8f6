"""The job's input: a validated box dataset held compactly, and one image's labeling task.

``BoxInput`` keeps what labeling needs of a COCO (or VOC) dataset as numpy arrays plus one
JSON string per annotation, so a set of millions of boxes fits in memory and every output
format can write each annotation back exactly as it was given. ``ImageTask`` is one image:
its file, size, the boxes to label and its ground-truth masks (mixed supervision).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxcaseg.data.gt_masks import decode_gt_mask
from boxcaseg.errors import ImageReadError
from boxcaseg.io import read_image_rgb, size_mismatch_message
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.schema import is_gt_annotation
from boxcaseg.runlock import config_fingerprint, file_fingerprint

LABEL, CROWD, SKIPPED, GT_MASK = 0, 1, 2, 3  # what happens to an input annotation
ANNOTATIONS = object()  # where the annotation list goes among the top-level keys


@dataclass
class ImageTask:
    """What labeling needs of one image: its file, size and the non-crowd boxes to label
    (XYXY [K, 4]); ``gt_*``: its annotations with a ground-truth mask (mixed supervision),
    not labeled, fixed masks in merge: ids, XYXY boxes [G, 4], raw ``segmentation``s."""

    id: int
    file_name: str
    path: Path | None
    height: int
    width: int
    ann_ids: np.ndarray
    boxes: np.ndarray
    gt_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    gt_segmentations: list[Any] = field(default_factory=list)
    input_hash: str = ""  # BoxInput.image_hash: what a finished record is bound to

    def fixed_masks(self) -> list[BoxMask]:
        """The GT masks as box masks over each mask's own extent (a drawn mask may reach
        outside its box), decoded one at a time; ``DataError`` naming a malformed one."""
        out = []
        for aid, segm in zip(self.gt_ids, self.gt_segmentations):
            full = decode_gt_mask(segm, self.height, self.width,
                                  f"annotation {int(aid)} (image {self.id}; keep_gt_masks=false "
                                  "labels it instead)")
            rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
            if rows.size == 0:
                out.append(BoxMask(0, 0, np.zeros((0, 0), dtype=bool)))
                continue
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            out.append(BoxMask(c0, r0, np.ascontiguousarray(full[r0:r1, c0:c1])))
        return out


def load_image(task: ImageTask) -> np.ndarray:
    if task.path is None:
        raise ImageReadError(f"image {task.id} ({task.file_name}): no image root given")
    image = read_image_rgb(task.path)
    if image.shape[:2] != (task.height, task.width):
        raise ImageReadError(size_mismatch_message(
            task.path, image.shape[1::-1], (task.width, task.height), "the JSON"))
    return image


@dataclass
class BoxInput:
    """A validated box dataset held compactly: arrays per annotation, one JSON string each.

    ``top``: the input's top-level (key, value) pairs in order, ``ANNOTATIONS`` in
    place of the annotation list. Annotation ``p`` (input order): id ``ann_ids[p]``, image
    index ``ann_image[p]``, clipped XYXY box ``ann_boxes[p]``, ``ann_kind[p]`` (LABEL, CROWD,
    SKIPPED, GT_MASK) and its original JSON ``ann_raw[p]``. ``keep_gt_masks``: whether
    annotations with a ground-truth mask are GT_MASK (kept as given, fixed in merge) or LABEL
    (``LabelConfig.keep_gt_masks``; a run's input and config must agree).
    """

    source: str
    fingerprint: str
    top: list[tuple[str, Any]]
    images_raw: list[dict[str, Any]]
    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    file_names: list[str]
    paths: list[str | None]
    ann_ids: np.ndarray
    ann_image: np.ndarray
    ann_boxes: np.ndarray
    ann_kind: np.ndarray
    ann_raw: list[str]
    skipped: list[tuple[int, str]]
    clipped: int
    keep_gt_masks: bool = True
    _image_order: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _label_pos: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _label_ptr: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _all_pos: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    _all_ptr: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        self._image_order = np.argsort(self.image_ids, kind="stable")

        def csr(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            order = positions[np.argsort(self.ann_image[positions], kind="stable")]
            ptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.ann_image[positions], minlength=n), out=ptr[1:])
            return order, ptr

        self._label_pos, self._label_ptr = csr(np.flatnonzero(self.ann_kind == LABEL))
        self._all_pos, self._all_ptr = csr(np.arange(len(self.ann_ids)))

    @classmethod
    def from_coco(cls, coco: Any, keep_gt_masks: bool = True) -> BoxInput:
        """From a validated ``CocoData`` (``data.coco.load_coco`` / ``data.voc.load_voc``)."""
        raw = coco.raw
        index = {im.id: i for i, im in enumerate(coco.images)}
        by_id = {a.id: (i, a) for i, im in enumerate(coco.images) for a in im.annotations}
        n = len(raw["annotations"])
        ann_ids = np.empty(n, dtype=np.int64)
        ann_image = np.empty(n, dtype=np.int64)
        ann_boxes = np.zeros((n, 4), dtype=np.float64)
        ann_kind = np.empty(n, dtype=np.int8)
        ann_raw = []
        for p, a in enumerate(raw["annotations"]):
            aid = int(float(a["id"]))
            hit = by_id.get(aid)
            ann_ids[p] = aid
            if hit is None:  # the reader skipped it (zero-size, outside its image)
                ann_image[p] = index[int(float(a["image_id"]))]
                ann_kind[p] = SKIPPED
            else:
                ann_image[p] = hit[0]
                ann_boxes[p] = hit[1].box
                ann_kind[p] = (CROWD if hit[1].iscrowd else
                               GT_MASK if keep_gt_masks and is_gt_annotation(a) else LABEL)
            ann_raw.append(json.dumps(a))
        source = str(coco.source)
        fingerprint = (file_fingerprint(source) if Path(source).is_file()
                       else config_fingerprint(raw))
        return cls(
            source=str(Path(source).resolve()) if Path(source).is_file() else source,
            fingerprint=fingerprint,
            top=[(k, ANNOTATIONS if k == "annotations" else v) for k, v in raw.items()],
            images_raw=raw["images"],
            image_ids=np.array([im.id for im in coco.images], dtype=np.int64),
            heights=np.array([im.height for im in coco.images], dtype=np.int64),
            widths=np.array([im.width for im in coco.images], dtype=np.int64),
            file_names=[im.file_name for im in coco.images],
            paths=[None if im.path is None else str(im.path) for im in coco.images],
            ann_ids=ann_ids, ann_image=ann_image, ann_boxes=ann_boxes, ann_kind=ann_kind,
            ann_raw=ann_raw, skipped=list(coco.skipped),
            clipped=int(coco.report.get("clipped_box", 0)), keep_gt_masks=keep_gt_masks)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def image_index(self, image_id: int) -> int:
        """Position of ``image_id`` in the input, or -1."""
        j = int(np.searchsorted(self.image_ids, image_id, sorter=self._image_order))
        if j < len(self.image_ids) and self.image_ids[self._image_order[j]] == image_id:
            return int(self._image_order[j])
        return -1

    def label_positions(self, i: int) -> np.ndarray:
        """Annotation positions of image ``i`` to label, in input order."""
        return self._label_pos[self._label_ptr[i]:self._label_ptr[i + 1]]

    def all_positions(self, i: int) -> np.ndarray:
        return self._all_pos[self._all_ptr[i]:self._all_ptr[i + 1]]

    def boxes_per_image(self) -> np.ndarray:
        return np.diff(self._label_ptr)

    def image_hash(self, i: int) -> str:
        """A short hash of image ``i``'s entry and all its annotations as given: a finished
        record stays valid on ``--resume`` while this is unchanged (a fix to another image's
        annotation does not invalidate it)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(json.dumps(self.images_raw[i], sort_keys=True).encode("utf-8"))
        for p in self.all_positions(i):
            h.update(b"\n" + self.ann_raw[p].encode("utf-8"))
        return h.hexdigest()

    def task(self, i: int) -> ImageTask:
        pos = self.label_positions(i)
        path = self.paths[i]
        task = ImageTask(int(self.image_ids[i]), self.file_names[i],
                         None if path is None else Path(path), int(self.heights[i]),
                         int(self.widths[i]), self.ann_ids[pos], self.ann_boxes[pos],
                         input_hash=self.image_hash(i))
        if len(pos):  # an image with nothing to label is not read, its GT masks not needed
            allp = self.all_positions(i)
            gt = allp[self.ann_kind[allp] == GT_MASK]
            if len(gt):
                task.gt_ids, task.gt_boxes = self.ann_ids[gt], self.ann_boxes[gt]
                task.gt_segmentations = [json.loads(self.ann_raw[p])["segmentation"]
                                         for p in gt]
        return task
