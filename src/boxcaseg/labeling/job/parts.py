"""Part files: where a labeling job keeps its records until they are merged.

A part is JSON lines: a header (method, config, the mask source's settings, their
fingerprint, the input, shard K of N), one record per image, and an ``{"end": ...}`` line once
complete. A record is ``{"image_id", "input", "error", "fallbacks", "anns": [[annotation id,
fields], ...]}``; ``input`` is the hash of that image's entry and annotations as given
(``BoxInput.image_hash``).

``--resume`` binds only what changes the masks: the method, the mask settings of the config
(all but ``LabelConfig``'s runtime keys: device, batch size, chunking, jit, precision) and the
source's settings (the checkpoint's weights). A finished record is reused while its image's
``input`` hash is unchanged, from any part or progress file of the same output, whatever the
number of processes or shards that wrote it; images whose annotations changed are labeled
again.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from boxcaseg.config import to_dict
from boxcaseg.errors import ConfigError, DataError
from boxcaseg.labeling.config import RUNTIME_KEYS, LabelConfig, mask_settings
from boxcaseg.labeling.job.inputs import BoxInput
from boxcaseg.runlock import config_fingerprint

log = logging.getLogger(__name__)

PART_VERSION = 3
SIDECAR_SUFFIX = ".partial.jsonl"
_PART_RE = re.compile(r"\.part-(\d+)-of-(\d+)\.jsonl")


def sidecar_path(out: str | os.PathLike) -> Path:
    """The progress file of ``out`` (removed when the output is complete)."""
    return Path(str(out) + SIDECAR_SUFFIX)


def part_path(out: str | os.PathLike, shard: int, num_shards: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.part-{shard:05d}-of-{num_shards:05d}.jsonl")


def layout_files(out: Path) -> list[Path]:
    """Every progress file and part that runs of any number of processes left for ``out``."""
    found = [sidecar_path(out)] if sidecar_path(out).exists() else []
    for p in sorted(out.parent.glob(out.name + ".part-*-of-*.jsonl*")):
        if _PART_RE.search(p.name[len(out.name):]) and (
                p.name.endswith(".jsonl") or p.name.endswith(SIDECAR_SUFFIX)):
            found.append(p)
    return found


def assign_shards(weights: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index [0, N) of every item: heaviest first, each to the least loaded shard.

    Deterministic: ties in weight go by position, ties in load by (fewest items, lowest shard).
    """
    weights = np.asarray(weights, dtype=np.int64)
    shard = np.zeros(len(weights), dtype=np.int64)
    heap = [(0, 0, k) for k in range(num_shards)]
    for i in np.lexsort((np.arange(len(weights)), -weights)):
        load, count, k = heapq.heappop(heap)
        shard[i] = k
        heapq.heappush(heap, (load + int(weights[i]), count + 1, k))
    return shard


# --------------------------------------------------------------------------------------------
# headers


def make_header(boxes: BoxInput, method: str, cfg: LabelConfig, source: dict[str, Any],
                shard: int, num_shards: int) -> dict[str, Any]:
    config = to_dict(cfg)
    bound = mask_settings(cfg)
    binding = {"method": method, "config": {k: v for k, v in config.items() if k in bound},
               "source": source}
    return {"part_version": PART_VERSION, "method": method, "config": config, "source": source,
            "config_fingerprint": config_fingerprint(binding),
            "input": {"source": boxes.source, "fingerprint": boxes.fingerprint,
                      "images": boxes.num_images, "annotations": len(boxes.ann_ids)},
            "shard": shard, "num_shards": num_shards}


def check_header(found: dict[str, Any], want: dict[str, Any], path: Path) -> None:
    """Refuse to reuse records made differently; the message says what differs."""
    again = "rerun without --resume to start over"
    if found.get("part_version") != PART_VERSION:
        raise ConfigError(f"{path}: written by a different boxcaseg version (part format "
                          f"{found.get('part_version')}); {again}")
    if found["method"] != want["method"]:
        raise ConfigError(f"{path}: was written with a different method ({found['method']}, "
                          f"now {want['method']}); {again}")
    if found["config_fingerprint"] != want["config_fingerprint"]:
        a, b = found["config"], want["config"]
        diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                if k not in RUNTIME_KEYS and a.get(k) != b.get(k)]
        if found.get("source") != want.get("source"):
            diff.append("the model: its weights differ from the earlier run's checkpoint")
        raise ConfigError(f"{path}: was written with settings that change the masks "
                          f"({', '.join(diff)}); restore them, or {again}")


