"""File I/O that never leaves half-written outputs and always names the bad file.

Images are read **upright**: the EXIF orientation tag is applied (as detectron2's
``read_image``, OpenCV's ``imread``, browsers and annotation tools show a photo), so COCO
``width`` / ``height`` and boxes refer to the upright image. Every reader (labeling, both
trainings, prediction, the size checks) goes through :func:`read_image_rgb` /
:func:`image_size`, so one convention holds everywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from boxcaseg.errors import DataError, ImageReadError

EXIF_ORIENTATION = 0x0112
# orientations that swap width and height (rotations by 90 / 270 degrees, transpose, transverse)
_SWAPS_AXES = (5, 6, 7, 8)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
# what PIL raises on truncated / foreign / absurd files
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
                  Image.DecompressionBombError)

_umask_lock = threading.Lock()


def _current_umask() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The result has the mode a plain ``open(path, "w")`` would give: an overwritten file keeps
    its mode, a new one gets ``0o666 & ~umask`` (``mkstemp`` alone would leave it 0600). An OS
    error of the write (disk full, file too large) names ``path``: a write to an open file
    raises one without a file name, and "?: File too large" leaves the user guessing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, mode)
        os.close(fd)
        write(tmp_path)
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.filename is None or str(e.filename) == str(tmp_path):
            # OSError(errno, ...) gives the errno's subclass (ENOSPC, EFBIG: plain OSError)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Temp files :func:`atomic_write` left for ``path`` when its process was killed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def remove_stale_temp_files(*paths: str | os.PathLike) -> int:
    """Delete the leftovers of killed atomic writes of ``paths``; call it only while holding
    the output's :class:`~boxcaseg.runlock.OutputLock` (no live writer can own them then)."""
    n = 0
    for p in paths:
        for tmp in stale_temp_files(p):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


InputPaths = Iterable[tuple[str, "str | os.PathLike | None"]]  # (what, e.g. "--boxes", path)


def check_not_input(path: str | os.PathLike, inputs: InputPaths) -> None:
    """DataError if the output ``path`` is one of the ``inputs`` (``[("--boxes", path), ...]``,
    ``None`` paths ignored): the same file by any name (a symlink or hard link too), so a run
    never overwrites what it reads without a word."""
    path = Path(path)
    if not path.exists():
        return
    for flag, src in inputs:
        if src is None or not Path(src).exists():
            continue
        try:
            same = os.path.samefile(path, src)
        except OSError:
            same = False
        if same:
            raise DataError(f"{path}: is also the input {flag} {src}; writing it would "
                            "overwrite the input (choose another --out)")


def check_output_path(path: str | os.PathLike, kind: str = "file",
                      inputs: InputPaths | None = None) -> Path:
    """Check up front, before any long work, that ``path`` can be written as ``kind``.

    ``kind="file"``: ``path`` is not a directory and its parent is (or can be made) a writable
    directory, and it is none of ``inputs`` (:func:`check_not_input`). ``kind="dir"``:
    ``path`` is (or can be made) a writable directory, not a file. Raises DataError naming the
    path and what to do; creates missing parent folders.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    if inputs:
        check_not_input(path, inputs)
    if kind == "file" and path.is_dir():
        raise DataError(f"{path}: is a directory, but an output file is expected (give a file "
                        "name, e.g. out.json)")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise DataError(f"{path}: exists and is a file, but an output directory is expected "
                        "(choose another --out or move the file away)")
    folder = path if kind == "dir" else (path.parent if str(path.parent) else Path("."))
    # the nearest existing ancestor must be a directory we can write into
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{path}: {probe} is a file, not a folder (choose an --out that is "
                        "not inside a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"{path}: no write permission in {probe} (choose a writable --out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path}: cannot create folder {folder} ({e.strerror or e}; choose "
                        "another --out)") from e
    if kind == "file" and path.exists() and not os.access(path, os.W_OK):
        raise DataError(f"{path}: exists and is not writable (choose another --out or fix its "
                        "permissions)")
    return path


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from e


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent or unreadable)."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF blocks raise all sorts of things; treat as absent
        return 1
    return int(value) if value in _TRANSPOSE else 1


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """RGB uint8 of any PIL mode: high bit depths scaled (not clipped), alpha composited on
    white (how viewers and annotation tools show it)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(f"{path}: 32-bit integer image with values outside 0..65535 "
                                 "cannot be mapped to 8 bits (save it as an 8- or 16-bit image)")
        # 0..65535 -> 0..255 exactly (65535 / 257 = 255), rounded
        gray = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageReadError(f"{path}: floating-point image; its value range is unknown "
                             "(save it as an 8- or 16-bit image)")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Upright (EXIF orientation applied) RGB uint8 [H, W, 3] of any PIL-readable image.

    16-bit images are scaled to 8 bits, transparent pixels composited on white, CMYK / 1-bit /
    palette images converted. Raises ImageReadError naming the file if missing or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                orientation = exif_orientation(im)
                if orientation != 1:
                    im = im.transpose(_TRANSPOSE[orientation])
                return _to_rgb(im, path)
    except ImageReadError:
        raise
    except Image.DecompressionBombWarning as e:
        raise ImageReadError(f"{path}: image too large to decode safely ({e})") from e
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Upright ``(width, height)`` from the file header only (no pixel decode)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if exif_orientation(im) in _SWAPS_AXES:
                w, h = h, w
            return int(w), int(h)
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e


def size_mismatch_message(path: str | os.PathLike, disk_wh: tuple[int, int],
                          want_wh: tuple[int, int], where: str,
                          fix: str = "fix width/height there, or the file_name") -> str:
    """One line for an image whose upright size differs from its annotation's, with the EXIF
    explanation when the annotation has the stored (un-rotated) size of a rotated photo.
    ``where`` names the annotation file, ``fix`` what to do (default: COCO JSON wording)."""
    (dw, dh), (ww, wh) = disk_wh, want_wh
    msg = f"{path}: image is {dw}x{dh} on disk but {ww}x{wh} in {where}"
    try:
        with Image.open(path) as im:
            orientation = exif_orientation(im)
    except _DECODE_ERRORS:
        orientation = 1
    if orientation in _SWAPS_AXES and (dh, dw) == (ww, wh):
        return (f"{msg}: its EXIF orientation tag ({orientation}) rotates it by 90 degrees and "
                f"boxcaseg reads images upright, as they are displayed (boxes drawn on the "
                f"upright photo: set width={dw} height={dh}; boxes drawn on the stored pixels: "
                f"remove the tag, e.g. exiftool -Orientation= -n FILE)")
    if orientation != 1:
        return f"{msg} (its EXIF orientation tag is {orientation}; boxcaseg applies it)"
    return f"{msg} ({fix})"


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Single-channel uint8 [H, W] (e.g. 0/255 salient masks, VOC palette indices), upright
    like :func:`read_image_rgb`. 16-bit masks with values above 255 are scaled to 0..255."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            im.load()
            orientation = exif_orientation(im)
            if orientation != 1:
                im = im.transpose(_TRANSPOSE[orientation])
            if im.mode in ("P", "L", "1"):
                return np.asarray(im).astype(np.uint8)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im).astype(np.int64)
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise ImageReadError(f"{path}: mask values outside 0..65535")
                if arr.size and arr.max() > 255:  # a 16-bit 0/65535 mask, not label indices
                    arr = (arr * 255 + 32767) // 65535
                return arr.astype(np.uint8)
            if im.mode in ("LA", "RGBA", "PA"):
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
            return np.asarray(im.convert("L")).astype(np.uint8)
    except ImageReadError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot decode mask ({e})") from e
