"""Segment Anything (SAM) checkpoints as a mask source: ``boxcaseg label --method sam``.

Bring your own SAM: an official checkpoint (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
``sam_vit_h_4b8939.pth``) or a fine-tuned one with the same layout, run through the official
``segment_anything.SamPredictor`` (install the extra: ``pip install -e ".[sam]"``; nothing in
the default install imports it).

Per image, :class:`SamSource` computes ONE image embedding (``set_image``: the official
``ResizeLongestSide`` resize to the model's input size, normalisation and zero padding), then
prompts all of the image's boxes with their XYXY box (``transform.apply_boxes_torch`` maps
pixel-edge image coordinates into the resized frame) in batches of ``sam_batch`` boxes
(``predict_torch``: one mask decoder pass per batch, masks upsampled back to the image's own
size by the official ``postprocess_masks``). Each mask is then confined to the pixels its box
covers (``structures.snap_box``): exactly ``BoxMask.from_full(mask & box_mask, box)``, done
by cropping. Batching changes nothing but speed: the masks equal one-box-at-a-time prompting
(tested; the decoder's float32 logits differ by ~1e-7 between batch sizes).

``multimask_output`` is off by default (``sam_multimask: false``): one mask per box, which is
what the SAM authors use for box prompts (a box is not an ambiguous prompt); with it on, the
best of the three masks by SAM's predicted IoU is kept. We could not measure which is better
(no SAM weights can be downloaded here).

How SAM's masks are scored (``labeling/score.py``): the labeler's score is

    score = soft * merge_kept * sqrt(proxy_iou) * (1 - box_overlap)

where ``soft`` is the source's own estimate of its mask's IoU with the object. For BoxCaseg
that is the soft IoU under its probability map; for SAM it is SAM's *predicted IoU* (the IoU
head of the mask decoder), clipped to [0, 1], returned as ``SourceMasks.quality``. Merge
("smaller object better"), drop (proxy box agreement) and ``boxcaseg calibrate`` then work on
SAM's masks exactly as on BoxCaseg's.

Resume binds to the model: :meth:`SamSource.settings` is the model type plus the checkpoint's
content fingerprint (``runlock.file_fingerprint``).

:func:`load_sam` turns the usual mistakes into one line (``ConfigError``/``DataError``):
the extra not installed, the checkpoint path missing or unreadable, and a checkpoint that
does not fit ``--sam-model`` (it names the missing/unexpected/mis-shaped keys and, for the
official image encoders, which model type the checkpoint looks like).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boxcaseg.errors import ConfigError, DataError
from boxcaseg.labeling.config import SAM_MODELS  # noqa: F401  (the --sam-model choices)
from boxcaseg.labeling.masks import BoxMask
from boxcaseg.labeling.sources import MaskSource, SourceMasks
from boxcaseg.structures import snap_box

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[sam]"'
# the official image encoders' widths, to say which type a checkpoint that does not fit is
ENCODER_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_WIDTH_KEY = "image_encoder.patch_embed.proj.weight"
# full-image mask logits per predict_torch call (B x H x W floats): a 24 MP photo with 64
# boxes would otherwise need ~6 GB; smaller calls give the same masks
MAX_MASK_PIXELS = 1 << 27


def import_segment_anything() -> Any:
    """The ``segment_anything`` package, or a ``ConfigError`` saying how to install it."""
    try:
        import segment_anything
    except ImportError as e:
        raise ConfigError(f"--method sam needs the segment-anything package ({e}); install "
                          f"the extra: {INSTALL_HINT}") from None
    return segment_anything


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: one line, naming the file
        raise DataError(f"{path}: cannot read it as a PyTorch checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None
    if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in ("model", "state_dict"):  # a training checkpoint wrapping the weights
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise DataError(f"{path}: not a state dict (found {type(obj).__name__}); "
                        "--sam-checkpoint takes a SAM checkpoint (.pth)")
    return {str(k): v for k, v in obj.items() if torch.is_tensor(v)}


def fit_problems(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]
                 ) -> tuple[list[str], list[str], list[str]]:
    """Keys of the model missing from ``state``, keys of ``state`` the model lacks, and keys
    present in both with other shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    return missing, unexpected, shapes


def _mismatch_message(path: Path, model_type: str, missing: list[str], unexpected: list[str],
                      shapes: list[str], state: Mapping[str, torch.Tensor]) -> str:
    parts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected"]
    if shapes:
        parts.append(f"{len(shapes)} mis-shaped")
    first = ", ".join([*(f"missing {k}" for k in missing[:1]),
                       *(f"unexpected {k}" for k in unexpected[:1]),
                       *(f"{k} {tuple(state[k].shape)}" for k in shapes[:1])])
    hint = "pass the matching --sam-model"
    width = state.get(_WIDTH_KEY)
    if width is not None and width.dim() >= 1 and int(width.shape[0]) in ENCODER_WIDTHS:
        guess = ENCODER_WIDTHS[int(width.shape[0])]
        if guess != model_type:
            hint = (f"its image encoder is {guess}'s ({int(width.shape[0])} wide): pass "
                    f"--sam-model {guess}")
    elif not any(k.startswith("image_encoder.") for k in state):
        hint = "it holds no SAM image encoder: is it a SAM checkpoint?"
    counts = ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"{path}: checkpoint does not fit {model_type}: {counts} keys "
            f"(first: {first}); {hint}")


