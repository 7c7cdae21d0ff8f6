"""DUTS-Single: the DUTS-TR images whose salient mask holds exactly one object.

The paper keeps 7,991 of DUTS-TR's 10,553 images ("we filter out images which contain
multiple objects") but does not publish the rule. Ours, applied per image:

1. the mask is binarised (``> 127``); an all-zero mask is dropped (``"empty mask"``);
2. optionally (``fill_holes``) holes are filled first, so an object lying inside another
   object's hole merges with it (a ring alone is already one component);
3. 8-connected components (``cv2.connectedComponentsWithStats``); components smaller than
   ``min_component_fraction`` of the total foreground area are specks and ignored;
4. the image is kept iff exactly one component remains (else ``"N components"``);
5. optionally (``min_mask_fraction``) a kept mask must cover that fraction of the image.

A user-supplied ``exclude`` list (DUTS has no class labels, so e.g. the paper's 4,701-image
"no PASCAL category" subset needs a hand-made list of names) drops names with ``"excluded"``.

Output (the layout ``boxcaseg.data.salient.SalientFolder`` reads)::

    OUT/images/<name>.jpg   symlink to (or copy of) DUTS-TR-Image/<name>.jpg
    OUT/masks/<name>.png    symlink/copy of DUTS-TR-Mask/<name>.png (or, with clean_masks,
                            a 0/255 PNG with the ignored specks removed)
    OUT/manifest.json       parameters, counts, kept names, dropped names with reasons
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from boxcaseg.errors import DataError, ImageReadError
from boxcaseg.io import atomic_write, atomic_write_json, image_size, read_mask_png

log = logging.getLogger(__name__)

IMAGE_DIR, MASK_DIR = "DUTS-TR-Image", "DUTS-TR-Mask"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MANIFEST = "manifest.json"


@dataclass
class DutsSingleParams:
    min_component_fraction: float = 0.05  # speck threshold, fraction of the foreground area
    min_mask_fraction: float = 0.0        # minimum foreground / image area of a kept mask
    fill_holes: bool = False
    threshold: int = 127                  # foreground iff value > threshold
    mode: str = "link"                    # "link" (absolute symlinks) or "copy"
    clean_masks: bool = False             # write masks with the ignored specks removed


def find_duts_tree(duts: str | os.PathLike) -> tuple[Path, Path]:
    """(image_dir, mask_dir) of a DUTS-TR folder; DataError saying exactly what is missing."""
    root = Path(duts)
    if not root.is_dir():
        raise DataError(f"{root}: DUTS-TR folder not found (expected a folder holding "
                        f"{IMAGE_DIR}/ and {MASK_DIR}/)")
    if not (root / IMAGE_DIR).is_dir() and (root / "DUTS-TR" / IMAGE_DIR).is_dir():
        root = root / "DUTS-TR"  # the user pointed at the unzipped parent folder
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    missing = [str(p) for p in (image_dir, mask_dir) if not p.is_dir()]
    if missing:
        raise DataError(f"{root}: not a DUTS-TR tree, missing folder(s): {', '.join(missing)}")
    return image_dir, mask_dir


def count_components(mask: np.ndarray, min_component_fraction: float = 0.05,
                     fill_holes: bool = False, threshold: int = 127
                     ) -> tuple[int, np.ndarray]:
    """Number of significant 8-connected foreground components of a uint8 [H, W] mask.

    Returns (count, kept): ``kept`` is the bool [H, W] union of the significant components
    (area >= ``min_component_fraction`` x total foreground area).
    """
    fg = (mask > threshold).astype(np.uint8)
    if fill_holes and fg.any():
        # Holes = background pixels not reachable from the border. Pad so the border is
        # background everywhere, flood it, and everything not flooded is object.
        pad = np.pad(fg, 1)
        flood = pad.copy()
        ff_mask = np.zeros((pad.shape[0] + 2, pad.shape[1] + 2), np.uint8)
        cv2.floodFill(flood, ff_mask, (0, 0), 1)
        fg = (pad | (flood == 0)).astype(np.uint8)[1:-1, 1:-1]
    total = int(fg.sum())
    if total == 0:
        return 0, fg.astype(bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    significant = np.flatnonzero(areas >= min_component_fraction * total) + 1
    return int(significant.size), np.isin(labels, significant)


def read_exclude_list(path: str | os.PathLike) -> set[str]:
    """Image names (stems; extensions stripped) one per line; blank lines / ``#`` skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: exclude list not found")
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.add(Path(line).stem if Path(line).suffix.lower() in IMAGE_EXTS else line)
    return out


def _index(folder: Path, exts: Iterable[str]) -> dict[str, Path]:
    exts = tuple(exts)
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in exts}


