"""Configs: typed dataclasses, YAML presets, dotted command-line overrides, the resolved config saved.

Each stage defines a dataclass of its own (``FreeMaskConfig``, ``TrainConfig``, ...) whose defaults are the
official values. A *preset* is a YAML file under ``unsolo/configs/<stage>/<name>.yaml`` holding only the
fields it changes (nested dataclasses are nested mappings). Resolution order: dataclass defaults <- preset
<- ``--set key.sub=value`` overrides (values parsed as YAML: ``1e-3``, ``true``, ``[1, 2]``).
A config that chains stages holds each stage's overrides as a list (``train_overrides``); with ``nested``,
:func:`resolve` takes them as nested keys too (``train.solver.max_iter=600`` adds ``solver.max_iter=600`` to it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from unsolo.errors import UnsoloError
from unsolo.utils.io import atomic_write

T = TypeVar("T")
CONFIG_DIR = Path(__file__).parent / "configs"
log = logging.getLogger("unsolo.config")


#: stage -> (preset taken on a CPU when none is given, the official recipe's preset). The official recipes are GPU
#: recipes (ImageNet DenseCL: 9-12 hours for 600 images on 2 CPU cores); a default should fit the machine.
DEVICE_PRESETS = {"pretrain": ("small_r18", "densecl_r50"), "train": ("small_r18", "freesolo_r101")}


def preset_for_device(stage: str, preset: str | None, device: str = "auto") -> str | None:
    """The preset a training stage uses: ``preset`` when given; otherwise the CPU preset on a CPU and the official
    recipe on a GPU, saying which on stderr (one line)."""
    if preset is not None or stage not in DEVICE_PRESETS:
        return preset
    import sys

    import torch

    dev = str(device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    cpu_preset, official = DEVICE_PRESETS[stage]
    if dev.startswith("cpu"):
        print(f"unsolo {stage}: no --preset given, running on the CPU: using '{cpu_preset}', the CPU preset "
              f"(--preset {official} for the official recipe)", file=sys.stderr)
        return cpu_preset
    print(f"unsolo {stage}: no --preset given, running on {dev}: using the official recipe ({official}; "
          f"--preset {cpu_preset} for the small CPU-scale one)", file=sys.stderr)
    return official


def list_presets(stage: str) -> list[str]:
    d = CONFIG_DIR / stage
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def read_preset(stage: str, preset: str | os.PathLike) -> dict:
    """A preset by name (``unsolo/configs/<stage>/<name>.yaml``) or by path to a YAML file."""
    p = Path(preset)
    if not p.suffix:
        p = CONFIG_DIR / stage / f"{preset}.yaml"
        if not p.is_file():
            raise UnsoloError(f"unknown {stage} preset {preset!r}; available: {', '.join(list_presets(stage)) or 'none'}")
    if not p.is_file():
        raise UnsoloError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UnsoloError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UnsoloError(f"config file {p} must hold a mapping")
    return data


def parse_overrides(items: Iterable[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UnsoloError(f"override {item!r} must look like key=value (e.g. solver.lr=0.002)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; unknown keys raise a clear error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise UnsoloError(
            f"unknown config key(s) {', '.join(sorted(where + k for k in unknown))}; "
            f"valid keys: {', '.join(sorted(where + k for k in fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UnsoloError(f"config key {where}{name} must be a mapping")
            base = dataclasses.asdict(fields[name].default_factory())  # type: ignore[misc]
            kwargs[name] = from_dict(tp, merge_dicts(base, value), where=f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, where + name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except UnsoloError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args if a is not type(None))
        raise UnsoloError(f"config key {name} must be {names}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UnsoloError(f"config key {name} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_coerce(v, a, name) for v, a in zip(value, args))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, name) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is typing.Literal:
        if value not in args:
            raise UnsoloError(f"config key {name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    if tp in (int, float, bool, str):
        raise UnsoloError(f"config key {name} must be {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict:
    d = dataclasses.asdict(cfg)

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(d)


def rename_keys(data: dict, renamed: dict[str, str], where: str) -> dict:
    """``data`` with the old top-level option names of ``renamed`` (old -> new) replaced by the new ones, saying so
    in one line each (the old names are still accepted, for now)."""
    out: dict = {}
    for key, value in data.items():
        if key in renamed:
            log.warning("%s: option %r is deprecated, use %r", where, key, renamed[key])
            key = renamed[key]
        out[key] = value
    return out


def split_nested(overrides: Iterable[str], nested: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """Overrides meant for an inner stage's config, ``train.solver.max_iter=600`` with ``nested = {"train":
    "train_overrides"}``: taken out as ``solver.max_iter=600`` under the list option they extend; the others as
    they are. The inner config resolves (and validates) them itself, later."""
    rest: list[str] = []
    inner: dict[str, list[str]] = {}
    for item in overrides or []:
        key, eq, raw = item.partition("=")
        prefix, dot, sub = key.strip().partition(".")
        if not (eq and dot and prefix in nested):
            rest.append(item)
            continue
        if not sub:
            raise UnsoloError(f"override {item!r} names no key after {prefix!r} (e.g. {prefix}.KEY=VALUE)")
        inner.setdefault(nested[prefix], []).append(f"{sub}={raw}")
    return rest, inner


def resolve(cls: type[T], stage: str, preset: str | None = None, overrides: Iterable[str] = (), extra: dict | None = None,
            renamed: dict[str, str] | None = None, nested: dict[str, str] | None = None) -> T:
    """Dataclass defaults <- preset <- ``extra`` (from named CLI flags) <- dotted overrides.

    ``renamed``: old top-level option names -> new ones; an old name in any layer counts as the new one.
    ``nested``: key prefix -> a list-of-overrides option (``{"train": "train_overrides"}``): an override
    ``train.solver.max_iter=600`` is appended to that list as ``solver.max_iter=600`` (after the preset's and any
    ``train_overrides=[...]`` given), instead of being a key of ``cls``.
    """
    renamed = {**getattr(cls, "RENAMED_OPTIONS", {}), **(renamed or {})}  # a config's own old option names
    overrides, inner = split_nested(overrides, nested or {})
    layers = [read_preset(stage, preset) if preset else {},
              {k: v for k, v in (extra or {}).items() if v is not None}, parse_overrides(overrides)]
    data: dict = {}
    for layer in layers:
        data = merge_dicts(data, rename_keys(layer, renamed, stage) if renamed else layer)
    for name, items in inner.items():
        default = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory  # type: ignore[arg-type]
        before = (data[name] if name in data else default()) or []  # type: ignore[misc]
        data[name] = [*before, *items] if isinstance(before, (list, tuple)) else before  # not a list: from_dict says so
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML next to a stage's outputs (atomically)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return atomic_write(path, lambda f: f.write(text))
