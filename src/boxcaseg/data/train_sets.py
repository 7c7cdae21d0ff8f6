"""Training datasets: box-supervised crops and salient crops, mixed by :class:`MixedBatchSampler`.

Every sample is produced from ``(index, seed)`` alone (``seed`` comes from the sampler and
depends only on the sample's position in the global stream), so a run is reproducible and
resumable whatever the number of DataLoader workers.

A sample is a dict:

* ``image``: uint8 [3, S, S] RGB (normalisation happens on the device, see
  :func:`boxcaseg.data.transforms.normalize`);
* ``box``: float32 [4] XYXY in crop pixel coordinates (the MIL target);
* ``mask``: float32 [1, S, S] (the salient ground truth; zeros for box samples);
* ``is_salient``: bool: the sample trains the pixel heads (a salient crop, or a box crop
  whose annotation carries a ground-truth mask: mixed supervision, ``data.gt_masks``, or a
  teacher's mask: ``data.teacher``);
* ``weight``: float32 scalar, the sample's weight in the pixel loss: 1 except for a teacher
  mask weighted by its score (``teacher_weight: score``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from boxcaseg.data.coco import BoxAnnotation, CocoData, ImageEntry
from boxcaseg.data.crops import augmented_box_crop, salient_box, salient_box_crop, salient_crop
from boxcaseg.data.gt_masks import box_crop_with_mask, decode_gt_mask
from boxcaseg.data.occlusion import SCALE_RANGE, paste_occluder
from boxcaseg.labeling.schema import gt_annotation_ids
from boxcaseg.data.sampler import BOX, SALIENT, SampleRef
from boxcaseg.data.teacher import TeacherMask
from boxcaseg.errors import DataError
from boxcaseg.io import read_image_rgb, size_mismatch_message

log = logging.getLogger(__name__)


class SalientSource(Protocol):
    """What :class:`SalientCropDataset` needs (``boxcaseg.data.salient.SalientFolder``)."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


