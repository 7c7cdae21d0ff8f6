"""Training checkpoints: one ``torch.save`` dict, written atomically, loadable with ``weights_only``.

Keys (``load_boxcaseg`` needs only the first two):

* ``model``: the network's ``state_dict`` (never the DDP wrapper's: no ``module.`` prefix);
* ``model_config``: ``boxcaseg.config.to_dict(ModelConfig)``;
* ``train_config``: ``to_dict(TrainConfig)``;
* ``optimizer``, ``scheduler``, ``scaler``, ``sampler``: their ``state_dict()``;
* ``step``: optimizer steps done; ``rng``: Python / NumPy / torch / CUDA generator states.

Everything is plain containers, numbers, strings and tensors, so ``torch.load(...,
weights_only=True)`` reads it (no pickled code).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boxcaseg.errors import DataError
from boxcaseg.io import atomic_write


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save(state)`` to a temp file then rename: a crash never leaves a torn file."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for torn / foreign files
        text = str(e)
        if "Weights only load failed" in text or "invalid load key" in text:
            what = "not a torch.save file, or one holding code boxcaseg does not unpickle"
        else:
            what = f"{type(e).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"
        raise DataError(f"{path}: cannot read checkpoint ({what}) (give a checkpoint written "
                        "by boxcaseg train or train-maskrcnn)") from e
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"{path}: not a boxcaseg checkpoint (no 'model' entry)")
    return state


def _names(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(k if len(k) <= 60 else k[:57] + "..." for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def load_weights(model: torch.nn.Module, state: Mapping[str, Any], where: str,
                 fix: str) -> None:
    """``model.load_state_dict(state, strict=True)``; when they do not fit, one short
    ``DataError``: how many tensors are missing, unexpected or of another shape, with the first
    few names, then ``fix`` (what to do). torch's own message lists every tensor, which for a
    checkpoint of another backbone is one line of ten thousand characters."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and hasattr(state[k], "shape")
                and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (e.g. {_names([k], 1)}: "
                     f"{list(state[k].shape)} in the file, {list(own[k].shape)} in the model)")
    if parts:
        raise DataError(f"{where}: weights do not fit the model: of its {len(own)} tensors "
                        f"{'; '.join(parts)} ({fix})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a non-tensor entry: keep the first line, shortened
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{where}: weights do not fit the model ({first[:200]}) ({fix})") from e


def rng_state() -> dict[str, Any]:
    """Every global generator's state, in weights_only-safe types."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
