"""What every training command does around its loop so a run is never mixed with another.

* :func:`output_guard`: checks ``out_dir`` up front (a writable folder, not a file), takes the
  :class:`~boxcaseg.runlock.OutputLock` on it (a second run on the same ``--out`` is refused,
  naming the holder's pid and host) and removes temp files a killed run's atomic writes left
  behind (a torn ``.last.pt.*.tmp`` of a 180 MB checkpoint would otherwise stay forever).
* :func:`check_resume`: ``--resume`` binds to the exact input: the checkpoint stores content
  fingerprints of the input files and the training config; a resumed run whose inputs or
  settings differ is refused with a message naming what changed. Only settings that cannot
  change the result (:data:`RUNTIME_KEYS`: workers, device, logging cadence, caches) may differ.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from boxcaseg.errors import ConfigError
from boxcaseg.io import check_output_path, remove_stale_temp_files
from boxcaseg.runlock import OutputLock, config_fingerprint, file_fingerprint

log = logging.getLogger(__name__)

# settings that change how fast or where a run goes, not what it computes
RUNTIME_KEYS = frozenset({"out_dir", "num_workers", "device", "log_every", "checkpoint_every",
                          "cache_images_mb"})
# the files a training run writes into out_dir atomically (their temp files may be stale)
OUTPUT_FILES = ("last.pt", "final.pt", "config.yaml", "metrics.json", "val_results.json")


@contextlib.contextmanager
def output_guard(out_dir: str | os.PathLike, command: str, is_main: bool = True
                 ) -> Iterator[Path]:
    """``with output_guard(cfg.out_dir, "train", info.is_main): ...``: see the module doc.

    Only the main process locks (under torchrun every rank of one run shares ``out_dir``).
    """
    out = check_output_path(out_dir, kind="dir")
    if not is_main:
        yield out
        return
    with OutputLock(out.resolve(), command):
        removed = remove_stale_temp_files(*(out / name for name in OUTPUT_FILES))
        if removed:
            log.warning("%s: removed %d temp file(s) left by an interrupted write", out, removed)
        yield out


def salient_listing(folder: Any) -> list[list[Any]]:
    """What identifies a salient set without reading every pixel: the pairs in use, with
    their file names and byte sizes (``folder``: a
    :class:`~boxcaseg.data.salient.SalientFolder`). A same-size edit of a file goes unseen:
    hashing every salient image would cost minutes on DUTS-TR."""
    rows = []
    for i, name in enumerate(folder.names):
        img, mask = Path(folder.image_path(i)), Path(folder.mask_path(i))
        rows.append([name, img.name, img.stat().st_size, mask.name, mask.stat().st_size])
    return rows


def input_fingerprints(files: Mapping[str, str | os.PathLike | None],
                       listings: Mapping[str, Any] | None = None) -> dict[str, str | None]:
    """``{name: "sha256:..."}`` of input files (content) and listings (JSON-able values)."""
    out: dict[str, str | None] = {}
    for name, path in files.items():
        out[name] = file_fingerprint(path) if path else None
    for name, value in (listings or {}).items():
        out[name] = config_fingerprint(value) if value is not None else None
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any],
                   ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """Dotted keys whose values differ, as ``key: saved -> now``. Runtime keys are ignored, and
    so are keys the saved config lacks (fields added by a later boxcaseg version)."""
    a, b = _flatten(saved), _flatten(now)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or key not in a:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, tuple):
            va = list(va)
        if isinstance(vb, tuple):
            vb = list(vb)
        if va != vb:
            changes.append(f"{key}: {va!r} -> {vb!r}")
    return changes


def check_resume(checkpoint: str | os.PathLike, saved_config: Mapping[str, Any] | None,
                 config: Mapping[str, Any], saved_inputs: Mapping[str, Any] | None,
                 inputs: Mapping[str, Any], ignore: frozenset[str] = RUNTIME_KEYS) -> None:
    """Refuse (ConfigError) to resume ``checkpoint`` if its config or inputs differ from now."""
    problems: list[str] = []
    if saved_inputs is None:
        log.warning("%s: written before boxcaseg recorded input fingerprints; cannot check "
                    "that the input files are unchanged", checkpoint)
    else:
        for name in sorted(set(saved_inputs) | set(inputs)):
            if saved_inputs.get(name) != inputs.get(name):
                problems.append(f"{name} changed (content hash differs)")
    if saved_config is not None:
        changes = config_changes(saved_config, config, ignore)
        if changes:
            shown = "; ".join(changes[:5]) + ("; ..." if len(changes) > 5 else "")
            problems.append(f"config changed ({shown})")
    if problems:
        raise ConfigError(f"{checkpoint}: cannot resume: {', '.join(problems)} since that run "
                          "(resume with the same inputs and settings, or start a new run with "
                          "another --out)")
