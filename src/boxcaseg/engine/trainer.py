"""Joint BoxCaseg training (paper Sec. 3.2-3.3): a plain loop, torchvision-references style.

One step: a mixed batch (``box_per_batch`` box crops + salient crops, see
:mod:`boxcaseg.data.sampler`) -> normalise on the device -> ``model(x)`` (logits per head, AMP
on CUDA) -> ``boxcaseg_loss`` (Eq. 4, in float32) -> NaN check -> SGD (or AdamW) step -> poly LR.

Reproducibility: each sample's augmentation is seeded by its position in the global sample
stream, the DataLoader has its own generator, and checkpoints hold every RNG state, so on CPU a
run resumed from ``last.pt`` reaches bitwise the same weights as an uninterrupted one.

Outputs in ``out_dir``: ``config.yaml`` (resolved config), ``last.pt`` (every
``checkpoint_every`` steps and at the end), ``final.pt`` (at the end), ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from boxcaseg.config import dump_yaml, to_dict
from boxcaseg.data.sampler import MixedBatchSampler
from boxcaseg.data.train_sets import BoxCropDataset, MixedDataset, SalientCropDataset
from boxcaseg.data.validate import screen_box_dataset, screen_salient_dataset
from boxcaseg.data.transforms import normalize
from boxcaseg.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.distributed import DistInfo, all_finite, barrier, cleanup, init_distributed
from boxcaseg.engine.run_guard import (RUNTIME_KEYS, check_resume, input_fingerprints,
                                       output_guard, salient_listing)
from boxcaseg.errors import ConfigError, DataError, TrainingDivergedError
from boxcaseg.io import atomic_write_text

log = logging.getLogger(__name__)

LAST, FINAL = "last.pt", "final.pt"


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
        root = Path(cfg.images_root) if cfg.images_root else Path(cfg.boxes_json).parent / "images"
        coco = load_coco(cfg.boxes_json, root)
        teacher = None
        if cfg.teacher_labels:
            from boxcaseg.data.gt_masks import gt_annotation_ids
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
                                    mode=cfg.salient_crop, jitter=cfg.box_jitter)
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
        self.heads = tuple(cfg.model.heads)


def _format_terms(terms: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in terms.items())


def _params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


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
    names = list(losses)
    # one host sync per step for logging and the NaN check together
    terms = dict(zip(names, torch.stack([losses[k].detach().float() for k in names]).tolist()))
    finite = all(math.isfinite(v) for v in terms.values())
    if not all_finite(finite, info or DistInfo(device=device)):
        raise TrainingDivergedError(f"non-finite loss ({_format_terms(terms)})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return terms


# ---------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train BoxCaseg as ``cfg`` says; returns the final checkpoint path (``out_dir/final.pt``).

    ``resume=True`` continues from ``out_dir/last.pt`` (starts fresh, with a warning, if there
    is none). Without it an existing ``last.pt`` is an error, so a run is never overwritten by
    accident. Under ``torchrun`` each process trains on its share of every global batch.
    """
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        with output_guard(cfg.out_dir, "boxcaseg train", info.is_main):
            return _train(cfg, resume, info, progress)
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, resume: bool, info: DistInfo, progress: bool = True) -> Path:
    from boxcaseg.model import build_model

    out = Path(cfg.out_dir)
    last, final = out / LAST, out / FINAL
    if last.exists() and not resume:
        raise ConfigError(f"{last} exists: pass --resume to continue that run, or choose "
                          "another output directory")
    device = info.device
    use_amp = bool(cfg.amp and device.type == "cuda")
    _seed_everything(cfg.seed)

    box_ds, sal_ds = build_datasets(cfg)
    sampler = MixedBatchSampler(len(box_ds) if box_ds else 0, len(sal_ds) if sal_ds else 0,
                                cfg.batch_size, cfg.box_per_batch, cfg.seed,
                                info.rank, info.world_size)
    loader = DataLoader(MixedDataset(box_ds, sal_ds), batch_sampler=sampler,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        # persistent: workers keep their decoded-image caches across epochs
                        persistent_workers=cfg.num_workers > 0,
                        # own generator: creating an iterator must not consume the global
                        # torch RNG, or a resumed run would drift from an uninterrupted one
                        generator=torch.Generator().manual_seed(cfg.seed))
    total = cfg.max_steps or cfg.epochs * len(sampler)

    model = build_model(cfg.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total, cfg.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    step = 0
    inputs = input_fingerprints(
        {"boxes_json": cfg.boxes_json if box_ds is not None else None,
         "teacher_labels": cfg.teacher_labels if box_ds is not None else None},
        {"salient listing": salient_listing(sal_ds.folder)
         if sal_ds is not None and hasattr(sal_ds.folder, "names") else None})
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        if ckpt.get("model_config") != to_dict(cfg.model):
            raise ConfigError(f"{last}: saved model config {ckpt.get('model_config')} differs "
                              f"from the requested {to_dict(cfg.model)}; cannot resume")
        check_resume(last, ckpt.get("train_config"), to_dict(cfg), ckpt.get("inputs"), inputs,
                     RUNTIME_KEYS | {"boxes_json", "salient_root", "teacher_labels"})  # by content
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", last, step)
    elif resume:
        log.warning("--resume: nothing to resume (%s not found); starting a fresh run", last)
    sampler.load_state_dict(sampler.state_for_step(step))

    net: torch.nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None)

    writer = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))

    def checkpoint(path: Path) -> None:
        # a diverged state is never written: all ranks check, all ranks raise together
        if not all_finite(_params_finite(model), info):
            raise TrainingDivergedError(
                f"training diverged at step {step}: weights contain NaN/inf after the update "
                f"(lr={scheduler.get_last_lr()[0]:.3g}); no checkpoint written")
        if info.is_main:
            save_checkpoint(path, {
                "model": model.state_dict(), "model_config": to_dict(cfg.model),
                "train_config": to_dict(cfg), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "sampler": sampler.state_for_step(step), "step": step, "rng": rng_state(),
                "inputs": inputs})

    log.info("training %d steps (%d per epoch, batch %d per process x %d processes) on %s%s",
             total, len(sampler), cfg.batch_size, info.world_size, device,
             " with AMP" if use_amp else "")
    net.train()
    bar = tqdm(total=total, initial=step, desc="train", disable=not (info.is_main and progress),
               dynamic_ncols=True)
    t_log, n_log = time.perf_counter(), 0
    try:
        while step < total:
            for batch in loader:
                try:
                    terms = train_step(net, batch, optimizer, scheduler, scaler, cfg, device,
                                       use_amp, info)
                except TrainingDivergedError as e:
                    raise TrainingDivergedError(
                        f"training diverged at step {step + 1}: {e}; last good checkpoint: "
                        f"{last if last.exists() else 'none'}") from None
                step += 1
                n_log += cfg.batch_size
                bar.update(1)
                bar.set_postfix_str(_format_terms(terms), refresh=False)
                if writer is not None and (step % cfg.log_every == 0 or step == total):
                    for k, v in terms.items():
                        writer.add_scalar(f"loss/{k}", v, step)
                    writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
                    now = time.perf_counter()
                    writer.add_scalar("images_per_s", n_log * info.world_size / (now - t_log), step)
                    t_log, n_log = now, 0
                if step % cfg.checkpoint_every == 0 or step == total:
                    checkpoint(last)
                if step >= total:
                    break
        checkpoint(final)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    barrier(info)
    if info.is_main:
        log.info("final checkpoint: %s", final)
    return final