def load_sam(checkpoint: str | os.PathLike, model_type: str = "vit_b",
             device: str | torch.device = "cpu") -> torch.nn.Module:
    """An official SAM model (``segment_anything.sam_model_registry[model_type]``) with the
    weights of ``checkpoint``, in eval mode on ``device`` ("auto", "cpu", "cuda", ...).

    Errors are one line (``ConfigError``/``DataError``), never a traceback: the extra not
    installed, no such file, not a checkpoint, or a checkpoint of another model type."""
    sa = import_segment_anything()
    registry = sa.sam_model_registry
    if model_type not in registry:
        raise ConfigError(f"unknown SAM model type {model_type!r}; choose one of "
                          f"{[k for k in registry if k != 'default']}")
    path = Path(checkpoint)
    if not path.is_file():
        raise DataError(f"{path}: SAM checkpoint not found (--sam-checkpoint: the .pth file "
                        "of a SAM release, e.g. sam_vit_b_01ec64.pth for --sam-model vit_b)")
    state = _read_state_dict(path)
    with torch.device("meta"):  # the model's keys and shapes, without initialising weights
        expected = {k: v.shape for k, v in registry[model_type]().state_dict().items()}
    missing, unexpected, shapes = fit_problems(expected, state)
    if missing or unexpected or shapes:
        raise ConfigError(_mismatch_message(path, model_type, missing, unexpected, shapes,
                                            state))
    model = registry[model_type]()
    model.load_state_dict(state, strict=True)
    if isinstance(device, str):
        from boxcaseg.engine.distributed import resolve_device
        device = resolve_device(device)
    return model.to(device).eval()


class SamSource(MaskSource):
    """Box-prompted SAM masks (see the module doc). ``model``: a ``segment_anything`` ``Sam``
    (:func:`load_sam`); ``batch``: boxes per ``predict_torch`` call; ``multimask``: keep the
    best of SAM's three masks by its predicted IoU instead of its single-mask output.
    ``model_type`` and ``checkpoint`` (a path or its fingerprint) only feed :meth:`settings`."""

    name = "sam"

    def __init__(self, model: torch.nn.Module, batch: int = 64, multimask: bool = False,
                 model_type: str | None = None, checkpoint: str | os.PathLike | None = None
                 ) -> None:
        sa = import_segment_anything()
        if batch < 1:
            raise ConfigError(f"sam_batch must be >= 1, got {batch}")
        self.predictor = sa.SamPredictor(model)
        self.batch = int(batch)
        self.multimask = bool(multimask)
        self.model_type = model_type
        self.fingerprint: str | None = None
        if checkpoint is not None:
            from boxcaseg.runlock import file_fingerprint
            text = str(checkpoint)
            self.fingerprint = (text if text.startswith("sha256:")
                                else file_fingerprint(checkpoint))

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, model_type: str = "vit_b",
                        device: str | torch.device = "cpu", batch: int = 64,
                        multimask: bool = False) -> SamSource:
        model = load_sam(checkpoint, model_type, device)
        return cls(model, batch, multimask, model_type, checkpoint)

    @classmethod
    def from_config(cls, checkpoint: str | os.PathLike, cfg: Any,
                    device: str | torch.device | None = None) -> SamSource:
        """From a ``LabelConfig`` (``sam_model``, ``sam_batch``, ``sam_multimask``, and
        ``device`` unless given)."""
        return cls.from_checkpoint(checkpoint, cfg.sam_model,
                                   cfg.device if device is None else device, cfg.sam_batch,
                                   cfg.sam_multimask)

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def settings(self) -> dict[str, Any]:
        return {"sam_model": self.model_type, "sam_checkpoint": self.fingerprint}

    def masks(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
              ) -> list[SourceMasks]:
        return [self._image_masks(img, b) for img, b in zip(images, boxes)]

    def _image_masks(self, image: np.ndarray, boxes: np.ndarray) -> SourceMasks:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return SourceMasks([], [])
        h, w = image.shape[:2]
        p = self.predictor
        p.set_image(np.ascontiguousarray(image[..., :3]), image_format="RGB")
        step = max(1, min(self.batch, MAX_MASK_PIXELS // max(h * w * (3 if self.multimask
                                                                        else 1), 1)))
        out: list[BoxMask] = []
        quality: list[float] = []
        try:
            for s in range(0, len(boxes), step):
                chunk = boxes[s:s + step]
                prompt = torch.as_tensor(chunk, dtype=torch.float32, device=p.device)
                prompt = p.transform.apply_boxes_torch(prompt, (h, w))
                masks, ious, _ = p.predict_torch(None, None, prompt,
                                                 multimask_output=self.multimask)
                rows = torch.arange(len(chunk), device=ious.device)
                best = ious.argmax(1) if self.multimask else torch.zeros_like(rows)
                full = masks[rows, best].cpu().numpy()     # bool [b, H, W], the image's frame
                q = ious[rows, best].float().clamp(0.0, 1.0).cpu().tolist()
                for k, b in enumerate(chunk):
                    c0, r0, c1, r1 = snap_box(b, h, w)  # = from_full(mask & box_mask, box)
                    out.append(BoxMask(c0, r0, np.ascontiguousarray(full[k, r0:r1, c0:c1])))
                quality.extend(float(v) for v in q)
        finally:
            p.reset_image()
        return SourceMasks(out, quality)
