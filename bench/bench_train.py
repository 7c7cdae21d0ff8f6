"""Training throughput: the full BoxCaseg step vs the bare backbone, measured in the same run.

Full step = DataLoader (decode, box jitter / salient crop, collate) + normalise + BoxCaseg
forward (backbone + three heads + weight transfer) + Eq. 4 losses + backward + SGD + poly LR.
Bare backbone = forward + backward of the model's backbone alone on a random batch of the same
size and input resolution (no data, no heads, no losses, no optimizer).

The two are timed in alternating rounds so machine load (shared CPUs) hits both alike. The
overhead ratio ``full / backbone - 1`` is what the heads, losses, data pipeline and optimizer add
on top of the backbone (target: losses + data <= 15 %; the heads' own cost is reported apart).

    python bench/bench_train.py                      # CPU demo config, ~1-2 min
    python bench/bench_train.py --steps 40 --rounds 4 model.backbone=resnet18
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from boxcaseg.config import load_config
from boxcaseg.data.sampler import MixedBatchSampler
from boxcaseg.data.train_sets import MixedDataset
from boxcaseg.data.transforms import normalize
from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.trainer import build_datasets, compute_losses, poly_lambda, train_step

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results_train.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs visible, "
            f"torch threads {torch.get_num_threads()}")


def ensure_data(cfg: TrainConfig, work: Path, n_salient: int, n_train: int, size: int) -> None:
    if cfg.salient_root and Path(cfg.salient_root).exists() and Path(cfg.boxes_json).exists():
        return
    from boxcaseg.data.demo import make_demo_data
    make_demo_data(work, seed=0, n_salient=n_salient, n_train=n_train, n_val=1, image_size=size)
    cfg.salient_root = str(work / "salient")
    cfg.boxes_json = str(work / "boxes" / "train.json")
    cfg.images_root = str(work / "boxes" / "images")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The timm feature extractor alone (``model.backbone.body``), without level fusion."""
    bb = getattr(model, "backbone", None)
    if bb is None:
        raise SystemExit("the model has no .backbone attribute to time on its own")
    return getattr(bb, "body", bb)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "src" / "boxcaseg" / "configs" / "boxcaseg_demo_cpu.yaml"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and kind")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--n-salient", type=int, default=120, help="demo data size if generated")
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--label", default=None, help="section title in results_train.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(TrainConfig, args.config, args.overrides)
    from boxcaseg.engine.distributed import resolve_device
    from boxcaseg.model import build_model
    device = resolve_device(cfg.device)
    use_amp = bool(cfg.amp and device.type == "cuda")
    torch.manual_seed(cfg.seed)

    with tempfile.TemporaryDirectory() as tmp:
        ensure_data(cfg, Path(tmp), args.n_salient, args.n_train, args.image_size)
        box_ds, sal_ds = build_datasets(cfg)
        sampler = MixedBatchSampler(len(box_ds) if box_ds else 0, len(sal_ds) if sal_ds else 0,
                                    cfg.batch_size, cfg.box_per_batch, cfg.seed)
        loader = torch.utils.data.DataLoader(MixedDataset(box_ds, sal_ds), batch_sampler=sampler,
                                             num_workers=cfg.num_workers,
                                             pin_memory=device.type == "cuda",
                                             persistent_workers=cfg.num_workers > 0)

        def batches():
            while True:
                yield from loader

        stream = batches()
        model = build_model(cfg.model).to(device).train()
        params = [q for q in model.parameters() if q.requires_grad]
        opt = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
               if cfg.optimizer == "adamw" else
               torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay))
        total = 10 ** 6
        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(total, cfg.poly_power))
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        backbone = backbone_of(model)
        s = cfg.crop_size
        x_rand = torch.randn(cfg.batch_size, 3, s, s, device=device)

        def full_steps(n: int) -> float:
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                train_step(model, next(stream), opt, sched, scaler, cfg, device, use_amp)
            sync(device)
            return time.perf_counter() - t

        def backbone_steps(n: int) -> float:
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    feats = backbone(x_rand)
                feats = feats if isinstance(feats, (list, tuple)) else [feats]
                loss = sum(f.float().mean() for f in feats)
                model.zero_grad(set_to_none=True)
                loss.backward()
            sync(device)
            return time.perf_counter() - t

        def model_steps(n: int, batch) -> float:
            """Forward + losses + backward of the whole network on a fixed batch (no data)."""
            b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    out = model(normalize(b["image"]))
                losses = compute_losses(out, b, cfg)
                model.zero_grad(set_to_none=True)
                losses["total"].backward()
            sync(device)
            return time.perf_counter() - t

        def network_steps(n: int, batch) -> float:
            """Forward + backward of backbone + heads with a trivial loss: the network alone."""
            x = normalize(batch["image"].to(device))
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    out = model(x)
                loss = sum(v.float().mean() for v in out.values())
                model.zero_grad(set_to_none=True)
                loss.backward()
            sync(device)
            return time.perf_counter() - t

        # the pipeline's own CPU cost: an in-process loader (workers would hide it behind
        # prefetching), over the same datasets and a second sampler
        plain = torch.utils.data.DataLoader(
            MixedDataset(box_ds, sal_ds), num_workers=0,
            batch_sampler=MixedBatchSampler(sampler.n_box, sampler.n_salient, cfg.batch_size,
                                            cfg.box_per_batch, cfg.seed + 1))

        def plain_batches():
            while True:
                yield from plain

        plain_stream = plain_batches()

        def data_only(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                next(plain_stream)
            return time.perf_counter() - t

        fixed = next(stream)
        full_steps(args.warmup)
        backbone_steps(args.warmup)
        model_steps(args.warmup, fixed)
        network_steps(args.warmup, fixed)
        t_full = t_bb = t_model = t_data = t_net = 0.0
        for _ in range(args.rounds):
            t_full += full_steps(args.steps)
            t_bb += backbone_steps(args.steps)
            t_model += model_steps(args.steps, fixed)
            t_net += network_steps(args.steps, fixed)
            t_data += data_only(args.steps)

    n_img = args.rounds * args.steps * cfg.batch_size
    ips = {k: n_img / v for k, v in (("full", t_full), ("backbone", t_bb), ("model", t_model),
                                     ("data", t_data), ("net", t_net))}
    overhead = t_full / t_bb - 1
    rows = [
        ("full training step (data + model + losses + optimizer)", ips["full"], t_full),
        ("bare backbone forward + backward", ips["backbone"], t_bb),
        ("network (backbone + 3 heads) forward + backward, trivial loss", ips["net"], t_net),
        ("network + losses forward + backward (fixed batch, no data, no SGD)", ips["model"], t_model),
        ("data pipeline alone (in the main process, no workers)", ips["data"], t_data),
    ]
    cmd = "python bench/bench_train.py " + " ".join(
        a if re.fullmatch(r"[\w./=,:\[\]-]+", a) else repr(a) for a in (argv or sys.argv[1:]))
    title = args.label or f"{cfg.model.backbone}, crop {cfg.crop_size}, batch {cfg.batch_size}, {device.type}"
    lines = [
        f"## {title}",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {machine(device)}; AMP {'on' if use_amp else 'off'}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- batch {cfg.batch_size} ({cfg.box_per_batch} box + {cfg.batch_size - cfg.box_per_batch}"
        f" salient) at {cfg.crop_size}x{cfg.crop_size}; {args.rounds} rounds x {args.steps} "
        f"steps per kind, alternating, after {args.warmup} warm-up steps",
        "",
        "| what | images/s | ms/step |",
        "|---|---:|---:|",
        *(f"| {name} | {v:.1f} | {1000 * t / (args.rounds * args.steps):.0f} |"
          for name, v, t in rows),
        "",
        f"- DataLoader workers in the full step: {cfg.num_workers}",
        f"- overhead of the full step over the bare backbone: **{100 * overhead:+.1f} %**",
        f"  - the heads (network vs bare backbone): {100 * (t_net / t_bb - 1):+.1f} %",
        f"  - the losses (network+losses vs network): {100 * (t_model / t_net - 1):+.1f} %",
        f"  - data + optimizer (full step vs network+losses): "
        f"{100 * (t_full / t_model - 1):+.1f} %",
        f"- **losses + data pipeline + optimizer on top of the network: "
        f"{100 * (t_full / t_net - 1):+.1f} %** (target <= 15 %)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(RESULTS, title, text)
        print(f"written to {RESULTS}")
    return 0


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the ``## title`` section of ``path`` (or append it), keeping the others."""
    from boxcaseg.io import atomic_write_text
    header = ("# Training throughput (bench/bench_train.py)\n\nFull training step vs the bare "
              "backbone, same batch and input size, timed in alternating rounds.\n\n")
    old = path.read_text(encoding="utf-8") if path.exists() else header
    parts = re.split(r"(?m)^(?=## )", old)
    head, sections = parts[0], parts[1:]
    key = f"## {title}\n"
    replaced = False
    for i, sec in enumerate(sections):
        if sec.startswith(key):
            sections[i] = section + "\n"
            replaced = True
    if not replaced:
        sections.append(section + "\n")
    atomic_write_text(path, head + "".join(sections))


if __name__ == "__main__":
    raise SystemExit(main())
