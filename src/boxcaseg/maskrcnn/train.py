"""Training of the Proxy Mask R-CNN: its step on the shared :mod:`boxcaseg.engine.loop`.

* SGD (momentum, weight decay) with linear warm-up from ``warmup_factor`` over
  ``warmup_iters``, then lr x0.1 at each of ``steps`` (iterations), stepped per iteration;
* AMP on CUDA (``amp``), DDP under ``torchrun`` (``batch_size`` is global, split evenly);
* data order: epoch ``e`` is a permutation seeded by ``(seed, e)``, sharded across ranks, so
  a resumed run sees the same batches as an uninterrupted one;
* ``out_dir/last.pt`` every ``checkpoint_every`` iterations and at the end (model, optimizer,
  scheduler, scaler, iteration, RNG states, config, categories), ``out_dir/final.pt`` (model,
  config, categories: what ``predict`` needs) at the end, both atomic; ``resume=True``
  continues from ``last.pt``;
* a NaN/inf loss raises :class:`~boxcaseg.errors.TrainingDivergedError` naming the iteration,
  before anything of that state is saved, and so do NaN/inf weights at a checkpoint;
* TensorBoard scalars under ``out_dir/tb`` (``train/<loss>``, ``train/loss``, ``train/lr``);
  the resolved config in ``out_dir/config.yaml``;
* with ``val_json``: COCO mask + box AP and VOC mask AP@{25,50,70,75} at the end
  (:mod:`.evaluate`), printed and written to ``out_dir/metrics.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from boxcaseg.config import to_dict
from boxcaseg.data.coco import load_coco
from boxcaseg.engine.checkpoint import rng_state
from boxcaseg.engine.distributed import DistInfo, unwrap
from boxcaseg.engine.loop import TrainLoop, optimizer_step, training_session
from boxcaseg.engine.run_guard import RUNTIME_KEYS, check_resume, input_fingerprints
from boxcaseg.errors import ConfigError, DataError
from boxcaseg.io import atomic_write_json
from boxcaseg.maskrcnn.config import MaskRCNNConfig
from boxcaseg.maskrcnn.dataset import MaskRCNNDataset, collate, screen_maskrcnn_dataset
from boxcaseg.maskrcnn.evaluate import evaluate_maskrcnn, format_metrics
from boxcaseg.maskrcnn.model import build_maskrcnn
from boxcaseg.maskrcnn.predict import CHECKPOINT_FORMAT

log = logging.getLogger(__name__)

# resuming with these changed still continues the same trajectory: the lr schedule depends on
# the iteration only, so a longer max_iters extends a run; evaluation settings act at the end
# (train_json is compared by content, not by path)
RESUMABLE_CHANGES = RUNTIME_KEYS | {"max_iters", "epochs", "val_json", "val_images_root",
                                    "score_thresh", "mask_thresh", "train_json"}


# --------------------------------------------------------------------------- schedule

def lr_factor(cfg: MaskRCNNConfig, it: int) -> float:
    """lr multiplier at iteration ``it`` (0-based): warm-up ramp x step decay."""
    warm = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    return warm * 0.1 ** sum(1 for s in cfg.steps if it >= s)


def build_optimizer(model: nn.Module, cfg: MaskRCNNConfig
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr,
                                                       weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(cfg, it))
    return opt, sched


def epoch_batches(n: int, batch: int, epoch: int, seed: int, rank: int = 0, world: int = 1
                  ) -> list[list[int]]:
    """This rank's index batches for ``epoch``: a permutation seeded by (seed, epoch), every
    rank taking a strided share; incomplete batches dropped unless there is only one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = len(perm) // world if world > 1 else len(perm)
    mine = perm[rank::world][:per_rank]
    full = len(mine) // batch
    if full == 0:
        return [mine] if mine else []
    return [mine[i * batch:(i + 1) * batch] for i in range(full)]


