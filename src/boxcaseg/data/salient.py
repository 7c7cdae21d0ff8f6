"""Salient-object folders: one RGB image and one 0/255 mask per salient object (DUTS-TR style).

Two layouts are accepted (detected from the folders present):

* ``root/images/<name>.jpg|jpeg|png|bmp`` + ``root/masks/<name>.png`` (what ``boxcaseg prepare
  duts-single`` and ``boxcaseg make-demo-data`` write);
* the original DUTS layout ``root/DUTS-TR-Image/*.jpg`` + ``root/DUTS-TR-Mask/*.png`` (also
  found one level down, ``root/DUTS-TR/...``, when the user points at the unzipped parent).

Images and masks are paired by file stem. An image without a mask or a mask without an image
is skipped with a logged warning and counted in :attr:`SalientFolder.report`. A mask pixel is
foreground iff its value is ``> 127``.

Only the file names are read at construction (cheap even for 10k images); decoding and the
per-image checks (readable, same size, non-empty mask) happen in :meth:`SalientFolder.load`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from boxcaseg.errors import DataError
from boxcaseg.io import read_image_rgb, read_mask_png
from boxcaseg.structures import mask_to_box

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MASK_EXTS = (".png",)
LAYOUTS = (("images", "masks"), ("DUTS-TR-Image", "DUTS-TR-Mask"))
MASK_THRESHOLD = 127


def find_salient_dirs(root: str | os.PathLike) -> tuple[Path, Path]:
    """``(image_dir, mask_dir)`` of a salient folder in either layout; DataError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: salient image folder not found")
    for base in (root, root / "DUTS-TR"):
        for img_name, mask_name in LAYOUTS:
            if (base / img_name).is_dir() and (base / mask_name).is_dir():
                return base / img_name, base / mask_name
    raise DataError(f"{root}: not a salient image folder; expected images/ + masks/ or "
                    f"DUTS-TR-Image/ + DUTS-TR-Mask/ inside it")


def _by_stem(folder: Path, exts: tuple[str, ...], what: str, report: Counter) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``exts`` (case-insensitive)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            continue
        if p.stem in found:
            report[f"duplicate_{what}"] += 1
            log.warning("%s: %s has the same name as %s; using the latter", p, what,
                        found[p.stem].name)
            continue
        found[p.stem] = p
    return found


class SalientFolder:
    """Pairs of (RGB image, binary mask) with exactly one salient object each.

    Args:
        root: the folder (either layout, see the module docstring).
        names: optional subset of image stems to use (e.g. a DUTS-Single manifest); names
            without a pair are warned about and counted as ``name_not_found``.
        limit: use only ``limit`` pairs: the first ones by name, or a random sample drawn
            with ``sample_seed`` when it is given (the "number of
            salient images" ablation); ``None`` = all.
        min_fg_fraction: :meth:`load` raises DataError if the mask's foreground covers less
            than this fraction of the image. An empty mask is always an error.

    Attributes:
        names: sorted image stems in use. ``report``: Counter of what was found and skipped
            (``pairs``, ``image_without_mask``, ``mask_without_image``, ``duplicate_image``,
            ``duplicate_mask``, ``name_not_found``, ``beyond_limit``).
    """

    def __init__(self, root: str | os.PathLike, *, names: Iterable[str] | None = None,
                 limit: int | None = None, min_fg_fraction: float = 0.0,
                 sample_seed: int | None = None) -> None:
        if limit is not None and int(limit) < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        if not 0.0 <= float(min_fg_fraction) < 1.0:
            raise ValueError(f"min_fg_fraction must lie in [0, 1), got {min_fg_fraction}")
        self.root = Path(root)
        self.min_fg_fraction = float(min_fg_fraction)
        self.report: Counter = Counter()
        self.image_dir, self.mask_dir = find_salient_dirs(self.root)
        images = _by_stem(self.image_dir, IMAGE_EXTS, "image", self.report)
        masks = _by_stem(self.mask_dir, MASK_EXTS, "mask", self.report)

        for stem in sorted(images.keys() - masks.keys()):
            self.report["image_without_mask"] += 1
            log.warning("%s: no mask %s/%s.png, image skipped", images[stem], self.mask_dir, stem)
        for stem in sorted(masks.keys() - images.keys()):
            self.report["mask_without_image"] += 1
            log.warning("%s: no image named %s in %s, mask skipped", masks[stem], stem,
                        self.image_dir)
        stems = sorted(images.keys() & masks.keys())

        if names is not None:
            wanted = sorted(set(str(n) for n in names))
            available = set(stems)
            missing = [n for n in wanted if n not in available]
            if missing:
                self.report["name_not_found"] += len(missing)
                log.warning("%s: %d requested name(s) have no image+mask pair, e.g. %s",
                            self.root, len(missing), missing[:5])
            stems = [n for n in wanted if n in available]
        if limit is not None and len(stems) > int(limit):
            self.report["beyond_limit"] = len(stems) - int(limit)
            if sample_seed is None:
                stems = stems[: int(limit)]
            else:  # a seeded random subset (sorted again: the order never depends on the draw)
                pick = np.random.default_rng(sample_seed).choice(len(stems), int(limit),
                                                                 replace=False)
                stems = [stems[i] for i in sorted(pick)]
        if not stems:
            raise DataError(f"{self.root}: no image/mask pairs found (images in {self.image_dir}, "
                            f"masks in {self.mask_dir}; {dict(self.report)})")
        self.names: list[str] = stems
        self._images = [images[s] for s in stems]
        self._masks = [masks[s] for s in stems]
        self.report["pairs"] = len(stems)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"SalientFolder({str(self.root)!r}, {len(self)} pairs)"

    def image_path(self, i: int) -> Path:
        return self._images[i]

    def mask_path(self, i: int) -> Path:
        return self._masks[i]

    def load_mask(self, i: int) -> np.ndarray:
        """bool [H, W] foreground of pair ``i``; DataError naming the file if it is empty or
        below ``min_fg_fraction``; ImageReadError if it cannot be decoded."""
        path = self._masks[i]
        raw = read_mask_png(path)
        if raw.ndim != 2:  # defensive: read_mask_png converts to one channel
            raise DataError(f"{path}: mask must have one channel, got shape {raw.shape}")
        mask = raw > MASK_THRESHOLD
        fg = int(mask.sum())
        if fg == 0:
            raise DataError(f"{path}: empty salient mask (no pixel > {MASK_THRESHOLD}), "
                            "a salient image must show one object")
        frac = fg / mask.size
        if frac < self.min_fg_fraction:
            raise DataError(f"{path}: foreground covers {frac:.4f} of the image, below "
                            f"min_fg_fraction={self.min_fg_fraction}")
        return mask

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb uint8 [H, W, 3], mask bool [H, W])`` of pair ``i``.

        Raises ImageReadError naming the file if either cannot be decoded, DataError naming
        both files if their sizes differ, DataError if the mask is empty.
        """
        image = read_image_rgb(self._images[i])
        mask = self.load_mask(i)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{self._images[i]} is {image.shape[1]}x{image.shape[0]} but its mask "
                            f"{self._masks[i]} is {mask.shape[1]}x{mask.shape[0]}")
        return image, mask

    def box(self, i: int) -> tuple[int, int, int, int]:
        """Tight integer XYXY box (pixel edges) of the mask of pair ``i`` (reads the mask only)."""
        box = mask_to_box(self.load_mask(i))
        assert box is not None  # load_mask rejects empty masks
        return box
