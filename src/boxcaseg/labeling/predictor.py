"""Batched box crops -> BoxCaseg probabilities -> masks pasted back into the image.

Geometry (pixel-edge coordinates, ``boxcaseg.structures``): pixel ``j`` spans ``[j, j+1)`` with
its centre at ``j + 0.5``. A box's *crop region* is the box grown by ``cfg.context`` of its
width/height on every side. ``roi_align(aligned=True)`` samples that region on a
``crop_size x crop_size`` grid whose cell centres are at ``X1 + (u + 0.5) * (X2 - X1) / S``.
Pasting inverts that map exactly: every pixel the box covers (``snap_box``: centres inside the
box) reads the probability map at its centre with ``grid_sample(align_corners=False)``, which
uses the same cell-centre convention at any map resolution. So the model may answer at its
feature resolution (``cfg.native_resolution``) and only the box's own pixels are upsampled.

Speed (CPU): crops of many images are batched into one forward pass, under
``torch.inference_mode``, in ``channels_last`` memory format, through a graph traced and frozen
with TorchScript (conv+bn folding, fused activations); see bench/results_label.md.
"""

from __future__ import annotations

import inspect
import logging
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from boxcaseg.data.transforms import normalize
from boxcaseg.engine.distributed import resolve_device
from boxcaseg.errors import ConfigError
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.config import LabelConfig, resolve_crop_size
from boxcaseg.structures import snap_box

log = logging.getLogger(__name__)

