"""``TrainConfig``: joint BoxCaseg training settings, with the paper's defaults (Sec. 3.2.2, 4).

Paper values: HRNetV2-W48 defaults (lr 4e-3, weight decay 1e-4, momentum 0.9), batch 16 per
GPU, box:salient ratio r_ws = 9:7 in every batch, salient images resized to 320 and randomly
cropped to 288, box crops resized to 288, MIL smooth weight 0.05. Not stated in the paper and
chosen here: the poly schedule (HRNet segmentation default, power 0.9) and the epoch count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from boxcaseg.data.occlusion import SCALE_RANGE
from boxcaseg.errors import ConfigError
from boxcaseg.model import ModelConfig


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # data
    salient_root: str = ""  # DUTS-style folder (images/ + masks/ or DUTS-TR-Image/-Mask)
    boxes_json: str = ""  # COCO JSON with the box-supervised training boxes
    images_root: str = ""  # folder of the box images; "" = <boxes_json folder>/images
    # mixed supervision: boxes of boxes_json that carry a ground-truth mask (data/gt_masks.py)
    # also train the pixel heads, like salient crops; a labels file's masks do only as a
    # teacher (teacher_labels below)
    gt_masks: bool = True
    # teacher: a labels file (`boxcaseg label` output of any source: sam, boxcaseg for
    # self-training, grabcut) whose masks train the pixel heads on their boxes like GT masks
    # (data/teacher.py); "" = none. Masks with ignore_mask: true are never used.
    teacher_labels: str = ""
    teacher_min_score: float | None = None  # use only teacher masks with score >= this
    teacher_weight: str = "score"  # pixel-loss weight of a teacher mask: "score" or "uniform" (1)
    # self-training (engine/self_train.py; not in the paper): after training, label boxes_json
    # with the model, refined by self_train_refine (LabelConfig.refine), and train again with
    # those masks as teacher_labels; this many times
    self_train_rounds: int = 0
    self_train_refine: str = "grabcut"
    # where a round after the first starts: "scratch" (where round 0 started: the ImageNet
    # backbone, or init_weights if set) or "previous" (the previous round's final weights:
    # fine-tuned, so the last model has had every round's steps for the time of one more round)
    self_train_init: str = "scratch"
    # a boxcaseg checkpoint whose model weights this training starts from (fine-tuning; the
    # optimizer and schedule start afresh); "" = the backbone's ImageNet weights
    init_weights: str = ""
    num_salient: int | None = None  # use N salient images, a random sample drawn with `seed`; None = all
    cache_images_mb: int = 1024  # keep decoded images in RAM if the set fits (per worker)
    # unusable samples (unreadable, size mismatch, empty mask) are skipped and counted; the run
    # stops up front if more than this fraction of the box or the salient set is unusable
    max_bad_fraction: float = 0.05
    # output
    out_dir: str = "runs/boxcaseg"
    # batches and crops
    batch_size: int = 16  # per GPU / process
    box_per_batch: int = 9  # r_ws = 9:7
    crop_size: int = 288
    salient_resize: int = 320
    # box jitter: "centre" (the authors' released code: shift the centre by U(-.25,.25) x w/h,
    # rescale by U(.5,1.5) about it, clip to the image) or "corner" (shift the top-left corner)
    box_jitter: str = "centre"
    # salient crops: "image" (paper: resize to salient_resize, random crop_size crop), "box"
    # (the mask's box jittered like a box image's: the framing the labeler sees), or "mixed"
    salient_crop: str = "image"
    # probability of pasting a second salient object over a salient crop, in front of or
    # behind the framed one (data/occlusion.py): teaches the pixel heads "the object the box
    # frames, not its neighbour"; 0 = off, as in the paper
    salient_occlude: float = 0.0
    # the pasted object's longer side as a fraction of the crop, drawn uniformly in this range
    salient_occlude_scale: tuple[float, float] = SCALE_RANGE
    # which samples the salient and transferred heads see in training: "salient" (paper
    # Fig. 4: salient features only, so their BatchNorm statistics are salient-only) or "all"
    pixel_heads_on: str = "salient"
    # optimisation
    epochs: int = 30  # one epoch = one pass through the salient set
    max_steps: int | None = None  # if set, overrides epochs
    # "sgd" is the paper's (HRNet recipe); "adamw" converges in far fewer steps, which is what a
    # minutes-long CPU schedule needs (measured: see the packaged demo config)
    optimizer: str = "sgd"
    lr: float = 4e-3
    momentum: float = 0.9  # SGD momentum (AdamW: beta1 stays at its default 0.9)
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    smooth_weight: float = 0.05
    # BoxInst's colour-affinity pairwise term on the weak head's box crops (losses.py); 0 =
    # off, as in the paper
    pairwise_weight: float = 0.0
    amp: bool = True  # mixed precision; only used on CUDA
    # runtime
    seed: int = 0
    num_workers: int = 4
    checkpoint_every: int = 500  # steps; a checkpoint is also written at the end
    log_every: int = 20  # steps between TensorBoard points
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"

    def box_images(self) -> Path:
        """The folder of the box images: ``images_root``, or ``images/`` beside ``boxes_json``."""
        return Path(self.images_root) if self.images_root else Path(self.boxes_json).parent / "images"

    def validate(self) -> None:
        if hasattr(self.model, "validate"):
            self.model.validate()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.box_per_batch <= self.batch_size:
            raise ConfigError(f"box_per_batch must be in [0, batch_size={self.batch_size}], "
                              f"got {self.box_per_batch}")
        if self.crop_size < 16:
            raise ConfigError(f"crop_size must be >= 16, got {self.crop_size}")
        if self.salient_resize < self.crop_size:
            raise ConfigError(f"salient_resize ({self.salient_resize}) must be >= crop_size "
                              f"({self.crop_size})")
        if self.box_jitter not in ("centre", "corner"):
            raise ConfigError(f"box_jitter must be 'centre' or 'corner', got {self.box_jitter!r}")
        if self.salient_crop not in ("image", "box", "mixed"):
            raise ConfigError("salient_crop must be 'image', 'box' or 'mixed', got "
                              f"{self.salient_crop!r}")
        if not 0.0 <= float(self.salient_occlude) <= 1.0:
            raise ConfigError(f"salient_occlude must be in [0, 1], got {self.salient_occlude}")
        scale = tuple(float(v) for v in self.salient_occlude_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
            raise ConfigError("salient_occlude_scale must be two numbers 0 < low <= high, got "
                              f"{list(self.salient_occlude_scale)}")
        if self.teacher_min_score is not None and not 0.0 <= self.teacher_min_score <= 1.0:
            raise ConfigError(f"teacher_min_score must be in [0, 1] or null, got "
                              f"{self.teacher_min_score}")
        if self.teacher_weight not in ("score", "uniform"):
            raise ConfigError(f"teacher_weight must be 'score' or 'uniform', got "
                              f"{self.teacher_weight!r}")
        if self.teacher_labels and self.box_per_batch == 0:
            raise ConfigError("teacher_labels supervises box images: it needs box_per_batch > 0")
        if self.self_train_rounds < 0:
            raise ConfigError(f"self_train_rounds must be >= 0, got {self.self_train_rounds}")
        if self.self_train_rounds and self.box_per_batch == 0:
            raise ConfigError("self_train_rounds labels the box images: it needs box_per_batch > 0")
        from boxcaseg.labeling.config import REFINES
        if self.self_train_refine not in REFINES:
            raise ConfigError(f"self_train_refine must be one of {list(REFINES)}, got "
                              f"{self.self_train_refine!r}")
        if self.self_train_init not in ("scratch", "previous"):
            raise ConfigError("self_train_init must be 'scratch' or 'previous', got "
                              f"{self.self_train_init!r}")
        if self.pixel_heads_on not in ("salient", "all"):
            raise ConfigError("pixel_heads_on must be 'salient' or 'all', got "
                              f"{self.pixel_heads_on!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.epochs < 1 and not self.max_steps:
            raise ConfigError("set epochs >= 1 or max_steps >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or null), got {self.max_steps}")
        if self.num_salient is not None and self.num_salient < 1:
            raise ConfigError(f"num_salient must be >= 1 (or null for all), got {self.num_salient}")
        for name in ("lr", "momentum", "weight_decay", "poly_power", "smooth_weight",
                     "pairwise_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")
        if self.num_workers < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("num_workers must be >= 0, checkpoint_every and log_every >= 1")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
