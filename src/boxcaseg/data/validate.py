"""Cheap up-front checks of training data: find bad samples before hours of training do.

Training (``boxcaseg train``) screens its inputs before the first step:

* box images: readable header, upright size (EXIF applied) equal to the JSON's width/height;
* salient pairs: readable image and mask headers, equal sizes, a mask with foreground (the
  mask is decoded: a PNG header cannot tell an all-black mask).

Pixels of the box images are not decoded (a truncated file passes the header check); a sample
that turns out unreadable later is replaced in the batch with a warning (see
:mod:`boxcaseg.data.train_sets`). Bad samples are warned about by name, left out and counted;
:func:`enforce_bad_fraction` stops the run if more than ``max_bad_fraction`` of a set is bad.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from boxcaseg.errors import DataError
from boxcaseg.io import image_size, size_mismatch_message

log = logging.getLogger(__name__)


@dataclass
class ScreenResult:
    """``bad``: (what, reason) per bad file; ``total``: samples screened; ``n_bad``: samples
    lost (a bad box image loses all its boxes; default: one per entry of ``bad``)."""

    what: str
    total: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    n_bad: int | None = None

    @property
    def lost(self) -> int:
        return len(self.bad) if self.n_bad is None else self.n_bad

    @property
    def fraction(self) -> float:
        return self.lost / self.total if self.total else 0.0


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def screen_box_images(entries: list[Any], source: str) -> dict[int, str]:
    """``{image id: reason}`` of the COCO image entries whose file is missing, not an image,
    or of another size than the JSON says (header only)."""
    def check(im: Any) -> tuple[int, str | None]:
        if im.path is None:
            return im.id, f"image {im.id} ({im.file_name}): no image root given"
        try:
            disk = image_size(im.path)
        except DataError as e:
            return im.id, str(e)
        if disk != (im.width, im.height):
            return im.id, size_mismatch_message(im.path, disk, (im.width, im.height),
                                                f"{source} (image {im.id})")
        return im.id, None

    with ThreadPoolExecutor(_threads()) as pool:
        return {iid: reason for iid, reason in pool.map(check, entries) if reason}


def screen_salient(folder: Any) -> dict[int, str]:
    """``{pair index: reason}`` of the unusable pairs of a
    :class:`~boxcaseg.data.salient.SalientFolder` (unreadable, size mismatch, empty mask)."""
    def check(i: int) -> tuple[int, str | None]:
        img, mask_path = folder.image_path(i), folder.mask_path(i)
        try:
            size = image_size(img)
            mask = folder.load_mask(i)  # decodes; rejects empty / too small masks
        except DataError as e:
            return i, str(e)
        if (mask.shape[1], mask.shape[0]) != size:
            return i, (f"{img} is {size[0]}x{size[1]} but its mask {mask_path} is "
                       f"{mask.shape[1]}x{mask.shape[0]}")
        return i, None

    with ThreadPoolExecutor(_threads()) as pool:
        return {i: reason for i, reason in pool.map(check, range(len(folder))) if reason}


def enforce_bad_fraction(result: ScreenResult, max_bad_fraction: float, source: str) -> None:
    """Warn about each bad sample; DataError if none is left or too many are bad."""
    for what, reason in result.bad:
        log.warning("%s skipped: %s", what, reason)
    if not result.bad:
        return
    log.warning("%s: %d of %d %s skipped as unusable (%.1f%%; max_bad_fraction=%g)", source,
                result.lost, result.total, result.what, 100 * result.fraction,
                max_bad_fraction)
    first = f"first: {result.bad[0][1]}"
    if result.lost >= result.total:
        raise DataError(f"{source}: all {result.total} {result.what} are unusable ({first})")
    if result.fraction > max_bad_fraction:
        raise DataError(f"{source}: {result.lost} of {result.total} {result.what} are "
                        f"unusable ({100 * result.fraction:.1f}% > max_bad_fraction="
                        f"{max_bad_fraction:g}; {first}) (fix or remove them, or set "
                        f"max_bad_fraction={min(1.0, round(result.fraction + 0.005, 2)):g} to "
                        "train on the rest)")


def screen_box_dataset(box_ds: Any, max_bad_fraction: float) -> ScreenResult:
    """Screen a :class:`~boxcaseg.data.train_sets.BoxCropDataset` and leave out the boxes of
    bad images (DataError if more than ``max_bad_fraction`` of the boxes are lost)."""
    source = box_ds.coco.source
    entries = list({im.id: im for im, _ in box_ds.items}.values())
    bad = screen_box_images(entries, source)
    boxes_of: dict[int, int] = {}
    for im, _ in box_ds.items:
        boxes_of[im.id] = boxes_of.get(im.id, 0) + 1
    result = ScreenResult("boxes", len(box_ds),
                          [(f"image {iid} ({boxes_of[iid]} box(es))", r) for iid, r in bad.items()],
                          n_bad=sum(boxes_of[iid] for iid in bad))
    enforce_bad_fraction(result, max_bad_fraction, source)
    box_ds.drop_images(set(bad))
    return result


def screen_salient_dataset(sal_ds: Any, max_bad_fraction: float) -> ScreenResult:
    """Screen a :class:`~boxcaseg.data.train_sets.SalientCropDataset` and leave out its bad
    pairs (DataError if more than ``max_bad_fraction`` of them are bad)."""
    folder = sal_ds.folder
    if not hasattr(folder, "load_mask"):  # another SalientSource: nothing cheap to check
        return ScreenResult("salient pairs", len(folder))
    bad = screen_salient(folder)
    result = ScreenResult("salient pairs", len(folder),
                          [(f"salient pair {folder.names[i]}", r) for i, r in bad.items()])
    enforce_bad_fraction(result, max_bad_fraction, str(getattr(folder, "root", "salient set")))
    sal_ds.restrict(set(bad))
    return result