# crops made and run at once (rounded up to whole batches): ~80 MB of crops at 320 px,
# whatever the number of boxes in an image (issue 19: 3000 boxes on one image)
CROPS_IN_FLIGHT = 64


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` (None = plain fp32)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:  # native bf16 dot products (AVX512-BF16 / AMX); emulated bf16 would be slower
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def crop_regions(boxes_xyxy: np.ndarray, context: float) -> np.ndarray:
    """XYXY boxes [K, 4] grown by ``context`` x (width, height) on each side -> [K, 4] float64."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if context == 0:
        return b.copy()
    w = (b[:, 2] - b[:, 0])[:, None]
    h = (b[:, 3] - b[:, 1])[:, None]
    grow = np.concatenate([-w, -h, w, h], axis=1) * context
    return b + grow


def image_to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [1, 3, H, W] (0..255, not yet normalised) on ``device``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # e.g. np.asarray(PIL image): torch wants to own a view
        image = image.copy()
    t = torch.from_numpy(image).to(device).permute(2, 0, 1)[None]
    return t.float()


def crop_boxes(image_t: torch.Tensor, regions: np.ndarray, size: int) -> torch.Tensor:
    """Image [1, 3, H, W] (0..255) and crop regions [K, 4] -> normalised crops [K, 3, S, S].

    Matches the training crops (``boxcaseg.data.crops``): the same cell-centre map, one
    bilinear sample per output pixel (``sampling_ratio=1``) and black outside the image
    (cropping happens before normalisation).
    """
    rois = torch.as_tensor(regions, dtype=image_t.dtype, device=image_t.device).reshape(-1, 4)
    crops = roi_align(image_t, [rois], output_size=(size, size), spatial_scale=1.0,
                      sampling_ratio=1, aligned=True)
    return normalize(crops)


def minmax_normalize(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rescale each map of ``[K, 1, h, w]`` to ``[0, 1]``: ``(p - min) / (max - min)``.

    A flat map (``max - min < eps``) carries no contrast to threshold; it is left as it is,
    so a confident all-foreground (or all-background) crop keeps its answer.
    """
    flat = probs.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span >= eps, (probs - lo) / span.clamp_min(eps), probs)


def box_probs(probs: torch.Tensor, box_xyxy: np.ndarray, region: np.ndarray, height: int,
              width: int) -> tuple[int, int, torch.Tensor]:
    """One crop region's probability map [1, 1, h, w] -> ``(c0, r0, p)``: ``p`` float
    [r1 - r0, c1 - c0] at the centres of the pixels the box covers (``snap_box``)."""
    c0, r0, c1, r1 = snap_box(box_xyxy, height, width)
    if c1 <= c0 or r1 <= r0:
        return c0, r0, torch.zeros(max(r1 - r0, 0), max(c1 - c0, 0))
    x1, y1, x2, y2 = (float(v) for v in region)
    gx = (torch.arange(c0, c1, dtype=torch.float64) + 0.5 - x1) / (x2 - x1) * 2 - 1
    gy = (torch.arange(r0, r1, dtype=torch.float64) + 0.5 - y1) / (y2 - y1) * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    grid = grid.to(dtype=probs.dtype, device=probs.device)[None]
    p = F.grid_sample(probs, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return c0, r0, p[0, 0]


def paste_probs_boxes(probs: torch.Tensor, boxes_xyxy: np.ndarray, regions: np.ndarray,
                      height: int, width: int, threshold: float, mode: str = "fixed",
                      image: np.ndarray | None = None, refine: str = "none",
                      refine_min_area: float = 0.0) -> list[BoxMask]:
    """Probability maps [K, 1, h, w] of crop regions -> K box-sized masks (``BoxMask``).

    Only the pixels each box covers (``snap_box``, clipped to the image) are sampled, so a
    mask never leaks outside its box. ``mode="minmax"`` rescales each map first
    (:func:`minmax_normalize`). ``refine`` (with the RGB ``image``): an image-driven
    refinement of the map at full resolution (``labeling.refine``) for each box of at least
    ``refine_min_area`` square pixels.
    """
    k = probs.shape[0]
    out = []
    probs = probs.float()
    if mode == "minmax" and k:
        probs = minmax_normalize(probs)
    for i in range(k):  # tiny per-box resampling ops; the model already ran batched
        c0, r0, p = box_probs(probs[i:i + 1], boxes_xyxy[i], regions[i], height, width)
        b = boxes_xyxy[i]
        if refine != "none" and p.numel() and (b[2] - b[0]) * (b[3] - b[1]) >= refine_min_area:
            from boxcaseg.labeling.refine import refine_mask
            local = refine_mask(refine, image, c0, r0, p.cpu().numpy(), threshold)
        else:
            local = (p >= threshold).cpu().numpy()
        out.append(BoxMask(c0, r0, np.ascontiguousarray(local, dtype=bool)))
    return out


class _ProbaModule(nn.Module):
    """``x -> model.predict_proba(x, **kwargs)`` as a plain forward, so it can be traced."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]):
        super().__init__()
        self.model = model
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_proba(x, **self.kwargs)


class BoxcasegPredictor:
    """A BoxCaseg model prepared for batched box-crop inference with a ``LabelConfig``.

    ``model`` needs ``predict_proba(x [N,3,S,S] normalised, out_size=None|(h,w)) -> [N,1,h,w]``
    probabilities (and an ``alpha=`` keyword if ``cfg.alpha`` is set).
    """

    def __init__(self, model: nn.Module, cfg: LabelConfig):
        cfg = resolve_crop_size(cfg, model)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device).eval()
        kwargs: dict[str, Any] = {}
        params = inspect.signature(model.predict_proba).parameters
        if not cfg.native_resolution:
            kwargs["out_size"] = (cfg.crop_size, cfg.crop_size)
        elif "out_size" in params:
            kwargs["out_size"] = None
        if cfg.alpha is not None:
            if "alpha" not in params:
                raise ConfigError(f"alpha={cfg.alpha} given but {type(model).__name__}"
                                  ".predict_proba takes no alpha")
            kwargs["alpha"] = float(cfg.alpha)
        self.memory_format = (torch.channels_last if cfg.channels_last
                              else torch.contiguous_format)
        self.model = self.model.to(memory_format=self.memory_format)
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        self.fn: nn.Module | torch.jit.ScriptModule = _ProbaModule(self.model, kwargs).eval()
        self.jit_used = False
        self.fused_used = False
        if cfg.fuse and kwargs.get("out_size", "x") is None:
            self._try_fuse()
        if cfg.jit:
            self._try_jit()

    def _example(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, self.cfg.crop_size, self.cfg.crop_size, generator=g)
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def _try_fuse(self) -> None:
        """Use ``FusedProba`` if it can be built and matches ``predict_proba`` (fp32)."""
        try:
            from boxcaseg.labeling.fused import FusedProba

            fused = FusedProba(self.model, self.cfg.alpha).to(self.device).eval()
            fused = fused.to(memory_format=self.memory_format)
            with torch.no_grad():
                x = self._example(2)
                ok = torch.allclose(fused(x), self.fn(x), atol=1e-4)
        except Exception as e:  # noqa: BLE001 - an unexpected model layout: run it as it is
            log.info("fused inference graph not used (%s: %s)", type(e).__name__, e)
            return
        if not ok:
            log.warning("fused inference graph disagrees with predict_proba; not used")
            return
        self.fn = fused
        self.fused_used = True

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def _try_jit(self) -> None:
        """Trace + freeze (under autocast: the casts are baked into the graph); keep the graph
        only if it matches eager on another batch size."""
        eager = self.fn
        tol = 1e-4
        try:
            with torch.inference_mode(False), torch.no_grad(), self._autocast(), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # trace/freeze "deprecated"
                # python-level shape logic gets baked in; the batch-size check below guards it
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(eager, self._example(2), check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
                check = self._example(1)
                diff = (frozen(check).float() - eager(check).float()).abs()
                # bf16: rounding differs between the fused graph and eager autocast; require
                # agreement on average and no gross outlier
                ok = bool(diff.max() <= tol) if self.autocast_dtype is None else bool(
                    diff.mean() <= 5e-3 and diff.max() <= 0.1)
                if not ok:
                    log.info("trace check: max |diff| %.4g, mean %.4g", float(diff.max()),
                             float(diff.mean()))
        except Exception as e:  # noqa: BLE001 - any tracing problem means: run eager
            log.warning("TorchScript trace/freeze failed (%s: %s); running eager",
                        type(e).__name__, e)
            return
        if not ok:
            log.warning("traced model disagrees with eager on a different batch size; "
                        "running eager")
            return
        self.fn = frozen
        self.jit_used = True
        # TorchScript's profiling executor optimises the graph during its first runs; do them
        # here so they count as setup, not as labeling time.
        with torch.inference_mode():
            for _ in range(2):
                frozen(self._example(min(self.cfg.batch_size, 4)))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.jit_used:
            return self.fn(x).float()
        with self._autocast():
            return self.fn(x).float()

    @torch.inference_mode()
    def predict_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops [N, 3, S, S] -> probabilities [N, 1, h, w], in batches."""
        outs = []
        for i in range(0, crops.shape[0], self.cfg.batch_size):
            x = crops[i:i + self.cfg.batch_size].contiguous(memory_format=self.memory_format)
            p = self._run(x)
            if self.cfg.tta_flip:  # the mirrored crop's answer, mirrored back, averaged
                p = 0.5 * (p + self._run(x.flip(-1)).flip(-1))
            outs.append(p)
        if not outs:
            return torch.zeros(0, 1, self.cfg.crop_size, self.cfg.crop_size)
        return torch.cat(outs)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                ) -> list[tuple[list[BoxMask], torch.Tensor]]:
        """RGB uint8 images and their XYXY boxes [K_i, 4] -> per image ``(K_i box masks,
        probs float [K_i, 1, h, w])``: ``probs`` over each box's crop region at the model's
        output resolution (what the masks were thresholded from, before any
        ``threshold_mode`` rescaling; crop-sized, never image-sized).

        The crops of all the images go through the model together (``cfg.batch_size`` per
        forward pass), so images with few boxes still fill the batches; they are made, run
        and pasted in groups of :attr:`group_size` crops, so memory stays flat however many
        boxes an image has. Groups are whole batches, so the batches are the same as if all
        crops were made at once."""
        cfg = self.cfg
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
        masks: list[list[BoxMask]] = [[] for _ in images]
        probs: list[list[torch.Tensor]] = [[] for _ in images]
        crops: list[torch.Tensor] = []
        pieces: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image, boxes, regions)

        def run_group() -> None:
            if not crops:
                return
            p_all = self.predict_crops(torch.cat(crops))
            start = 0
            for i, b, r in pieces:
                p = p_all[start:start + len(b)]
                h, w = images[i].shape[:2]
                masks[i].extend(paste_probs_boxes(p, b, r, h, w, cfg.threshold,
                                                  cfg.threshold_mode, images[i], cfg.refine,
                                                  cfg.refine_min_area))
                probs[i].append(p.cpu())
                start += len(b)
            crops.clear()
            pieces.clear()

        filled = 0
        for i, (image, b) in enumerate(zip(images, boxes)):
            regions = crop_regions(b, cfg.context)
            image_t = image_to_tensor(image, self.device) if len(b) else None
            s = 0
            while s < len(b):
                take = min(len(b) - s, self.group_size - filled)
                crops.append(crop_boxes(image_t, regions[s:s + take], cfg.crop_size))
                pieces.append((i, b[s:s + take], regions[s:s + take]))
                filled += take
                s += take
                if filled == self.group_size:
                    run_group()
                    filled = 0
            del image_t
        run_group()
        empty = torch.zeros(0, 1, cfg.crop_size, cfg.crop_size)
        return [(m, torch.cat(p) if p else empty) for m, p in zip(masks, probs)]

    @property
    def group_size(self) -> int:
        """Crops made and run at once: whole batches, at least ``CROPS_IN_FLIGHT``."""
        bs = self.cfg.batch_size
        return bs * max(1, -(-CROPS_IN_FLIGHT // bs))


def soft_ious(probs: torch.Tensor, threshold: float, mode: str = "fixed") -> list[float]:
    """Expected IoU of ``p >= threshold`` under ``p``, for each map of ``[K, 1, h, w]``
    (the network's own quality estimate, ``labeling.score``).

    Read each pixel's probability ``p`` as the chance that it is object: the mask
    ``M = p >= t`` then has expected intersection ``sum_M p`` and union
    ``|M| + sum_(not M) p``. An empty mask scores 0."""
    if probs.shape[0] == 0:
        return []
    p = probs.double()
    if mode == "minmax":
        p = minmax_normalize(p)
    p = p.flatten(1).clamp(0.0, 1.0)
    fg = p >= threshold
    inter = (p * fg).sum(1)
    union = fg.sum(1).double() + (p * ~fg).sum(1)
    iou = torch.where(fg.any(1), inter / union.clamp_min(1e-12), torch.zeros_like(inter))
    return [float(v) for v in iou.clamp(0.0, 1.0).tolist()]


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, BoxcasegPredictor]]" = (
    weakref.WeakKeyDictionary())


def get_predictor(model: nn.Module | BoxcasegPredictor, cfg: LabelConfig) -> BoxcasegPredictor:
    """A (cached per model and config) predictor, so repeated calls do not re-trace."""
    if isinstance(model, BoxcasegPredictor):
        return model
    key = tuple(sorted(vars(cfg).items()))
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    pred = BoxcasegPredictor(model, cfg)
    _CACHE[model] = (key, pred)
    return pred
