"""The one training loop of ``boxcaseg train`` and ``boxcaseg train-maskrcnn``.

In the spirit of torchvision's references/detection engine and detectron2's ``SimpleTrainer``:
:class:`TrainLoop` owns everything the two trainers must do alike, a subclass supplies what
differs (the batches, the step, what a checkpoint holds, what is logged).

The loop owns:

* resume from ``out_dir/last.pt`` (model, optimizer, scheduler, scaler, RNG states, the step
  count), after the subclass's :meth:`~TrainLoop.check_checkpoint` accepted that file;
* ``last.pt`` every ``checkpoint_every`` steps and at the end, ``final.pt`` at the end, each
  written atomically and only if every weight is finite (all ranks check and raise together,
  so a diverged state never replaces the last good one);
* the divergence error: a :class:`~boxcaseg.errors.TrainingDivergedError` raised by the step
  (see :func:`optimizer_step`) is re-raised naming the step and the last good checkpoint;
* ``config.yaml``, TensorBoard scalars under ``tb/``, the progress bar, the DDP wrap.

A step is ``run_step(batch) -> {term: float}`` and performs the update itself, normally through
:func:`optimizer_step` (non-finite loss check on every rank before any weight changes, then
the AMP-scaled backward / optimizer / scheduler step).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from boxcaseg.config import dump_yaml
from boxcaseg.engine.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from boxcaseg.engine.distributed import DistInfo, all_finite, cleanup, init_distributed, wrap_ddp
from boxcaseg.engine.run_guard import output_guard
from boxcaseg.errors import ConfigError, TrainingDivergedError
from boxcaseg.io import atomic_write_text

log = logging.getLogger(__name__)

LAST, FINAL = "last.pt", "final.pt"


@contextlib.contextmanager
def training_session(device: str, out_dir: str, command: str, resume: bool
                     ) -> Iterator[DistInfo]:
    """Join the process group, lock ``out_dir`` and refuse to overwrite a run by accident."""
    info = init_distributed(device)
    try:
        with run_output(info, out_dir, command, resume):
            yield info
    finally:
        cleanup(info)


@contextlib.contextmanager
def run_output(info: DistInfo, out_dir: str, command: str, resume: bool) -> Iterator[None]:
    """Lock ``out_dir`` and refuse to overwrite a run by accident (in a joined process group:
    several runs of one session, e.g. self-training rounds, share it)."""
    with output_guard(out_dir, command, info.is_main):
        last = Path(out_dir) / LAST
        if last.exists() and not resume:
            raise ConfigError(f"{last} exists: pass --resume to continue that run, or "
                              "choose another output directory")
        yield


def format_terms(terms: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in terms.items())


def params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def optimizer_step(losses: dict[str, torch.Tensor], loss: torch.Tensor,
                   optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler,
                   scaler: torch.amp.GradScaler, info: DistInfo) -> dict[str, float]:
    """Backward ``loss`` and step, unless a term of ``losses`` is NaN/inf on any rank: then
    :class:`TrainingDivergedError` on every rank *before* the update, so the weights stay
    those of the last good step. Returns ``losses`` as floats."""
    names = list(losses)
    # one host sync per step for logging and the NaN check together
    terms = dict(zip(names, torch.stack([losses[k].detach().float() for k in names]).tolist()))
    if not all_finite(all(math.isfinite(v) for v in terms.values()), info):
        raise TrainingDivergedError(f"non-finite loss ({format_terms(terms)})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return terms


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard not installed: train anyway
        log.warning("TensorBoard logging disabled (%s)", e)
        return None
    return SummaryWriter(str(path))


class TrainLoop(ABC):
    """Iterate ``run_step`` from the resumed step to ``total_steps``; see the module doc."""

    #: the checkpoint key counting optimizer steps, and the word messages count in
    unit = "step"
    #: the progress bar's label
    desc = "train"

    def __init__(self, *, config: Any, info: DistInfo, model: nn.Module,
                 optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 total_steps: int, out_dir: str, log_every: int, checkpoint_every: int,
                 progress: bool = True) -> None:
        self.config, self.info, self.model = config, info, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.total, self.log_every, self.checkpoint_every = (total_steps, log_every,
                                                             checkpoint_every)
        self.out, self.progress = Path(out_dir), progress
        self.last, self.final = self.out / LAST, self.out / FINAL
        self.net: nn.Module = model  # the DDP wrapper under torchrun, once run() wrapped it
        self.step = 0
        self.steps_run = 0  # by this call, not before a resume
        self.seconds_per_step: float | None = None

    # ------------------------------------------------------------ what a model supplies
    @abstractmethod
    def batches(self, start: int) -> Iterator[Any]:
        """The batches of steps ``start + 1, start + 2, ...``, at least up to ``total_steps``
        (endless is fine: the loop stops drawing there and closes the generator)."""

    @abstractmethod
    def run_step(self, batch: Any) -> dict[str, float]:
        """One update on ``batch`` (through ``self.net``); returns the loss terms."""

    @abstractmethod
    def checkpoint_state(self, final: bool) -> dict[str, Any]:
        """What ``last.pt`` (``final=False``: resumable) or ``final.pt`` holds at ``self.step``."""

    def check_checkpoint(self, ckpt: dict[str, Any]) -> None:
        """Raise if ``ckpt`` (read from ``self.last``) cannot be resumed by this run."""

    def before_train(self) -> None:
        """After resuming and wrapping, before the first step."""

    def postfix(self, terms: dict[str, float], lr: float) -> str:
        return format_terms(terms)

    def scalars(self, terms: dict[str, float], lr: float, steps_per_s: float
                ) -> dict[str, float]:
        """TensorBoard tag -> value at a logging step."""
        return {**{f"loss/{k}": v for k, v in terms.items()}, "lr": lr}

    def divergence_hint(self) -> str:
        """Appended to the non-finite-loss message: what to change."""
        return ""

    # ------------------------------------------------------------ the loop
    def resume(self) -> None:
        if not self.last.exists():
            log.warning("--resume: nothing to resume (%s not found); starting a fresh run",
                        self.last)
            return
        ckpt = load_checkpoint(self.last)
        self.check_checkpoint(ckpt)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):  # empty when saved without AMP (e.g. a CPU run resumed on GPU)
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.step = int(ckpt[self.unit])
        log.info("resumed from %s at %s %d", self.last, self.unit, self.step)

    def save(self, path: Path, final: bool = False) -> None:
        # a diverged state is never written: all ranks check, all ranks raise together
        if not all_finite(params_finite(self.model), self.info):
            raise TrainingDivergedError(
                f"training diverged at {self.unit} {self.step}: weights contain NaN/inf after "
                f"the update (lr={self.scheduler.get_last_lr()[0]:.3g}); no checkpoint written")
        if self.info.is_main:
            save_checkpoint(path, self.checkpoint_state(final))

    def run(self, resume: bool = False) -> Path:
        """Train to ``total_steps``; returns the path of ``final.pt`` (written by rank 0)."""
        if resume:
            self.resume()
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", dump_yaml(self.config))
        self.net = wrap_ddp(self.model, self.info)
        self.before_train()
        writer = (_tensorboard(self.out / "tb") if self.info.is_main and self.step < self.total
                  else None)
        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, dynamic_ncols=True,
                   disable=not (self.info.is_main and self.progress))
        self.net.train()
        try:
            with contextlib.closing(self.batches(self.step)) as batches:
                self._iterate(batches, bar, writer)
            self.save(self.final, final=True)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.final

    def _iterate(self, batches: Iterator[Any], bar: tqdm, writer: Any) -> None:
        t0 = t_log = time.perf_counter()
        n_log = 0
        while self.step < self.total:
            batch = next(batches)
            try:
                terms = self.run_step(batch)
            except TrainingDivergedError as e:
                raise TrainingDivergedError(
                    f"training diverged at {self.unit} {self.step + 1}: {e}"
                    f"{self.divergence_hint()}; last good checkpoint: "
                    f"{self.last if self.last.exists() else 'none'}") from None
            self.step += 1
            self.steps_run += 1
            n_log += 1
            lr = self.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix_str(self.postfix(terms, lr), refresh=False)
            if self.step % self.log_every == 0 or self.step == self.total:
                log.debug("%s %d: %s", self.unit, self.step, format_terms(terms))
                now = time.perf_counter()
                if writer is not None:
                    for tag, value in self.scalars(terms, lr, n_log / (now - t_log)).items():
                        writer.add_scalar(tag, value, self.step)
                t_log, n_log = now, 0
            if self.step % self.checkpoint_every == 0 or self.step == self.total:
                self.save(self.last)
        if self.steps_run:
            self.seconds_per_step = (time.perf_counter() - t0) / self.steps_run
