"""``boxcaseg train-maskrcnn``: train the Proxy Mask R-CNN on boxes + proxy masks (Sec. 3.4).

Examples:

    boxcaseg train-maskrcnn --config src/boxcaseg/configs/maskrcnn_demo_cpu.yaml
    boxcaseg train-maskrcnn --config configs/maskrcnn_voc_r101.yaml train_json=my_masks.json
    boxcaseg train-maskrcnn --config configs/maskrcnn_voc_r101.yaml --resume   # OUT/last.pt
    torchrun --nproc_per_node=8 -m boxcaseg.cli train-maskrcnn --config configs/maskrcnn_coco_r101.yaml

Annotations flagged ``"ignore_mask": true`` train the box/class branches but not the mask
loss; crowd annotations and annotations without a segmentation are not trained on. Writes
OUT/last.pt (resumable), OUT/final.pt (for ``boxcaseg predict``), OUT/config.yaml, OUT/tb
(TensorBoard) and, with val_json, OUT/metrics.json + OUT/val_results.json.
"""

from __future__ import annotations

import argparse
import json
import os

from boxcaseg.commands import add_training_arguments
from boxcaseg.config import load_command_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(
        parser, __doc__,
        config_help="YAML file with MaskRCNNConfig keys (defaults: maskrcnn-benchmark's)",
        overrides_help="config overrides, e.g. lr=0.01 max_iters=1000 min_size=[480,512]",
        resume_help="continue from OUT/last.pt; refused if train_json or a setting changed "
                    "(max_iters may grow)")


def run(args: argparse.Namespace) -> int:
    from boxcaseg.maskrcnn.config import MaskRCNNConfig
    from boxcaseg.maskrcnn.train import train_maskrcnn

    cfg = load_command_config(MaskRCNNConfig, args.config, args.overrides, args.out)
    result = train_maskrcnn(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {result['checkpoint']}")
        if result["metrics"] is not None:
            print(f"metrics:          {os.path.join(cfg.out_dir, 'metrics.json')}")
            print(json.dumps({k: result["metrics"][k] for k in ("segm", "voc")}))
    return 0
