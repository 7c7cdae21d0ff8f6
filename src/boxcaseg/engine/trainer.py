"""Joint BoxCaseg training (paper Sec. 3.2-3.3): the BoxCaseg step on :mod:`boxcaseg.engine.loop`.

One step: a mixed batch (``box_per_batch`` box crops + salient crops, see
:mod:`boxcaseg.data.sampler`) -> normalise on the device -> ``model(x)`` (logits per head, AMP
on CUDA) -> ``boxcaseg_loss`` (Eq. 4, in float32) -> NaN check -> SGD (or AdamW) step -> poly LR.

Reproducibility: each sample's augmentation is seeded by its position in the global sample
stream, the DataLoader has its own generator, and checkpoints hold every RNG state, so on CPU a
run resumed from ``last.pt`` reaches bitwise the same weights as an uninterrupted one.

Outputs in ``out_dir`` (written by the shared loop): ``config.yaml`` (resolved config),
``last.pt`` (every ``checkpoint_every`` steps and at the end), ``final.pt`` (at the end, the same
full state), ``tb/`` (TensorBoard: ``loss/<term>``, ``lr``, ``images_per_s``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from boxcaseg.config import to_dict
from boxcaseg.data.sampler import MixedBatchSampler
from boxcaseg.data.train_sets import BoxCropDataset, MixedDataset, SalientCropDataset
from boxcaseg.data.validate import screen_box_dataset, screen_salient_dataset
from boxcaseg.data.transforms import normalize
from boxcaseg.engine.checkpoint import load_checkpoint, load_weights, rng_state
from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.distributed import DistInfo, barrier
from boxcaseg.engine.loop import TrainLoop, optimizer_step, run_output, training_session
from boxcaseg.engine.run_guard import (RUNTIME_KEYS, check_resume, input_fingerprints,
                                       salient_listing)
from boxcaseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- building blocks
def build_datasets(cfg: TrainConfig) -> tuple[BoxCropDataset | None, SalientCropDataset | None]:
    """The box-crop and salient-crop datasets named by ``cfg`` (either may be absent)."""
    from boxcaseg.data.coco import load_coco
    from boxcaseg.data.salient import SalientFolder

    cache = cfg.cache_images_mb * 2**20
    box_ds = sal_ds = None
    if cfg.box_per_batch > 0:
        if not cfg.boxes_json:
            raise ConfigError("boxes_json is required (the box-supervised training set)")
        coco = load_coco(cfg.boxes_json, cfg.box_images())
        teacher = None
        if cfg.teacher_labels:
            from boxcaseg.labeling.schema import gt_annotation_ids
            from boxcaseg.data.teacher import teacher_masks
            teacher, summary = teacher_masks(
                cfg.teacher_labels, coco.raw["annotations"],
                gt_annotation_ids(coco.raw["annotations"]) if cfg.gt_masks else set(),
                cfg.teacher_min_score, cfg.teacher_weight)
            log.info("%s", summary.format())
        box_ds = BoxCropDataset(coco, cfg.crop_size, augment=True, cache_bytes=cache,
                                jitter=cfg.box_jitter, gt_masks=cfg.gt_masks, teacher=teacher)
        screen_box_dataset(box_ds, cfg.max_bad_fraction)
        if len(box_ds) == 0:
            raise DataError(f"{cfg.boxes_json}: no usable (non-crowd) boxes to train on")
    if cfg.box_per_batch < cfg.batch_size:
        if not cfg.salient_root:
            raise ConfigError("salient_root is required (the salient image set)")
        folder = SalientFolder(cfg.salient_root, limit=cfg.num_salient, sample_seed=cfg.seed)
        sal_ds = SalientCropDataset(folder, cfg.salient_resize, cfg.crop_size, cache_bytes=cache,
                                    mode=cfg.salient_crop, jitter=cfg.box_jitter,
                                    occlude=cfg.salient_occlude,
                                    occlude_scale=cfg.salient_occlude_scale)
        screen_salient_dataset(sal_ds, cfg.max_bad_fraction)
        if len(sal_ds) == 0:
            raise DataError(f"{cfg.salient_root}: no salient images found")
    return box_ds, sal_ds


def poly_lambda(total_steps: int, power: float):
    """LR factor ``(1 - step / total) ** power`` (HRNet-seg poly schedule)."""
    def factor(step: int) -> float:
        return (1.0 - min(step, total_steps) / total_steps) ** power
    return factor


def compute_losses(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                   cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Eq. 4 in float32 (logits may be fp16 under autocast); heads missing from ``outputs``
    (ablations) simply drop their terms."""
    from boxcaseg.losses import boxcaseg_loss

    outputs = {k: v.float() for k, v in outputs.items()}
    return boxcaseg_loss(outputs, batch, _LossSettings(cfg))


