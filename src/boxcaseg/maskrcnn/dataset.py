"""Training data for the Proxy Mask R-CNN: COCO JSON (boxes + proxy or GT masks) -> tensors.

Which annotations train what:

* ``iscrowd=1``: not trained on (neither boxes nor masks);
* no ``segmentation``, or the labeler's empty placeholder (``boxcaseg_no_mask``, a box it
  skipped or could not label): ignored entirely, warned and counted
  (``report["no_segmentation"]``); zero-size / outside boxes were already dropped by
  :func:`boxcaseg.data.coco.load_coco`;
* ``"ignore_mask": true``: trains the box/class branches, ``mask_valid`` false (left out of
  the mask loss by :class:`boxcaseg.maskrcnn.model.IgnoreAwareRoIHeads`);
* everything else: box + class + mask.

Images left with no usable annotation are skipped for training (counted in
``report["images_without_annotations"]``), as maskrcnn-benchmark and detectron2 do by default:
an image whose only objects are crowd regions or unlabelled boxes would teach "background" on
real objects.

Category ids map to contiguous labels ``1..C`` in increasing id order (0 is background);
:attr:`MaskRCNNDataset.categories` lists ``{"id", "name"}`` in label order and is stored in
every checkpoint so predictions are written with the original ids.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from boxcaseg.data.coco import CocoData, ImageEntry
from boxcaseg.errors import DataError
from boxcaseg.data.train_sets import load_with_substitute
from boxcaseg.io import read_image_rgb, size_mismatch_message
from boxcaseg.labeling.schema import IGNORE_MASK, NO_MASK
from boxcaseg.structures import segmentation_to_mask

log = logging.getLogger(__name__)


def category_list(coco: CocoData) -> list[dict[str, Any]]:
    """``[{"id", "name"}, ...]`` sorted by id; list position + 1 is the model's label."""
    return [{"id": cid, "name": coco.categories[cid]} for cid in sorted(coco.categories)]


class MaskRCNNDataset(Dataset):
    """Item ``i`` -> ``(image, target)``:

    * ``image``: float32 ``[3, H, W]`` in [0, 1] (RGB; the model's transform normalises);
    * ``target``: ``boxes`` float32 ``[K, 4]`` XYXY pixels, ``labels`` int64 ``[K]`` in 1..C,
      ``masks`` uint8 ``[K, H, W]``, ``mask_valid`` bool ``[K]``, ``image_id`` int64 scalar.

    With ``train=True`` images are flipped horizontally with probability ``hflip_prob``
    (boxes and masks with them); multi-scale resizing happens in the model's transform.
    """

    def __init__(self, coco: CocoData, train: bool = True, hflip_prob: float = 0.5,
                 categories: list[dict[str, Any]] | None = None, skip_empty: bool = True):
        self.coco = coco
        self.train = train
        self.hflip_prob = hflip_prob if train else 0.0
        self.categories = categories if categories is not None else category_list(coco)
        self.label_of = {int(c["id"]): i + 1 for i, c in enumerate(self.categories)}
        raw_by_id = {int(a["id"]): a for a in coco.raw.get("annotations", [])}
        self.report: Counter = Counter()
        self.entries: list[tuple[ImageEntry, list[tuple[Any, bool]]]] = []
        self._bad: set[int] = set()  # entries found unreadable mid-run (this process)
        for im in coco.images:
            usable = []
            for ann in im.annotations:
                if ann.iscrowd:
                    self.report["crowd"] += 1
                    continue
                if ann.segmentation is None or raw_by_id.get(ann.id, {}).get(NO_MASK):
                    self.report["no_segmentation"] += 1
                    log.warning("%s: annotation %d (image %s) has no segmentation: ignored",
                                coco.source, ann.id, im.file_name)
                    continue
                if ann.category_id not in self.label_of:
                    raise DataError(f"{coco.source}: annotation {ann.id} has category_id "
                                    f"{ann.category_id}, not among the model's categories "
                                    f"{sorted(self.label_of)}")
                ignore = bool(raw_by_id.get(ann.id, {}).get(IGNORE_MASK, False))
                self.report["mask_ignored" if ignore else "mask_trained"] += 1
                usable.append((ann, not ignore))
            if not usable and skip_empty:
                self.report["images_without_annotations"] += 1
                continue
            self.entries.append((im, usable))
        if self.report["no_segmentation"]:
            log.warning("%s: %d annotation(s) without segmentation ignored", coco.source,
                        self.report["no_segmentation"])
        if self.report["images_without_annotations"]:
            log.info("%s: %d image(s) without usable annotations skipped", coco.source,
                     self.report["images_without_annotations"])

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # an image that proves unreadable mid-run is replaced by the next good one (warned)
        item, _ = load_with_substitute(self._item, idx, len(self), self._bad)
        return item

    def _item(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        im, anns = self.entries[idx]
        if im.path is None:
            raise DataError(f"{self.coco.source}: no image root given for {im.file_name}")
        rgb = read_image_rgb(im.path)
        h, w = rgb.shape[:2]
        if (h, w) != (im.height, im.width):
            raise DataError(size_mismatch_message(im.path, (w, h), (im.width, im.height),
                                                  f"{self.coco.source} (image {im.id})"))
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        for k, (ann, _) in enumerate(anns):
            try:
                masks[k] = segmentation_to_mask(ann.segmentation, h, w)
            except Exception as e:  # pycocotools raises TypeError/ValueError/... on bad RLE
                raise DataError(f"{self.coco.source}: annotation {ann.id}: cannot decode "
                                f"segmentation ({type(e).__name__}: {e})") from e
        boxes = torch.tensor([list(a.box) for a, _ in anns], dtype=torch.float32).reshape(-1, 4)
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        mask_t = torch.from_numpy(masks)
        if self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            image = image.flip(-1)
            mask_t = mask_t.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a.category_id] for a, _ in anns],
                                   dtype=torch.int64),
            "masks": mask_t.contiguous(),
            "mask_valid": torch.tensor([v for _, v in anns], dtype=torch.bool),
            "image_id": torch.tensor(im.id, dtype=torch.int64),
        }
        return image.contiguous(), target


def screen_maskrcnn_dataset(dataset: MaskRCNNDataset, max_bad_fraction: float) -> None:
    """Leave out images that are missing, unreadable or mis-sized (header check), warned and
    counted in ``dataset.report["bad_image"]``; DataError if more than ``max_bad_fraction``
    of the images are."""
    from boxcaseg.data.validate import ScreenResult, enforce_bad_fraction, screen_box_images

    source = dataset.coco.source
    bad = screen_box_images([im for im, _ in dataset.entries], source)
    result = ScreenResult("images", len(dataset.entries),
                          [(f"image {iid}", reason) for iid, reason in bad.items()])
    enforce_bad_fraction(result, max_bad_fraction, source)
    dataset.entries = [(im, anns) for im, anns in dataset.entries if im.id not in bad]
    dataset.report["bad_image"] += len(bad)


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Lists, not stacked tensors: torchvision detection models take variable-size images."""
    images, targets = zip(*batch)
    return list(images), list(targets)