def judge(image_path: Path | None, mask_path: Path | None, params: DutsSingleParams
          ) -> tuple[str | None, np.ndarray | None]:
    """(reason to drop or None to keep, the cleaned bool mask when kept)."""
    if image_path is None:
        return "missing image", None
    if mask_path is None:
        return "missing mask", None
    try:  # header only: size (upright, EXIF applied), and that it is an image
        size = image_size(image_path)
    except ImageReadError as e:
        return f"unreadable image ({e})", None
    try:
        mask = read_mask_png(mask_path)
    except ImageReadError as e:
        return f"unreadable mask ({e})", None
    if (mask.shape[1], mask.shape[0]) != size:
        return (f"size mismatch (image {size[0]}x{size[1]}, "
                f"mask {mask.shape[1]}x{mask.shape[0]})"), None
    count, kept = count_components(mask, params.min_component_fraction, params.fill_holes,
                                   params.threshold)
    if count == 0:
        return "empty mask", None
    if count != 1:
        return f"{count} components", None
    frac = float(kept.sum()) / kept.size
    if frac < params.min_mask_fraction:
        return f"mask too small ({100 * frac:.2f}% of the image)", None
    return None, kept


def _reason_kind(reason: str) -> str:
    if reason.endswith(" components"):
        return "multiple components"
    return reason.split(" (")[0]


def _clear_previous(out: Path) -> None:
    """Remove what a previous run wrote; refuse to touch folders we did not make."""
    manifest = out / MANIFEST
    dirs = [out / "images", out / "masks"]
    if not manifest.is_file():
        busy = [str(d) for d in dirs if d.is_dir() and any(d.iterdir())]
        if busy:
            raise DataError(f"{out}: {', '.join(busy)} not empty and no {MANIFEST} from a previous "
                            "`boxcaseg prepare duts-single` run; choose an empty --out")
        return
    for d in dirs:
        if d.is_dir():
            for p in d.iterdir():
                if p.is_symlink() or p.is_file():
                    p.unlink()


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "copy":
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    else:
        dst.unlink(missing_ok=True)
        dst.symlink_to(src.resolve())


def prepare_duts_single(duts: str | os.PathLike, out: str | os.PathLike,
                        params: DutsSingleParams | None = None,
                        exclude: set[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Filter DUTS-TR into ``out`` (see module docstring). Returns the manifest dict."""
    from tqdm import tqdm

    params = params or DutsSingleParams()
    if params.mode not in ("link", "copy"):
        raise DataError(f"mode must be 'link' or 'copy', got {params.mode!r}")
    image_dir, mask_dir = find_duts_tree(duts)
    images = _index(image_dir, IMAGE_EXTS)
    masks = _index(mask_dir, (".png",))
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTS)}) found")
    out = Path(out)
    _clear_previous(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    exclude = exclude or set()
    unused_excludes = sorted(exclude - set(images) - set(masks))
    if unused_excludes:
        log.warning("%d name(s) in the exclude list are not in %s (e.g. %s)",
                    len(unused_excludes), duts, unused_excludes[:3])
    kept: list[str] = []
    dropped: list[dict[str, str]] = []
    for name in tqdm(sorted(set(images) | set(masks)), desc="DUTS-Single", unit="img",
                     disable=not progress):
        if name in exclude:
            reason, clean = "excluded", None
        else:
            reason, clean = judge(images.get(name), masks.get(name), params)
        if reason is not None:
            dropped.append({"name": name, "reason": reason})
            continue
        img = images[name]
        _place(img, out / "images" / f"{name}{img.suffix.lower()}", params.mode)
        if params.clean_masks:
            png = (clean.astype(np.uint8) * 255)
            atomic_write(out / "masks" / f"{name}.png",
                         lambda tmp, a=png: Image.fromarray(a).save(tmp, format="PNG"))
        else:
            _place(masks[name], out / "masks" / f"{name}.png", params.mode)
        kept.append(name)
    by_reason = Counter(_reason_kind(d["reason"]) for d in dropped)
    manifest = {
        "dataset": "DUTS-Single",
        "source": str(Path(duts).resolve()),
        "rule": "binarise mask (>threshold), optional hole filling, 8-connected components, "
                "ignore components < min_component_fraction of the foreground, keep iff exactly "
                "one remains and it covers >= min_mask_fraction of the image",
        "params": asdict(params),
        "exclude_list_size": len(exclude),
        "counts": {"total": len(set(images) | set(masks)), "kept": len(kept),
                   "dropped": len(dropped), "by_reason": dict(sorted(by_reason.items()))},
        "kept": kept,
        "dropped": dropped,
    }
    atomic_write_json(out / MANIFEST, manifest, indent=1)
    log.info("DUTS-Single: kept %d of %d images (%s) -> %s", len(kept),
             manifest["counts"]["total"], dict(by_reason), out)
    return manifest