class _LossSettings:
    """What ``boxcaseg_loss`` reads from its config: alpha, smooth weight, enabled heads."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.alpha = cfg.model.alpha
        self.smooth_weight = cfg.smooth_weight
        self.pairwise_weight = cfg.pairwise_weight
        self.heads = tuple(cfg.model.heads)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_step(net: torch.nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
               cfg: TrainConfig, device: torch.device, use_amp: bool,
               info: DistInfo | None = None) -> dict[str, float]:
    """One optimisation step on a collated batch; returns the loss terms as floats.

    Raises :class:`TrainingDivergedError` (on every rank) *before* the update if any loss term
    is NaN/inf, so the weights stay those of the last good step.
    """
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
             for k, v in batch.items()}
    images = normalize(batch["image"])
    pixel_rows = None
    if cfg.pixel_heads_on == "salient":
        sal = torch.as_tensor(batch["is_salient"]).reshape(-1).bool()
        if bool(sal.any()):
            pixel_rows = torch.nonzero(sal.to(images.device)).reshape(-1)
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        outputs = net(images, pixel_rows=pixel_rows)
    losses = compute_losses(outputs, batch, cfg)
    return optimizer_step(losses, losses["total"], optimizer, scheduler, scaler,
                          info or DistInfo(device=device))


# ---------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train BoxCaseg as ``cfg`` says; returns the final checkpoint path (``out_dir/final.pt``).

    ``resume=True`` continues from ``out_dir/last.pt`` (starts fresh, with a warning, if there
    is none). Without it an existing ``last.pt`` is an error, so a run is never overwritten by
    accident. Under ``torchrun`` each process trains on its share of every global batch.
    """
    cfg.validate()
    if cfg.self_train_rounds > 0:  # train -> label -> train with those masks (self_train.py)
        from boxcaseg.engine.self_train import self_train
        return self_train(cfg, train_rounds_member, resume, progress)
    with training_session(cfg.device, cfg.out_dir, "boxcaseg train", resume) as info:
        return _train(cfg, resume, info, progress)


def train_rounds_member(cfg: TrainConfig, resume: bool, info: DistInfo, progress: bool) -> Path:
    """One training of a multi-run session (self-training rounds) in a joined process group."""
    with run_output(info, cfg.out_dir, "boxcaseg train", resume):
        return _train(cfg, resume, info, progress)


