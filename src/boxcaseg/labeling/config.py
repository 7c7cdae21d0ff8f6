"""Auto-labeler settings (paper Sec. 3.4 and Sec. 4 "Implementation details").

Paper defaults: each GT box is cropped from its image (no context) and resized to 320x320
(here: the checkpoint's training crop unless set, see ``crop_size``);
masks are merged with "smaller object better" and dropped below a proxy box agreement of 0.95
(Tab. 8, the best COCO threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from boxcaseg.errors import ConfigError

METHODS = ("boxcaseg", "grabcut", "box", "sam")
SAM_MODELS = ("vit_b", "vit_l", "vit_h")  # official SAM model types (labeling/sam.py)
REFINES = ("none", "guided", "grabcut")
# how a run is executed, not what it produces: free to change on ``label --resume``
RUNTIME_KEYS = frozenset({"device", "batch_size", "chunk_images", "jit", "fuse", "precision",
                          "channels_last", "sam_batch"})


@dataclass
class LabelConfig:
    # --- geometry -------------------------------------------------------------------------
    # every box crop is resized to crop_size x crop_size; None = the checkpoint's training
    # crop (a model trained at 160 and labeling at 320 loses 1.7 mIoU* points on real photos),
    # 320 (the paper's) for a model without one. An explicit value always wins.
    crop_size: int | None = None
    context: float = 0.0          # margin added on each side, as a fraction of box w/h (0 = box)
    threshold: float = 0.5        # probability -> mask
    # "fixed": mask = p >= threshold; "minmax": p is first rescaled to [0, 1] per crop,
    # (p - min) / (max - min), as the authors' released code does (bench/results_real.md)
    threshold_mode: str = "fixed"
    # --- label-time quality options (bench/results_real.md says what each measured) --------
    tta_flip: bool = False        # average the crop's and its mirror image's probabilities
    # image-driven refinement of each box's probability map at full resolution
    # (labeling/refine.py): "none", "guided" (guided filter, cheap) or "grabcut" (GrabCut
    # seeded by the network's map: a slower quality mode)
    refine: str = "none"
    # refine only boxes of at least this many square pixels: COCO's "large" (96 x 96), where
    # the coarse map loses the edge; on small boxes GrabCut's colour models have too few
    # pixels and refining them lowered mIoU* (bench/results_real.md)
    refine_min_area: float = 9216.0
    # --- merge and drop (Sec. 3.4) --------------------------------------------------------
    merge: bool = True            # "smaller object better"
    drop: bool = True             # "proxy box agreement"
    drop_iou: float = 0.95        # keep a mask iff IoU(tight box of mask, snapped GT box) >= this
    # calibrated rule (boxcaseg calibrate): also ignore a mask whose score is below this
    # (labeling/score.py); None = proxy-box rule only
    min_score: float | None = None
    # mixed supervision: annotations that already carry a ground-truth mask are kept as given
    # (mask_source "gt") and not labeled; False = label every box
    keep_gt_masks: bool = True
    # --- inference ------------------------------------------------------------------------
    batch_size: int = 16          # crops per forward pass (measured: see bench/results_label.md)
    alpha: float | None = None    # fusion weight of the salient head; None = as trained
    device: str = "auto"          # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    channels_last: bool = True    # NHWC convolutions: faster on CPU (oneDNN) and tensor cores
    jit: bool = True              # torch.jit.trace + freeze the predict graph (fused conv+bn+act)
    fuse: bool = False            # re-associated BoxCaseg inference graph (labeling/fused.py
    #                               # FusedProba; exact, verified against predict_proba;
    #                               # not measurably faster on this CPU, so off by default)
    precision: str = "auto"       # "fp32", "bf16" (autocast) or "auto": bf16 where the hardware
    #                               # has native bf16 matmul (AVX512-BF16/AMX CPUs, Ampere+ GPUs)
    native_resolution: bool = True  # predict at the model's output resolution and resample only
    #                               # the box's own pixels (instead of upsampling to crop_size)
    grabcut_iters: int = 5        # cv2.grabCut iterations for the GrabCut baseline
    # --- method sam (labeling/sam.py; the checkpoint is --sam-checkpoint) ------------------
    sam_model: str = "vit_b"      # SAM model type of the checkpoint: vit_b, vit_l or vit_h
    sam_batch: int = 64           # boxes per SAM prompt batch (one image embedding per image)
    sam_multimask: bool = False   # keep the best of SAM's 3 masks by its predicted IoU
    # --- output ---------------------------------------------------------------------------
    segmentation: str = "rle"     # "rle" (COCO compressed RLE) or "polygon" (exact, holes
    #                               # keyholed: labeling/masks.py)
    # --- bookkeeping ----------------------------------------------------------------------
    chunk_images: int = 8         # images per progress-sidecar flush (resume granularity)

    def validate(self) -> None:
        if self.crop_size is not None and not 16 <= self.crop_size <= 2048:
            raise ConfigError(f"crop_size must be in [16, 2048], got {self.crop_size}")
        if not 0.0 <= self.context <= 2.0:
            raise ConfigError(f"context must be a margin fraction in [0, 2], got {self.context}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.threshold_mode not in ("fixed", "minmax"):
            raise ConfigError(f"threshold_mode must be 'fixed' or 'minmax', got "
                              f"{self.threshold_mode!r}")
        if not 0.0 <= self.drop_iou <= 1.0:
            raise ConfigError(f"drop_iou must be in [0, 1], got {self.drop_iou}")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"min_score must be in [0, 1] or null, got {self.min_score}")
        if self.refine not in REFINES:
            raise ConfigError(f"refine must be one of {list(REFINES)}, got {self.refine!r}")
        if self.refine_min_area < 0:
            raise ConfigError(f"refine_min_area must be >= 0, got {self.refine_min_area}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1] or null, got {self.alpha}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.grabcut_iters < 1:
            raise ConfigError(f"grabcut_iters must be >= 1, got {self.grabcut_iters}")
        if self.sam_model not in SAM_MODELS:
            raise ConfigError(f"sam_model must be one of {list(SAM_MODELS)}, got "
                              f"{self.sam_model!r}")
        if self.sam_batch < 1:
            raise ConfigError(f"sam_batch must be >= 1, got {self.sam_batch}")
        if self.segmentation not in ("rle", "polygon"):
            raise ConfigError(f"segmentation must be rle or polygon, got {self.segmentation!r}")
        if self.chunk_images < 1:
            raise ConfigError(f"chunk_images must be >= 1, got {self.chunk_images}")

    def __post_init__(self) -> None:
        self.validate()


DEFAULT_CROP = 320  # the paper's label crop, for models that do not say how they were trained


def resolve_crop_size(cfg: LabelConfig, model: object = None) -> LabelConfig:
    """``cfg`` with ``crop_size`` filled in: as set, else the model's training crop, else 320."""
    if cfg.crop_size is not None:
        return cfg
    trained = getattr(model, "train_crop_size", None)
    return replace(cfg, crop_size=int(trained) if trained else DEFAULT_CROP)


def mask_settings(cfg: LabelConfig) -> dict[str, object]:
    """The fields of ``cfg`` that change the labels (all but :data:`RUNTIME_KEYS`)."""
    return {k: v for k, v in vars(cfg).items() if k not in RUNTIME_KEYS}