def resolve_max_iters(cfg: MaskRCNNConfig, n_images: int) -> int:
    if cfg.epochs is None:
        return cfg.max_iters
    return max(1, math.ceil(cfg.epochs * n_images / cfg.batch_size))


# --------------------------------------------------------------------------- checkpoints

def checkpoint_state(model: nn.Module, cfg: MaskRCNNConfig, categories: list[dict[str, Any]],
                     iteration: int, full: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": unwrap(model).state_dict(),
        "config": to_dict(cfg),
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
        "iteration": int(iteration),
    }
    if full:
        state.update(full)
    return state


# --------------------------------------------------------------------------- training

def train_maskrcnn(cfg: MaskRCNNConfig, resume: bool = False, progress: bool = True
                   ) -> dict[str, Any]:
    """Train on ``cfg.train_json`` (boxes + proxy masks; see :mod:`.dataset`), evaluate on
    ``cfg.val_json`` if given. Returns ``{"checkpoint": final.pt, "last": last.pt,
    "iterations" (total, counting before a resume), "seconds_per_iter", "train_report"
    (annotation counts), "loss_history" (total loss of each iteration run by this call),
    "metrics" (see :func:`evaluate_maskrcnn`, or None)}``."""
    cfg.validate()
    cfg.require_data()
    with training_session(cfg.device, cfg.out_dir, "boxcaseg train-maskrcnn", resume) as info:
        return _train(cfg, resume, progress, info)


class MaskRCNNLoop(TrainLoop):
    """The Mask R-CNN side of :class:`TrainLoop`: per-epoch permutations, torchvision's loss
    dict, a resumable ``last.pt`` and a slim ``final.pt`` (what ``predict`` needs)."""

    unit = "iteration"
    desc = "train-maskrcnn"

    def __init__(self, cfg: MaskRCNNConfig, info: DistInfo, progress: bool) -> None:
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"MaskRCNNConfig.batch_size: {cfg.batch_size} images cannot be "
                              f"split evenly over {info.world_size} processes")
        self.cfg, self.per_rank = cfg, cfg.batch_size // info.world_size
        device = info.device
        torch.manual_seed(cfg.seed + info.rank)
        coco = load_coco(cfg.train_json, cfg.images_root)
        self.dataset = MaskRCNNDataset(coco, train=True, hflip_prob=cfg.hflip_prob)
        screen_maskrcnn_dataset(self.dataset, cfg.max_bad_fraction)
        self.inputs = input_fingerprints({"train_json": cfg.train_json})
        if len(self.dataset) == 0:
            raise DataError(f"{cfg.train_json}: no image with a usable annotation "
                            f"(report: {dict(self.dataset.report)})")
        self.categories = self.dataset.categories
        if cfg.num_classes is not None and cfg.num_classes != len(self.categories):
            raise ConfigError(f"MaskRCNNConfig.num_classes={cfg.num_classes} but "
                              f"{cfg.train_json} has {len(self.categories)} categories")
        model = build_maskrcnn(cfg, len(self.categories)).to(device)
        opt, sched = build_optimizer(model, cfg)
        self.use_amp = cfg.amp and device.type == "cuda"
        super().__init__(config=cfg, info=info, model=model, optimizer=opt, scheduler=sched,
                         scaler=torch.amp.GradScaler("cuda", enabled=self.use_amp),
                         total_steps=resolve_max_iters(cfg, len(self.dataset)),
                         out_dir=cfg.out_dir, log_every=cfg.log_every,
                         checkpoint_every=cfg.checkpoint_every, progress=progress)
        self.history: list[float] = []  # total loss per iteration run here (not before a resume)
        self.n_batches = len(self._epoch(0))
        if self.n_batches == 0:
            raise DataError(f"{cfg.train_json}: {len(self.dataset)} usable image(s) cannot "
                            f"feed {info.world_size} processes")

    def _epoch(self, epoch: int) -> list[list[int]]:
        return epoch_batches(len(self.dataset), self.per_rank, epoch, self.cfg.seed,
                             self.info.rank, self.info.world_size)

    def check_checkpoint(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise DataError(f"{self.last}: not a Mask R-CNN checkpoint")
        check_resume(self.last, ckpt.get("config"), to_dict(self.cfg), ckpt.get("inputs"),
                     self.inputs, RESUMABLE_CHANGES)
        saved, now = ([c["id"] for c in cats] for cats in (ckpt["categories"], self.categories))
        if saved != now:
            raise DataError(f"{self.last}: trained on categories {saved}, "
                            f"{self.cfg.train_json} has {now}")

    def batches(self, start: int) -> Iterator[tuple[Any, Any]]:
        it = start
        while True:  # a fresh loader per epoch: its order is epoch_batches(epoch)
            epoch, offset = divmod(it, self.n_batches)
            batches = self._epoch(epoch)[offset:]
            yield from DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate,
                                  num_workers=self.cfg.num_workers,
                                  pin_memory=self.info.device.type == "cuda")
            it += len(batches)

    def run_step(self, batch: tuple[Any, Any]) -> dict[str, float]:
        device = self.info.device
        images = [im.to(device, non_blocking=True) for im in batch[0]]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch[1]]
        with torch.autocast(device_type=device.type, enabled=self.use_amp):
            losses = self.net(images, targets)
        values = optimizer_step(losses, sum(losses.values()), self.optimizer, self.scheduler,
                                self.scaler, self.info)
        total = sum(values.values())
        self.history.append(total)
        return {**values, "loss": total}

    def divergence_hint(self) -> str:
        return (f"; lower lr (now {self.scheduler.get_last_lr()[0]:.3g}) or lengthen "
                "warm-up")

    def postfix(self, terms: dict[str, float], lr: float) -> str:
        return f"loss={terms['loss']:.3f}, lr={lr:.2g}"

    def scalars(self, terms: dict[str, float], lr: float, steps_per_s: float
                ) -> dict[str, float]:
        return {**{f"train/{k}": v for k, v in terms.items()}, "train/lr": lr}

    def checkpoint_state(self, final: bool) -> dict[str, Any]:
        if final:  # what predict needs
            return checkpoint_state(self.model, self.cfg, self.categories, self.step)
        return checkpoint_state(self.model, self.cfg, self.categories, self.step, {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "max_iters": self.total,
            "inputs": self.inputs})