class BoxCasegLoop(TrainLoop):
    """The BoxCaseg side of :class:`TrainLoop`: mixed batches, :func:`train_step`, and a
    ``last.pt`` / ``final.pt`` that both hold the full resumable state."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, progress: bool) -> None:
        from boxcaseg.model import build_model

        device = info.device
        self.cfg, self.use_amp = cfg, bool(cfg.amp and device.type == "cuda")
        _seed_everything(cfg.seed)
        box_ds, sal_ds = build_datasets(cfg)
        self.sampler = MixedBatchSampler(len(box_ds) if box_ds else 0,
                                         len(sal_ds) if sal_ds else 0, cfg.batch_size,
                                         cfg.box_per_batch, cfg.seed, info.rank, info.world_size)
        self.loader = DataLoader(
            MixedDataset(box_ds, sal_ds), batch_sampler=self.sampler,
            num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
            # persistent: workers keep their decoded-image caches across epochs
            persistent_workers=cfg.num_workers > 0,
            # own generator: creating an iterator must not consume the global torch RNG, or a
            # resumed run would drift from an uninterrupted one
            generator=torch.Generator().manual_seed(cfg.seed))
        total = cfg.max_steps or cfg.epochs * len(self.sampler)

        # built as configured even when init_weights replaces every weight: building draws
        # from the RNG (differently with pretrained weights), and the run must draw the same
        # stream as one from scratch, so the two differ in their starting weights only
        model = build_model(cfg.model)
        if cfg.init_weights:
            _load_init_weights(model, cfg)
        model = model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay)
        super().__init__(
            config=cfg, info=info, model=model, optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                        poly_lambda(total, cfg.poly_power)),
            scaler=torch.amp.GradScaler("cuda", enabled=self.use_amp), total_steps=total,
            out_dir=cfg.out_dir, log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every, progress=progress)
        self.inputs = input_fingerprints(
            {"boxes_json": cfg.boxes_json if box_ds is not None else None,
             "teacher_labels": cfg.teacher_labels if box_ds is not None else None,
             "init_weights": cfg.init_weights or None},
            {"salient listing": salient_listing(sal_ds.folder)
             if sal_ds is not None and hasattr(sal_ds.folder, "names") else None})

    def check_checkpoint(self, ckpt: dict[str, Any]) -> None:
        cfg = self.cfg
        if ckpt.get("model_config") != to_dict(cfg.model):
            raise ConfigError(f"{self.last}: saved model config {ckpt.get('model_config')} "
                              f"differs from the requested {to_dict(cfg.model)}; cannot resume")
        check_resume(self.last, ckpt.get("train_config"), to_dict(cfg), ckpt.get("inputs"),
                     self.inputs, RUNTIME_KEYS | {"boxes_json", "salient_root", "teacher_labels",
                                     "init_weights"})
        # (files are compared by content)

    def before_train(self) -> None:
        info = self.info
        log.info("training %d steps (%d per epoch, batch %d per process x %d processes) on "
                 "%s%s", self.total, len(self.sampler), self.cfg.batch_size, info.world_size,
                 info.device, " with AMP" if self.use_amp else "")

    def batches(self, start: int) -> Iterator[dict[str, Any]]:
        self.sampler.load_state_dict(self.sampler.state_for_step(start))
        while True:  # the sampler moves on to the next epoch each time the loader ends
            yield from self.loader

    def run_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return train_step(self.net, batch, self.optimizer, self.scheduler, self.scaler,
                          self.cfg, self.info.device, self.use_amp, self.info)

    def scalars(self, terms: dict[str, float], lr: float, steps_per_s: float
                ) -> dict[str, float]:
        images_per_s = steps_per_s * self.cfg.batch_size * self.info.world_size
        return {**super().scalars(terms, lr, steps_per_s), "images_per_s": images_per_s}

    def checkpoint_state(self, final: bool) -> dict[str, Any]:
        step = self.step
        return {"model": self.model.state_dict(), "model_config": to_dict(self.cfg.model),
                "train_config": to_dict(self.cfg), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_for_step(step), "step": step, "rng": rng_state(),
                "inputs": self.inputs}


def _load_init_weights(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Start from ``cfg.init_weights``' model weights; only the same architecture fits, and a
    different one is named, not half-loaded."""
    state = load_checkpoint(cfg.init_weights)
    saved, now = state.get("model_config") or {}, to_dict(cfg.model)
    # "pretrained" only picks the starting weights, which these replace
    changed = sorted(k for k in set(saved) | set(now)
                     if k != "pretrained" and saved and saved.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"init_weights {cfg.init_weights}: its model differs from the one to "
                          f"train in {', '.join(changed)} (start from a checkpoint of the same "
                          "model settings, or leave init_weights empty)")
    load_weights(model, state["model"], f"init_weights {cfg.init_weights}",
                 "start from a boxcaseg checkpoint of the same model")
    log.info("starting from the weights of %s", cfg.init_weights)


def _train(cfg: TrainConfig, resume: bool, info: DistInfo, progress: bool = True) -> Path:
    final = BoxCasegLoop(cfg, info, progress).run(resume)
    barrier(info)
    if info.is_main:
        log.info("final checkpoint: %s", final)
    return final
