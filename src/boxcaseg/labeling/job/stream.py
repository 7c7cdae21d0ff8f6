"""Label a dataset as a stream: image tasks in, one result per image out, in order.

Images are decoded on a thread while the previous chunk is labeled; a chunk of
``chunk_images`` images goes to the labeler together (so a network batches their crops). An
image that cannot be read gets an error instead of masks; the stream goes on.

    from boxcaseg import BoxLabeler, iter_labels
    labeler = BoxLabeler.from_checkpoint("final.pt")
    for r in iter_labels(labeler, "boxes.json", "images/"):
        r.image_id, r.ann_ids, r.labels.masks (LabeledMask each), r.error
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from boxcaseg.errors import ImageReadError
from boxcaseg.labeling.job.inputs import BoxInput, ImageTask, load_image
from boxcaseg.labeling.labeler import BoxLabeler, ImageLabels

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """One image's answers: ``labels`` (None when the image could not be read: ``error``)."""

    task: ImageTask
    labels: ImageLabels | None
    error: str | None = None

    @property
    def image_id(self) -> int:
        return self.task.id

    @property
    def ann_ids(self) -> list[int]:
        return [int(a) for a in self.task.ann_ids]

    def record(self, segmentation: str) -> dict[str, Any]:
        """The part-file record of this image (``job.parts``)."""
        anns = ([] if self.labels is None else
                [[int(a), f] for a, f in zip(self.task.ann_ids,
                                               self.labels.fields(segmentation))])
        return {"image_id": self.task.id, "input": self.task.input_hash, "error": self.error,
                "fallbacks": 0 if self.labels is None else self.labels.fallbacks,
                "anns": anns}


def label_tasks(labeler: BoxLabeler, tasks: Iterable[ImageTask], chunk_images: int | None = None
                ) -> Iterator[list[ImageResult]]:
    """Results of ``tasks`` in order, one list per chunk of images."""
    n = chunk_images or labeler.config.chunk_images
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = _chunks(tasks, n)
        current = next(chunks, None)
        loads = _submit(current, pool) if current else []
        while current:
            following = next(chunks, None)
            next_loads = _submit(following, pool) if following else []
            yield _label_chunk(labeler, current, loads)
            current, loads = following, next_loads


def iter_labels(labeler: BoxLabeler, boxes: str | os.PathLike | Any,
                images: str | os.PathLike | None = None) -> Iterator[ImageResult]:
    """Every image of a COCO box file (path, with ``images`` its image folder), a loaded
    ``CocoData``, or a ``BoxInput``, one result at a time; images without a box to label
    come with no masks. Ground-truth masks are kept and fixed in merge as ``label`` does
    (``LabelConfig.keep_gt_masks``)."""
    if not isinstance(boxes, BoxInput):
        if isinstance(boxes, (str, os.PathLike)):
            from boxcaseg.data.coco import load_coco
            boxes = load_coco(boxes, images)
        boxes = BoxInput.from_coco(boxes, keep_gt_masks=labeler.config.keep_gt_masks)
    tasks = (boxes.task(i) for i in range(boxes.num_images))
    for chunk in label_tasks(labeler, tasks):
        yield from chunk


def _chunks(items: Iterable[ImageTask], n: int) -> Iterator[list[ImageTask]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def _submit(chunk: Sequence[ImageTask], pool: ThreadPoolExecutor) -> list[Future | None]:
    """Start decoding a chunk's images; images with nothing to label are not read."""
    return [pool.submit(load_image, t) if len(t.ann_ids) else None for t in chunk]


def _label_chunk(labeler: BoxLabeler, chunk: Sequence[ImageTask],
                 futures: Sequence[Future | None]) -> list[ImageResult]:
    results = [ImageResult(t, None) for t in chunk]
    ready: list[tuple[int, np.ndarray]] = []
    for k, (t, fut) in enumerate(zip(chunk, futures)):
        if fut is None:
            continue
        try:
            ready.append((k, fut.result()))
        except ImageReadError as e:
            log.warning("image %s: %s; its %d annotation(s) get no mask", t.id, e,
                        len(t.ann_ids))
            results[k].error = str(e)
    if ready:
        tasks = [chunk[k] for k, _ in ready]
        fixed = [(t.fixed_masks(), t.gt_boxes) if len(t.gt_ids) else None for t in tasks]
        labeled = labeler.label_batch([img for _, img in ready], [t.boxes for t in tasks],
                                      fixed)
        for (k, _), lab in zip(ready, labeled):
            results[k].labels = lab
    return results
