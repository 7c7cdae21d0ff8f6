"""The labeling job: a whole box dataset into one output file, resumable, in one process, as
torchrun ranks, or as one shard of a job array.

Layouts of one ``--out FILE``:

* one process: progress in ``FILE.partial.jsonl``; when done it is merged into ``FILE`` and
  removed.
* ``torchrun --nproc_per_node=N ...``: rank ``k`` labels shard ``k`` of ``N`` into
  ``FILE.part-0000k-of-0000N.jsonl`` (progress in ``<part>.partial.jsonl``, renamed to the part
  when complete); after a barrier rank 0 merges the parts into ``FILE`` and removes them.
* ``--shard K/N`` (job arrays, no process group): ``FILE`` *is* part ``K`` of ``N``;
  ``boxcaseg merge-labels PART... --out OUT`` joins them with the same checks.

Shards are disjoint and deterministic, balanced by box count (``parts.assign_shards``).
``--resume`` reuses every finished record of ``FILE`` that is still valid, whichever layout
wrote it (``parts`` says what binds a record); the rest is labeled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from boxcaseg.engine.distributed import DistInfo, all_true, barrier
from boxcaseg.errors import BoxcasegError, ConfigError, DataError
from boxcaseg.io import remove_stale_temp_files
from boxcaseg.labeling.config import LabelConfig, resolve_crop_size
from boxcaseg.labeling.job.inputs import BoxInput
from boxcaseg.labeling.job.merge import all_failed_error, index_parts, write_output
from boxcaseg.labeling.job.parts import (PartWriter, assign_shards, collect_finished,
                                         copy_records, layout_files, make_header, part_path,
                                         sidecar_path)
from boxcaseg.labeling.job.stream import label_tasks
from boxcaseg.labeling.job.summary import LabelSummary
from boxcaseg.labeling.job.writers import FORMATS
from boxcaseg.labeling.labeler import BoxLabeler
from boxcaseg.labeling.sources import Boxcaseg
from boxcaseg.runlock import OutputLock, OutputLockedError

log = logging.getLogger(__name__)

DIST_TIMEOUT = timedelta(hours=24)  # ranks done early wait this long for the slowest rank


def label_dataset(coco: Any, out: str | os.PathLike, method: str = "boxcaseg",
                  cfg: LabelConfig | None = None, model: Any = None, resume: bool = False,
                  progress: bool = True, fmt: str = "dataset", **job: Any) -> LabelSummary:
    """Label every non-crowd box of ``coco`` (``CocoData``) into ``out``; returns the summary.

    ``method``: ``"boxcaseg"`` (``model``: a BoxCaseg nn.Module or a ``BoxcasegPredictor``),
    ``"grabcut"``, ``"box"``, or any method whose ``MaskSource`` is given as ``model``;
    ``fmt``: ``dataset``, ``results`` or ``jsonl``; further keywords (``shard``, ``dist``)
    go to :func:`label_job`."""
    cfg = cfg or LabelConfig()
    return label_job(BoxInput.from_coco(coco, keep_gt_masks=cfg.keep_gt_masks), out, method,
                     cfg, model=model, resume=resume, progress=progress, fmt=fmt, **job)


def label_job(boxes: BoxInput, out: str | os.PathLike, method: str, cfg: LabelConfig,
              model: Any = None, resume: bool = False, progress: bool = True,
              fmt: str = "dataset", shard: tuple[int, int] | None = None,
              dist: DistInfo | None = None) -> LabelSummary:
    """Label ``boxes`` into ``out``: one process, a torchrun rank (``dist``), or one
    ``shard=(K, N)`` of a job array (then ``out`` is the part file). See the module doc."""
    cfg.validate()
    info = dist or DistInfo()
    if method == "boxcaseg":  # record the crop actually used (the checkpoint's by default)
        cfg = resolve_crop_size(cfg, getattr(model, "model", model))
    if boxes.keep_gt_masks != cfg.keep_gt_masks:
        raise ConfigError(f"the input was read with keep_gt_masks={boxes.keep_gt_masks}, the "
                          f"config says {cfg.keep_gt_masks}; build it with "
                          "BoxInput.from_coco(coco, keep_gt_masks=cfg.keep_gt_masks)")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    out = Path(out)
    if shard is not None and info.distributed:
        raise ConfigError("--shard K/N is for job arrays without a process group; under "
                          "torchrun every rank takes its shard by itself (drop --shard)")
    if shard is not None:
        k, n = shard
        if not 0 <= k < n:
            raise ConfigError(f"--shard {k}/{n}: K must be in [0, N)")
        mode, part = "shard", out
    elif info.distributed:
        k, n, mode = info.rank, info.world_size, "ranks"
        part = part_path(out, k, n)
    else:
        k, n, mode, part = 0, 1, "single", None

    locks: list[OutputLock] = []
    try:
        _take_locks(locks, out, part, mode, info)
        if mode != "shard" and info.is_main:  # leftovers of a write of OUT killed midway
            remove_stale_temp_files(out)
        t0 = time.perf_counter()
        # each rank drives its own device; the header keeps the config as the user wrote it
        run_cfg = replace(cfg, device=str(info.device)) if info.distributed else cfg
        labeler = BoxLabeler.for_method(method, model, run_cfg)
        setup_seconds = time.perf_counter() - t0
        header = make_header(boxes, method, cfg, labeler.source.settings(), k, n)
        progress_file = sidecar_path(part if part is not None else out)
        summary = _label_part(boxes, out, progress_file, part, header, labeler, resume,
                              progress, info, mode)
        summary.setup_seconds = setup_seconds
        if mode == "shard":
            return summary
        return _merge(boxes, out, n, mode, fmt, summary, info)
    finally:
        for lock in reversed(locks):
            lock.release()


def _take_locks(locks: list[OutputLock], out: Path, part: Path | None, mode: str,
                info: DistInfo) -> None:
    if mode == "ranks":
        # rank 0 holds the output; nobody touches a part before it has it
        error: BoxcasegError | None = None
        if info.is_main:
            try:
                locks.append(OutputLock(out, "boxcaseg label"))
                locks[-1].acquire()
            except OutputLockedError as e:
                locks.pop()
                error = e
        if not all_true(error is None, info):
            raise error or DataError(f"{out}: in use by another run (rank 0 could not take "
                                     "its lock; see rank 0's message)")
        locks.append(OutputLock(part, "boxcaseg label"))
    else:
        locks.append(OutputLock(out, "boxcaseg label"))
    locks[-1].acquire()


def _merge(boxes: BoxInput, out: Path, n: int, mode: str, fmt: str, summary: LabelSummary,
           info: DistInfo) -> LabelSummary:
    barrier(info)
    error: BoxcasegError | None = None
    merged: LabelSummary | None = None
    if info.is_main:
        parts = [part_path(out, j, n) for j in range(n)] if mode == "ranks" \
            else [sidecar_path(out)]
        try:
            t0 = time.perf_counter()
            index = index_parts(parts, boxes)
            if index.all_failed:
                for p in parts:  # a rerun must retry them, not resume the failures
                    p.unlink(missing_ok=True)
                raise all_failed_error(index)
            write_output(index, out, fmt)
            for p in parts:
                p.unlink(missing_ok=True)
            merged = index.summary
            log.info("merged %d part(s) into %s in %.1f s", len(parts), out,
                     time.perf_counter() - t0)
        except BoxcasegError as e:
            error = e
    if not all_true(error is None, info):
        raise error or DataError(f"{out}: rank 0 could not merge the parts (see its message)")
    if merged is None:
        return summary
    for name in ("images_resumed", "instances_this_run", "seconds", "setup_seconds"):
        setattr(merged, name, getattr(summary, name))
    return merged


def _label_part(boxes: BoxInput, out: Path, progress_file: Path, part: Path | None,
                header: dict[str, Any], labeler: BoxLabeler, resume: bool, progress: bool,
                info: DistInfo, mode: str) -> LabelSummary:
    """Label this shard's images into ``progress_file``; rename it to ``part`` when complete
    (``part`` None: the one-process layout, merged from the progress file)."""
    k, n = header["shard"], header["num_shards"]
    summary = LabelSummary(method=header["method"])
    shard_images = np.flatnonzero(assign_shards(boxes.boxes_per_image(), n) == k)
    summary.images = len(shard_images)

    # job arrays own only their part; the other layouts share the output's files
    old = ([p for p in (out, progress_file) if p.exists()] if mode == "shard"
           else layout_files(out))
    staged = progress_file.with_name(progress_file.name + ".resume")
    done: list[int] = []
    if resume and old:
        found, first, changed = collect_finished(old, header, boxes)
        if first is not None:  # the output records the settings the labels were started with
            header = {**header, "config": first["config"]}
        done = copy_records(found, shard_images, staged, header)
        if changed:
            log.warning("--resume: %d finished record(s) belong to images whose annotations "
                        "changed (or left the input); labeling those images again", changed)
        log.info("resuming: %d of %d images already labeled (from %d file(s))", len(done),
                 len(shard_images), len(old))
    elif resume:
        log.warning("--resume: no progress file for %s (nothing to resume); labeling from the "
                    "first image", out)
    elif old and info.is_main:
        log.warning("%s: left by an earlier run; starting over (use --resume to continue)",
                    ", ".join(map(str, old[:3])))
    barrier(info)  # every rank has read what it reuses before anything is removed
    if info.is_main or mode == "shard":
        for p in old:
            if p != progress_file and (mode != "ranks" or not _is_progress_of(p, out, n)):
                p.unlink(missing_ok=True)
    if resume and old:
        os.replace(staged, progress_file)
    barrier(info)
    summary.images_resumed = len(done)

    if isinstance(labeler.source, Boxcaseg):
        pred = labeler.source.predictor
        log.info("BoxCaseg predictor on %s, TorchScript %s", pred.device,
                 "on" if pred.jit_used else "off")

    done_set = set(done)
    todo = [int(i) for i in shard_images if int(i) not in done_set]
    writer = PartWriter(progress_file, header, append=resume and bool(old))
    records = len(done)
    segmentation = labeler.config.segmentation
    desc = f"label {header['method']}" + (f" [{k}/{n}]" if n > 1 else "")
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(shard_images), initial=len(done), unit="img", desc=desc,
                  disable=not progress, position=k if n > 1 else None) as bar:
            for chunk in label_tasks(labeler, (boxes.task(i) for i in todo)):
                writer.write([json.dumps(r.record(segmentation)) for r in chunk])
                records += len(chunk)
                summary.instances_this_run += sum(len(r.task.ann_ids) for r in chunk
                                                  if r.labels is not None)
                bar.update(len(chunk))
        writer.finish(records)
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - t0
    log.info("shard %d/%d: labeled %d instances in %.2f s (%d images resumed)", k, n,
             summary.instances_this_run, summary.seconds, summary.images_resumed)
    if part is not None:
        os.replace(progress_file, part)
    return summary


def _is_progress_of(p: Path, out: Path, n: int) -> bool:
    """True iff ``p`` is the progress file of one of this run's ``n`` ranks (each rank
    replaces its own)."""
    return any(p == sidecar_path(part_path(out, j, n)) for j in range(n))
