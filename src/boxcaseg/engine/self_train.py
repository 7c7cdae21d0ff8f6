"""Self-training rounds (``TrainConfig.self_train_rounds``): train, label the training boxes
with the model, train again with those masks as teacher masks.

Why: the pixel heads that make the masks learn from salient photos only (paper Fig. 4), never
from the box images they label. A round gives them the box images, with masks: the model's
own, refined at full resolution by ``self_train_refine`` (GrabCut seeded by the probability
map on COCO-large boxes by default: the label-time quality mode, too slow to be the default
labeler). The next model learns to reproduce those refined masks at the default labeler's
speed. Measured on real photos in ``bench/results_real.md``.

Layout of ``out_dir`` for ``self_train_rounds: R``:

* ``round0/`` .. ``round{R-1}/``: each an ordinary training run (``final.pt``, ``last.pt``,
  ``config.yaml``, ``tb/``) plus ``teacher.json``, its model's labels of ``boxes_json``;
* ``out_dir`` itself: the last model, trained with ``round{R-1}/teacher.json`` as
  ``teacher_labels`` (``final.pt`` there is the one to label with).

Round 0 uses the configured ``teacher_labels`` (if any); later rounds their predecessor's
labels, and with ``self_train_init: previous`` start from its weights (``init_weights``)
instead of the ImageNet backbone. Which teacher masks count and how they are weighted is
``data.teacher``'s business (``teacher_min_score``, ``teacher_weight``; never a mask the
labeler flagged ``ignore_mask``). ``resume`` continues where the job stopped: finished
rounds and complete teacher files are kept, an unfinished training resumes from its
``last.pt``, an unfinished labeling from its parts. Under ``torchrun`` every rank trains its
share and labels its shard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from boxcaseg.engine.config import TrainConfig
from boxcaseg.engine.distributed import DistInfo, barrier, cleanup, init_distributed

log = logging.getLogger(__name__)

TEACHER = "teacher.json"
FINAL = "final.pt"


def round_dir(cfg: TrainConfig, k: int) -> Path:
    return Path(cfg.out_dir) / f"round{k}"


def round_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """The training config of every round, the last one writing to ``cfg.out_dir``."""
    rounds = cfg.self_train_rounds
    out: list[TrainConfig] = []
    teacher, init = cfg.teacher_labels, cfg.init_weights
    for k in range(rounds + 1):
        last = k == rounds
        out.append(replace(cfg, self_train_rounds=0, teacher_labels=teacher, init_weights=init,
                           out_dir=cfg.out_dir if last else str(round_dir(cfg, k))))
        teacher = str(round_dir(cfg, k) / TEACHER)
        if cfg.self_train_init == "previous":
            init = str(round_dir(cfg, k) / FINAL)
    return out


TrainOne = Callable[[TrainConfig, bool, DistInfo, bool], Path]


def self_train(cfg: TrainConfig, train_one: TrainOne, resume: bool = False,
               progress: bool = True) -> Path:
    """Run every round of ``cfg`` (module doc); returns the last model's ``final.pt``.
    ``train_one(cfg, resume, info, progress)`` trains one round in the joined process group
    (``trainer.train_rounds_member``: passed in, as the trainer is what calls this)."""
    cfg.validate()
    configs = round_configs(cfg)
    info = init_distributed(cfg.device)
    try:
        final = Path()
        for k, rcfg in enumerate(configs):
            done = Path(rcfg.out_dir) / FINAL
            if k < len(configs) - 1 and resume and done.is_file():
                log.info("self-training round %d: %s is done, kept", k, done)
                final = done
            else:
                log.info("self-training round %d of %d: training in %s%s", k, len(configs) - 1,
                         rcfg.out_dir, f" with teacher {rcfg.teacher_labels}"
                         if rcfg.teacher_labels else "")
                final = train_one(rcfg, resume, info, progress)
            if k < len(configs) - 1:
                label_teacher(cfg, final, Path(configs[k + 1].teacher_labels), resume, info,
                              progress)
        return final
    finally:
        cleanup(info)


def label_teacher(cfg: TrainConfig, checkpoint: Path, out: Path, resume: bool,
                  info: DistInfo, progress: bool) -> None:
    """Label ``cfg.boxes_json`` with ``checkpoint`` into ``out`` (a ``dataset`` labels file,
    written whole or not at all by the labeling job), refined by ``cfg.self_train_refine``."""
    from boxcaseg.data.coco import load_coco
    from boxcaseg.labeling.config import LabelConfig
    from boxcaseg.labeling.job.run import label_dataset
    from boxcaseg.model.boxcaseg import load_boxcaseg

    if out.is_file() and resume:
        log.info("self-training teacher %s is complete, kept", out)
        return
    coco = load_coco(cfg.boxes_json, cfg.box_images())
    model, _ = load_boxcaseg(checkpoint, map_location=info.device)
    label_cfg = LabelConfig(device=str(info.device), refine=cfg.self_train_refine)
    log.info("self-training: labeling %s with %s (refine=%s) -> %s", cfg.boxes_json,
             checkpoint, cfg.self_train_refine, out)
    label_dataset(coco, out, "boxcaseg", label_cfg, model=model, resume=resume,
                  progress=progress and info.is_main, dist=info if info.distributed else None)
    barrier(info)
