"""Dataclass configs: paper defaults in code, YAML files and ``key=value`` CLI overrides on top.

Each stage owns its config dataclass next to its code (``model/config.py``,
``engine/config.py``, ``labeling/config.py``, ``maskrcnn/config.py``); this module holds the
strict loader they share. Unknown keys are rejected with the key's dotted path and the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from boxcaseg.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# YAML 1.1 (PyYAML) reads "1e-3" and "4e30" as strings: a float needs a dot and a signed
# exponent there. Users write them anyway, in files and in lr=1e-3 overrides.
_YAML11_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a (possibly partial) mapping; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain (YAML/JSON-safe) dict of a config dataclass."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        d = nxt
    d[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "model.backbone=hrnet_w48"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. lr=0.01)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value ({e})") from e
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None, base: T | None = None) -> T:
    """Defaults (or ``base``) <- YAML file <- ``key=value`` overrides, validated strictly."""
    data: dict[str, Any] = to_dict(base) if base is not None else {}
    where = cls.__name__
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: malformed YAML ({e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = _merge(data, loaded)
        where = str(p)
    data = _merge(data, parse_overrides(overrides))
    return from_dict(cls, data, where)


# recipes shipped inside the package (boxcaseg/configs/), usable by name as --config NAME
RECIPES: dict[str, str] = {
    "real-cpu": "boxcaseg_real_cpu.yaml",      # BoxCaseg on real photos, 2 CPU cores, offline
    "demo-cpu": "boxcaseg_demo_cpu.yaml",      # BoxCaseg on the synthetic demo data
    "maskrcnn-demo-cpu": "maskrcnn_demo_cpu.yaml",
}


def packaged_config(name: str) -> Path:
    """Path of a YAML shipped inside the package (``boxcaseg/configs/``)."""
    from importlib import resources

    path = Path(str(resources.files("boxcaseg") / "configs" / name))
    if not path.is_file():
        raise FileNotFoundError(f"packaged config {name} not found at {path}; "
                                "reinstall boxcaseg")
    return path


def resolve_config_path(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """A recipe name from :data:`RECIPES` -> its packaged YAML; anything else unchanged."""
    if isinstance(path, str) and path in RECIPES:
        return packaged_config(RECIPES[path])
    return path


def load_command_config(cls: type[T], path: str | os.PathLike | None,
                        overrides: list[str] | None, out_dir: str | None = None) -> T:
    """``load_config`` for a training command: ``--out DIR`` wins over ``out_dir`` anywhere;
    ``path`` may name a packaged recipe (``real-cpu``, ``demo-cpu``, ...)."""
    overrides = list(overrides or [])
    if out_dir:
        overrides.append(f"out_dir={out_dir}")
    return load_config(cls, resolve_config_path(path), overrides)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
