"""``boxcaseg train``: joint BoxCaseg training on salient + box-supervised images.

Without --config the defaults are the paper's (HRNet-W48, SGD, 30 epochs: made for GPUs, and
its ImageNet weights come from timm's hub). On a CPU machine, or offline, start from the
shipped real-photo recipe (EfficientNet-Lite0 with offline ImageNet weights, ~30 min on 2
cores; bench/results_real.md):

    boxcaseg train --config real-cpu salient_root=SALIENT/ boxes_json=boxes.json images_root=images/ --out runs/bc

Examples:

    boxcaseg train --config src/boxcaseg/configs/boxcaseg_demo_cpu.yaml
    boxcaseg train --config src/boxcaseg/configs/boxcaseg_demo_cpu.yaml lr=0.01 model.heads=[weak] --out runs/weak
    boxcaseg train --config src/boxcaseg/configs/boxcaseg_demo_cpu.yaml --resume        # continue last.pt
    torchrun --nproc_per_node=2 -m boxcaseg.cli train --config my.yaml    # DDP, 16 per GPU
"""

from __future__ import annotations

import argparse
import os

from boxcaseg.commands import add_training_arguments
from boxcaseg.config import load_command_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(
        parser, __doc__,
        config_help="YAML file with TrainConfig keys, or a shipped recipe: real-cpu (real "
                    "photos on a CPU, offline), demo-cpu (defaults: the paper's GPU recipe)",
        overrides_help="config overrides, e.g. lr=0.01 model.backbone=hrnet_w48 "
                       "model.heads=[weak,salient]",
        resume_help="continue from OUT/last.pt (exactly: same data order and RNG); refused if "
                    "the box file, the salient set or a setting changed")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.engine.config import TrainConfig
    from boxcaseg.engine.trainer import train

    cfg = load_command_config(TrainConfig, args.config, args.overrides, args.out)
    final = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: only rank 0 reports
        print(f"final checkpoint: {final}")
        print(f"resolved config:  {final.parent / 'config.yaml'}")
    return 0