def read_part_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        header = json.loads(first)["header"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a boxcaseg label part (unreadable header: {e}); delete "
                        "it or run without --resume") from e
    if not isinstance(header, dict) or "num_shards" not in header:
        raise DataError(f"{path}: not a boxcaseg label part (header has no shard info)")
    return header


def scan(path: Path, tolerate_torn: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, record) of every line after the header, the end marker included.

    A torn last line (an interrupted write) is skipped with a warning when ``tolerate_torn``
    (resume), an error otherwise (merge: the part is incomplete)."""
    with open(path, "rb") as f:
        f.readline()
        while True:
            offset = f.tell()
            line = f.readline()
            if not line:
                return
            if not line.strip():
                continue
            try:
                yield offset, json.loads(line)
            except ValueError:
                if tolerate_torn and not line.endswith(b"\n") and not f.read(1).strip():
                    log.warning("%s: ignoring a torn last line (interrupted write)", path)
                    return
                raise DataError(f"{path}: corrupt record at byte {offset} (torn write of an "
                                "interrupted run?); delete it or run without --resume") from None


def collect_finished(files: Sequence[Path], want: dict[str, Any], boxes: BoxInput
                     ) -> tuple[dict[int, tuple[Path, int]], dict[str, Any] | None, int]:
    """Records that ``--resume`` may reuse, by image index: (file, byte offset). Also the
    header of the first file (its config is kept: the output records the settings a run was
    started with) and how many records were dropped because their image's input changed."""
    found: dict[int, tuple[Path, int]] = {}
    first: dict[str, Any] | None = None
    changed = 0
    for path in files:
        header = read_part_header(path)
        check_header(header, want, path)
        first = first or header
        for offset, rec in scan(path, tolerate_torn=True):
            if "end" in rec:
                continue
            i = boxes.image_index(int(rec["image_id"]))
            if i < 0 or rec.get("input") != boxes.image_hash(i):
                changed += 1
                continue
            found.setdefault(i, (path, offset))
    return found, first, changed


def copy_records(found: dict[int, tuple[Path, int]], images: Sequence[int], dest: Path,
                 header: dict[str, Any]) -> list[int]:
    """Write ``header`` and the found records of ``images`` (in that order) to ``dest``;
    returns the image indices copied."""
    handles: dict[Path, Any] = {}
    copied = []
    try:
        with open(dest, "wb") as out:
            out.write((json.dumps({"header": header}) + "\n").encode("utf-8"))
            for i in images:
                hit = found.get(int(i))
                if hit is None:
                    continue
                f = handles.get(hit[0]) or handles.setdefault(hit[0], open(hit[0], "rb"))
                f.seek(hit[1])
                line = f.readline()
                out.write(line if line.endswith(b"\n") else line + b"\n")
                copied.append(int(i))
            out.flush()
            os.fsync(out.fileno())
    finally:
        for f in handles.values():
            f.close()
    return copied


class PartWriter:
    """Appends records to a part's progress file, flushed and fsynced per chunk."""

    def __init__(self, path: Path, header: dict[str, Any], append: bool):
        self.path = path
        if append:
            self.f = open(path, "a", encoding="utf-8")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "w", encoding="utf-8")
            self.f.write(json.dumps({"header": header}) + "\n")
            self._sync()

    def write(self, lines: list[str]) -> None:
        try:
            self.f.write("".join(line + "\n" for line in lines))
            self._sync()
        except OSError as e:  # a full disk or a size limit: say which file
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def finish(self, records: int) -> None:
        self.write([json.dumps({"end": {"records": records}})])

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
