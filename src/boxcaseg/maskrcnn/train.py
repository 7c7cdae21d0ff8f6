"""Training loop of the Proxy Mask R-CNN (torchvision references/detection style) + evaluation.

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
  before anything of that state is saved;
* TensorBoard scalars under ``out_dir/tb``; the resolved config in ``out_dir/config.yaml``;
* with ``val_json``: COCO mask + box AP and VOC mask AP@{25,50,70,75} at the end, printed and
  written to ``out_dir/metrics.json``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from boxcaseg.config import dump_yaml, to_dict
from boxcaseg.data.coco import load_coco
from boxcaseg.engine import distributed as dist_utils
from boxcaseg.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from boxcaseg.engine.run_guard import RUNTIME_KEYS, check_resume, input_fingerprints, output_guard
from boxcaseg.errors import ConfigError, DataError, ImageReadError, TrainingDivergedError
from boxcaseg.io import atomic_write_json, atomic_write_text, read_image_rgb
from boxcaseg.maskrcnn.config import MaskRCNNConfig
from boxcaseg.maskrcnn.dataset import MaskRCNNDataset, collate, screen_maskrcnn_dataset
from boxcaseg.maskrcnn.model import build_maskrcnn
from boxcaseg.maskrcnn.predict import CHECKPOINT_FORMAT, load_maskrcnn, run_model

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

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def checkpoint_state(model: nn.Module, cfg: MaskRCNNConfig, categories: list[dict[str, Any]],
                     iteration: int, full: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": _unwrap(model).state_dict(),
        "config": to_dict(cfg),
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories],
        "iteration": int(iteration),
    }
    if full:
        state.update(full)
    return state


# --------------------------------------------------------------------------- evaluation

def evaluate_maskrcnn(model_or_checkpoint: nn.Module | str | os.PathLike, val_json: str | os.PathLike,
                      images_root: str | os.PathLike, *,
                      categories: list[dict[str, Any]] | None = None,
                      score_thresh: float | None = None, mask_thresh: float | None = None,
                      device: str | torch.device | None = None, batch_size: int = 2,
                      progress: bool = True, results_path: str | os.PathLike | None = None
                      ) -> dict[str, Any]:
    """COCO mask AP, COCO box AP and VOC mask AP@{25,50,70,75} on ``val_json`` (GT masks).

    ``model_or_checkpoint``: a model (then ``categories``, the label order, is required) or a
    checkpoint path. ``score_thresh`` / ``mask_thresh`` default to the checkpoint's config (or
    0.05 / 0.5). Unreadable images are warned about and count as images without detections.

    Returns ``{"segm": {AP, AP50, AP75, APs, APm, APl}, "bbox": {...}, "voc": {AP25, AP50,
    AP70, AP75}, "num_images", "num_detections", "unreadable_images"}`` (fractions).
    """
    from boxcaseg.evaluation.coco_ap import coco_mask_ap
    from boxcaseg.evaluation.voc_ap import voc_mask_ap

    if isinstance(model_or_checkpoint, nn.Module):
        if categories is None:
            raise ValueError("evaluate_maskrcnn(model, ...) needs categories (label order)")
        model = _unwrap(model_or_checkpoint)
        dev = device or next(model.parameters()).device
        cfg_dict: dict[str, Any] = {}
    else:
        dev = device or dist_utils.resolve_device("auto")
        model, ckpt = load_maskrcnn(model_or_checkpoint, dev)
        categories = categories or ckpt["categories"]
        cfg_dict = ckpt["config"]
    score_thresh = float(cfg_dict.get("score_thresh", 0.05) if score_thresh is None
                         else score_thresh)
    mask_thresh = float(cfg_dict.get("mask_thresh", 0.5) if mask_thresh is None else mask_thresh)
    gt = load_coco(val_json, images_root)
    unreadable = 0

    def images():
        nonlocal unreadable
        for im in gt.images:
            try:
                yield im.id, read_image_rgb(im.path)
            except ImageReadError as e:
                unreadable += 1
                log.warning("%s: skipped in evaluation", e)

    was_training = model.training
    results = run_model(model, images(), dev, categories, mask_thresh, score_thresh,
                        batch_size, progress, total=len(gt.images))
    model.train(was_training)
    if results_path is not None:
        atomic_write_json(results_path, results)
    voc = voc_mask_ap(gt.raw, results)
    return {
        "segm": coco_mask_ap(gt.raw, results, "segm"),
        "bbox": coco_mask_ap(gt.raw, results, "bbox"),
        "voc": {k: v for k, v in voc.items() if k.startswith("AP")},
        "num_images": len(gt.images),
        "num_detections": len(results),
        "unreadable_images": unreadable,
    }


def format_metrics(metrics: dict[str, Any], title: str = "Mask R-CNN") -> str:
    from boxcaseg.evaluation.report import format_table

    coco_keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    rows = [{"what": "mask (COCO)", **metrics["segm"]}, {"what": "box (COCO)", **metrics["bbox"]}]
    parts = [format_table(rows, [("what", "", "s")] + [(k, k, "pct") for k in coco_keys],
                          f"{title}: COCO AP, {metrics['num_images']} images")]
    voc = metrics["voc"]
    parts.append(format_table([voc], [(k, k, "pct") for k in voc], "VOC mask AP"))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- training

def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard not installed: train anyway
        log.warning("TensorBoard logging disabled (%s)", e)
        return None
    return SummaryWriter(str(path))


def train_maskrcnn(cfg: MaskRCNNConfig, resume: bool = False, progress: bool = True
                   ) -> dict[str, Any]:
    """Train on ``cfg.train_json`` (boxes + proxy masks; see :mod:`.dataset`), evaluate on
    ``cfg.val_json`` if given. Returns ``{"checkpoint": final.pt, "last": last.pt,
    "iterations" (total, counting before a resume), "seconds_per_iter", "train_report"
    (annotation counts), "loss_history" (total loss of each iteration run by this call),
    "metrics" (see :func:`evaluate_maskrcnn`, or None)}``."""
    cfg.validate()
    cfg.require_data()
    info = dist_utils.init_distributed(cfg.device)
    try:
        with output_guard(cfg.out_dir, "boxcaseg train-maskrcnn", info.is_main):
            return _train(cfg, resume, progress, info)
    finally:
        dist_utils.cleanup(info)


def _train(cfg: MaskRCNNConfig, resume: bool, progress: bool,
           info: dist_utils.DistInfo) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    last_path, final_path = out / "last.pt", out / "final.pt"
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"MaskRCNNConfig.batch_size: {cfg.batch_size} images cannot be split "
                          f"evenly over {info.world_size} processes")
    if last_path.exists() and not resume:
        raise ConfigError(f"{last_path} exists: pass --resume to continue that run, or choose "
                          "another output directory")
    per_rank = cfg.batch_size // info.world_size
    device = info.device
    torch.manual_seed(cfg.seed + info.rank)

    coco = load_coco(cfg.train_json, cfg.images_root)
    dataset = MaskRCNNDataset(coco, train=True, hflip_prob=cfg.hflip_prob)
    screen_maskrcnn_dataset(dataset, cfg.max_bad_fraction)
    inputs = input_fingerprints({"train_json": cfg.train_json})
    if len(dataset) == 0:
        raise DataError(f"{cfg.train_json}: no image with a usable annotation "
                        f"(report: {dict(dataset.report)})")
    categories = dataset.categories
    if cfg.num_classes is not None and cfg.num_classes != len(categories):
        raise ConfigError(f"MaskRCNNConfig.num_classes={cfg.num_classes} but {cfg.train_json} "
                          f"has {len(categories)} categories")
    max_iters = resolve_max_iters(cfg, len(dataset))

    model = build_maskrcnn(cfg, len(categories)).to(device)
    opt, sched = build_optimizer(model, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    if resume:
        if last_path.is_file():
            ckpt = load_checkpoint(last_path)
            if ckpt.get("format") != CHECKPOINT_FORMAT:
                raise DataError(f"{last_path}: not a Mask R-CNN checkpoint")
            check_resume(last_path, ckpt.get("config"), to_dict(cfg), ckpt.get("inputs"),
                         inputs, RESUMABLE_CHANGES)
            if [c["id"] for c in ckpt["categories"]] != [c["id"] for c in categories]:
                raise DataError(f"{last_path}: trained on categories "
                                f"{[c['id'] for c in ckpt['categories']]}, {cfg.train_json} has "
                                f"{[c['id'] for c in categories]}")
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            start = int(ckpt["iteration"])
            log.info("resumed from %s at iteration %d", last_path, start)
        else:
            log.warning("--resume: nothing to resume (%s not found); starting a fresh run",
                        last_path)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def full_state(it: int) -> dict[str, Any]:
        return checkpoint_state(model, cfg, categories, it, {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if use_amp else {}, "rng": rng_state(),
            "max_iters": max_iters, "inputs": inputs})

    writer = _tensorboard(out / "tb") if info.is_main and start < max_iters else None
    n_batches = len(epoch_batches(len(dataset), per_rank, 0, cfg.seed, info.rank,
                                  info.world_size))
    if n_batches == 0:
        raise DataError(f"{cfg.train_json}: {len(dataset)} usable image(s) cannot feed "
                        f"{info.world_size} processes")
    bar = tqdm(total=max_iters, initial=start, desc="train-maskrcnn", unit="it",
               disable=not (progress and info.is_main))
    train_model.train()
    it = start
    t0, timed = time.perf_counter(), 0
    history: list[float] = []  # total loss per iteration run here (not before a resume)
    while it < max_iters:
        epoch, offset = divmod(it, n_batches)
        batches = epoch_batches(len(dataset), per_rank, epoch, cfg.seed, info.rank,
                                info.world_size)[offset:]
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()}
                       for t in targets]
            with torch.autocast(device_type=device.type, enabled=use_amp):
                losses = train_model(images, targets)
            loss = sum(losses.values())
            values = {k: float(v.detach()) for k, v in losses.items()}
            total = sum(values.values())
            if not dist_utils.all_finite(math.isfinite(total), info):
                raise TrainingDivergedError(
                    f"iteration {it + 1}: loss is not finite ({values}); lower lr "
                    f"(now {sched.get_last_lr()[0]:.3g}) or lengthen warm-up")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            it += 1
            timed += 1
            history.append(total)
            bar.update(1)
            if info.is_main and (it % cfg.log_every == 0 or it == max_iters):
                bar.set_postfix(loss=f"{total:.3f}", lr=f"{sched.get_last_lr()[0]:.2g}")
                log.debug("iteration %d: %s", it, {k: round(v, 4) for k, v in values.items()})
                if writer is not None:
                    for k, v in values.items():
                        writer.add_scalar(f"train/{k}", v, it)
                    writer.add_scalar("train/loss", total, it)
                    writer.add_scalar("train/lr", sched.get_last_lr()[0], it)
            if info.is_main and (it % cfg.checkpoint_every == 0 or it == max_iters):
                save_checkpoint(last_path, full_state(it))
            if it >= max_iters:
                break
    bar.close()
    sec_per_iter = (time.perf_counter() - t0) / timed if timed else None
    if writer is not None:
        writer.close()
    result: dict[str, Any] = {"checkpoint": str(final_path), "last": str(last_path),
                              "iterations": it, "seconds_per_iter": sec_per_iter,
                              "train_report": dict(dataset.report), "loss_history": history,
                              "metrics": None}
    if info.is_main:
        if not last_path.is_file():  # e.g. resumed a finished run before last.pt existed
            save_checkpoint(last_path, full_state(it))
        save_checkpoint(final_path, checkpoint_state(model, cfg, categories, it))
        if sec_per_iter is not None:
            log.info("train-maskrcnn: %d iterations, %.2f s/iter", timed, sec_per_iter)
        if cfg.val_json:
            metrics = evaluate_maskrcnn(
                model, cfg.val_json, cfg.val_images_root or cfg.images_root,
                categories=categories, score_thresh=cfg.score_thresh,
                mask_thresh=cfg.mask_thresh, device=device, progress=progress,
                results_path=out / "val_results.json")
            atomic_write_json(out / "metrics.json", metrics, indent=2)
            print(format_metrics(metrics, f"Mask R-CNN ({Path(cfg.train_json).name})"),
                  flush=True)
            result["metrics"] = metrics
    # no barrier after this point: a long evaluation on rank 0 must not hit the collective
    # timeout of ranks waiting for it; they return as soon as training is done
    return result