def _train(cfg: MaskRCNNConfig, resume: bool, progress: bool,
           info: DistInfo) -> dict[str, Any]:
    loop = MaskRCNNLoop(cfg, info, progress)
    final_path = loop.run(resume)
    result: dict[str, Any] = {"checkpoint": str(final_path), "last": str(loop.last),
                              "iterations": loop.step, "seconds_per_iter": loop.seconds_per_step,
                              "train_report": dict(loop.dataset.report),
                              "loss_history": loop.history, "metrics": None}
    if info.is_main:
        if loop.seconds_per_step is not None:
            log.info("train-maskrcnn: %d iterations, %.2f s/iter", loop.steps_run,
                     loop.seconds_per_step)
        if cfg.val_json:
            metrics = evaluate_maskrcnn(
                loop.model, cfg.val_json, cfg.val_images_root or cfg.images_root,
                categories=loop.categories, score_thresh=cfg.score_thresh,
                mask_thresh=cfg.mask_thresh, device=info.device, progress=progress,
                results_path=Path(cfg.out_dir) / "val_results.json")
            atomic_write_json(Path(cfg.out_dir) / "metrics.json", metrics, indent=2)
            print(format_metrics(metrics, f"Mask R-CNN ({Path(cfg.train_json).name})"),
                  flush=True)
            result["metrics"] = metrics
    # no barrier after this point: a long evaluation on rank 0 must not hit the collective
    # timeout of ranks waiting for it; they return as soon as training is done
    return result