class ImageCache:
    """Keep decoded images in memory until ``limit_bytes`` is used (per process / worker)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = int(limit_bytes)
        self.used = 0
        self._items: dict[Any, Any] = {}

    def get(self, key: Any, load: Any) -> Any:
        if key in self._items:
            return self._items[key]
        value = load()
        size = sum(a.nbytes for a in value) if isinstance(value, tuple) else value.nbytes
        if self.used + size <= self.limit:
            self._items[key] = value
            self.used += size
        return value


def _sample(image: np.ndarray, box: tuple[float, ...], mask: np.ndarray | None,
            salient: bool, weight: float = 1.0) -> dict[str, Any]:
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    s = image.shape[0]
    m = (torch.from_numpy(mask).float()[None] if mask is not None
         else torch.zeros(1, s, image.shape[1], dtype=torch.float32))
    return {"image": img, "box": torch.tensor(box, dtype=torch.float32), "mask": m,
            "is_salient": salient, "weight": torch.tensor(weight, dtype=torch.float32)}


# a sample that proves unreadable mid-run (a truncated file passes the header screen) is
# replaced by the next good one instead of killing a DataLoader worker hours in
MAX_SUBSTITUTES = 16


def load_with_substitute(load: Any, index: int, n: int, bad: set[int]) -> tuple[Any, int]:
    """``(load(j), j)`` for the first ``j = index, index+1, ...`` (mod n) that loads; each
    failure is warned about once (per process) and remembered in ``bad``."""
    last: DataError | None = None
    for step in range(min(n, MAX_SUBSTITUTES)):
        j = (index + step) % n
        if j in bad:
            continue
        try:
            return load(j), j
        except DataError as e:  # ImageReadError included
            bad.add(j)
            last = e
            log.warning("%s; sample skipped for the rest of the run (a neighbouring sample "
                        "replaces it)", e)
    raise DataError(f"{MAX_SUBSTITUTES} consecutive training samples are unreadable, "
                    f"last: {last}")


class BoxCropDataset:
    """Every non-crowd box of a COCO set is one sample: jittered crop resized to ``S x S``.

    ``gt_masks``: a box whose annotation carries a ground-truth mask
    (:func:`boxcaseg.data.gt_masks.is_gt_annotation`) becomes a pixel-supervised sample,
    like a salient crop, with that mask warped into the same crop. ``teacher``: the same for
    a teacher's masks (``data.teacher.teacher_masks``: annotation id -> mask and pixel-loss
    weight); a GT mask wins over a teacher's.
    """

    def __init__(self, coco: CocoData, crop_size: int = 288, augment: bool = True,
                 cache_bytes: int = 0, jitter: str = "centre", gt_masks: bool = False,
                 teacher: Mapping[int, TeacherMask] | None = None) -> None:
        self.coco = coco
        self.gt_ids = gt_annotation_ids(coco.raw["annotations"]) if gt_masks else set()
        self.teacher = {k: v for k, v in (teacher or {}).items() if k not in self.gt_ids}
        self.crop_size = int(crop_size)
        self.augment = augment
        self.jitter = jitter
        self.items: list[tuple[ImageEntry, BoxAnnotation]] = []
        crowd = 0
        for im in coco.images:
            for ann in im.annotations:
                if ann.iscrowd:
                    crowd += 1
                    continue
                if im.path is None:
                    raise DataError(f"{coco.source}: no image root given, cannot read image "
                                    f"{im.id} ({im.file_name})")
                self.items.append((im, ann))
        if crowd:
            log.info("%s: %d crowd annotations left out of training", coco.source, crowd)
        if self.gt_ids:
            log.info("%s: %d of %d boxes carry a ground-truth mask (pixel supervision)",
                     coco.source, sum(a.id in self.gt_ids for _, a in self.items), len(self.items))
        if self.teacher:
            log.info("%s: %d of %d boxes carry a teacher's mask (pixel supervision)",
                     coco.source, self.pixel_supervised() - sum(a.id in self.gt_ids
                                                                for _, a in self.items),
                     len(self.items))
        needed = sum(im.width * im.height * 3 for im in {id(e): e for e, _ in self.items}.values())
        # Cache only when the whole decoded set fits: a partial cache just wastes memory.
        self._cache = ImageCache(cache_bytes if needed <= cache_bytes else 0)
        self._bad: set[int] = set()  # indices found unreadable mid-run (this process)

    def __len__(self) -> int:
        return len(self.items)

    def pixel_supervised(self) -> int:
        """Boxes that train the pixel heads (a GT or a teacher's mask)."""
        return sum(a.id in self.gt_ids or a.id in self.teacher for _, a in self.items)

    def drop_images(self, image_ids: set[int]) -> int:
        """Leave out every box of these images (found bad up front); returns boxes dropped."""
        before = len(self.items)
        self.items = [(im, ann) for im, ann in self.items if im.id not in image_ids]
        return before - len(self.items)

    def _load(self, index: int) -> tuple[np.ndarray, BoxAnnotation]:
        im, ann = self.items[index]
        image = self._cache.get(im.id, lambda: read_image_rgb(im.path))  # type: ignore[arg-type]
        if image.shape[:2] != (im.height, im.width):
            raise DataError(size_mismatch_message(im.path, (image.shape[1], image.shape[0]),
                                                  (im.width, im.height), self.coco.source))
        return image, ann

    def get(self, index: int, seed: int) -> dict[str, Any]:
        (image, ann), _ = load_with_substitute(self._load, index, len(self), self._bad)
        rng = np.random.default_rng(seed)
        segmentation, weight, what = None, 1.0, ""
        if ann.id in self.gt_ids:
            segmentation, what = ann.segmentation, (f"{self.coco.source}: annotation {ann.id} "
                                                    "(gt_masks=false trains on its box only)")
        elif ann.id in self.teacher:
            t = self.teacher[ann.id]
            segmentation, weight = t.segmentation, t.weight
            what = f"teacher_labels: annotation {ann.id}"
        if segmentation is not None:
            mask = decode_gt_mask(segmentation, image.shape[0], image.shape[1], what)
            crop, box, cmask = box_crop_with_mask(image, mask, ann.box, self.crop_size, rng,
                                                  self.augment, self.jitter)
            return _sample(crop, box, cmask, salient=True, weight=weight)
        crop, box = augmented_box_crop(image, ann.box, self.crop_size, rng, self.augment,
                                       self.jitter)
        return _sample(crop, box, None, salient=False)


SALIENT_CROPS = ("image", "box", "mixed")


class SalientCropDataset:
    """Salient images -> crops; MIL box = tight box of the cropped mask.

    ``mode``: ``"image"`` (the paper: resize, random crop, flip), ``"box"`` (the mask's box
    jittered like a box image's, :func:`~boxcaseg.data.crops.salient_box_crop`) or
    ``"mixed"`` (each sample draws one of the two with equal probability). ``occlude``: the
    probability that another salient object of the folder is pasted over the crop
    (:func:`~boxcaseg.data.occlusion.paste_occluder`; the target keeps the framed object only),
    its longer side ``U(occlude_scale)`` times the crop.
    """

    def __init__(self, folder: SalientSource, resize: int = 320, crop_size: int = 288,
                 flip: bool = True, cache_bytes: int = 0, retries: int = 10,
                 mode: str = "image", jitter: str = "centre", occlude: float = 0.0,
                 occlude_scale: tuple[float, float] = SCALE_RANGE) -> None:
        if mode not in SALIENT_CROPS:
            raise ValueError(f"salient crop mode must be one of {SALIENT_CROPS}, got {mode!r}")
        if not 0.0 <= float(occlude) <= 1.0:
            raise ValueError(f"occlude must lie in [0, 1], got {occlude}")
        self.occlude = float(occlude)
        self.occlude_scale = (float(occlude_scale[0]), float(occlude_scale[1]))
        self.folder = folder
        self.resize, self.crop_size, self.flip = int(resize), int(crop_size), flip
        self.retries = retries
        self.mode, self.jitter = mode, jitter
        self._cache = ImageCache(cache_bytes)
        self.indices: list[int] = list(range(len(folder)))  # pairs in use (restrict drops some)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def restrict(self, bad: set[int]) -> int:
        """Leave out these pairs of the folder (found bad up front); returns pairs dropped."""
        before = len(self.indices)
        self.indices = [i for i in self.indices if i not in bad]
        return before - len(self.indices)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.indices[index]
        return self._cache.get(pair, lambda: self.folder.load(pair))

    def get(self, index: int, seed: int) -> dict[str, Any]:
        (image, mask), _ = load_with_substitute(self._load, index, len(self), self._bad)
        rng = np.random.default_rng(seed)
        if self.mode == "box" or (self.mode == "mixed" and rng.random() < 0.5):
            crop, cmask = salient_box_crop(image, mask, self.crop_size, rng, self.jitter,
                                           self.flip)
        else:
            # A random crop can miss a small object entirely; redraw (deterministically) a few
            # times. An empty crop is still a valid sample (all bags negative, all pixels 0).
            for _ in range(self.retries):
                crop, cmask = salient_crop(image, mask, self.resize, self.crop_size, rng,
                                           self.flip)
                if cmask.any():
                    break
        # drawn only when on, so runs without occlusion keep their random stream
        if self.occlude > 0 and len(self) > 1 and rng.random() < self.occlude:
            other = (index + 1 + int(rng.integers(len(self) - 1))) % len(self)
            (occ_image, occ_mask), _ = load_with_substitute(self._load, other, len(self),
                                                            self._bad)
            crop, cmask, _ = paste_occluder(crop, cmask, occ_image, occ_mask, rng,
                                            self.occlude_scale)
        return _sample(crop, salient_box(cmask), cmask, salient=True)


class MixedDataset(Dataset):
    """Map-style dataset indexed by :class:`SampleRef` ``(source, index, seed)``."""

    def __init__(self, box: BoxCropDataset | None, salient: SalientCropDataset | None) -> None:
        self.sources = {BOX: box, SALIENT: salient}

    def __len__(self) -> int:
        return sum(len(d) for d in self.sources.values() if d is not None)

    def __getitem__(self, ref: SampleRef) -> dict[str, Any]:
        source, index, seed = ref
        ds = self.sources[source]
        if ds is None:
            raise KeyError(f"no {source} dataset")
        return ds.get(index, seed)
