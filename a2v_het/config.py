"""Typed configs: frozen dataclass defaults, YAML recipes holding overrides only, ``key=value`` on the command line.

A recipe is a YAML mapping whose keys mirror the dataclass tree (``frontend.heterodyne.num_bands``). Anything a
recipe does not name keeps its dataclass default, so recipes stay short and a default changes in one place.
An unknown key is an error that names its dotted path and the nearest valid key, because a silently ignored typo
(``energy_weigth``) costs a cluster run. A key that moved (:data:`MOVED_KEYS`) still loads, with a
:class:`ConfigDeprecationWarning` naming its new place, so old run folders and recipes keep working.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from a2v_het.atomic import atomic_write_text  # noqa: F401  (re-exported)

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree."""


class ConfigDeprecationWarning(FutureWarning):
    """A recipe, override or saved config uses a key that moved (:data:`MOVED_KEYS`); shown by default."""


MOVED_KEYS: tuple[tuple[str, str, str], ...] = (
    ("model.lambda_energy", "frontend.heterodyne.energy_weight", "ModelConfig"),
    ("model.lambda_surprise", "frontend.heterodyne.surprise_weight", "ModelConfig"),
)
"""(old dotted path, new dotted path, class of the old key's section): keys that moved, both paths from the root of
a run config (PretrainConfig, FinetuneConfig). The value moves to the new path with a warning; given with the new
key at once (in one recipe, or both on the command line) it is an error unless both agree. The old section loaded
on its own (``config_from_dict(ModelConfig, tree["model"])`` of an old run folder) drops the key with a warning,
since its new place is not part of what is loaded."""

ADDED_KEYS: tuple[tuple[str, str, Any], ...] = (
    ("HeterodyneConfig", "context_bands", 0),
    ("HeterodyneConfig", "band_extraction", "fft"),
)
"""(section class, key, value): keys added after configs were first saved, with the value that gives the model a
config saved before them describes. A saved config (:func:`config_from_dict`) whose section lacks the key gets
that value instead of today's default, so an old run folder rebuilds the model it trained; recipes get the
default."""

_MISSING = object()


def _path_type(cls: type, parts: list[str]) -> Any:
    """The annotated type at the dotted path ``parts`` under the dataclass ``cls``; None if there is no such field."""
    tp: Any = cls
    for part in parts:
        tp = _unwrap_optional(tp)[0]
        if not dataclasses.is_dataclass(tp):
            return None
        tp = _field_types(tp).get(part)
        if tp is None:
            return None
    return tp


def _get_path(tree: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _move_keys(cls: type, tree: dict[str, Any], source: str) -> dict[str, Any]:
    """``tree`` with every :data:`MOVED_KEYS` old key at its new path (a copy if anything moved; see there)."""
    copied = False
    for old, new, section_cls in MOVED_KEYS:
        *section, leaf = old.split(".")
        if cls.__name__ == section_cls:  # the old key's section loaded on its own
            section = []
        else:
            section_tp = _path_type(cls, section)
            if getattr(_unwrap_optional(section_tp)[0], "__name__", None) != section_cls:
                continue  # a config without that section: the key means nothing here
        node = _get_path(tree, section)
        if not isinstance(node, dict) or leaf not in node:
            continue
        if not copied:
            tree, copied = copy.deepcopy(tree), True
            node = _get_path(tree, section)
        value = node.pop(leaf)
        if not section:
            warnings.warn(f"{source}: config key {old!r} is deprecated, it is now {new!r}; ignored here "
                          f"({cls.__name__} is loaded without that section)", ConfigDeprecationWarning, stacklevel=3)
            continue
        *new_section, new_leaf = new.split(".")
        existing = _get_path(tree, new.split("."))
        if existing is not _MISSING and existing != value:
            raise ConfigError(f"{source}: {old!r} (deprecated) = {value!r} and {new!r} = {existing!r} are both set; "
                              f"keep only {new!r}")
        target = tree
        for part in new_section:
            if target.get(part) is None:  # absent, or an empty YAML section
                target[part] = {}
            if not isinstance(target[part], dict):
                raise ConfigError(f"{source}: {'.'.join(new_section)!r} must be a mapping to take {old!r}")
            target = target[part]
        target[new_leaf] = value
        warnings.warn(f"{source}: config key {old!r} is deprecated, use {new!r} (the value {value!r} was moved "
                      "there)", ConfigDeprecationWarning, stacklevel=3)
    return tree


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert a YAML value to the annotated type; ints are accepted for floats, lists for tuples."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: null is not allowed here (expected {getattr(tp, '__name__', tp)})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _merge(tp(), value, path)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}{hint}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept any number written as one.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def _merge(base: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """Return ``base`` with ``overrides`` (a nested mapping) applied; unknown keys raise with the nearest name."""
    types_ = _field_types(type(base))
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if key not in types_:
            moved = {old: new for old, new, _ in MOVED_KEYS}.get(path)
            near = difflib.get_close_matches(str(key), list(types_), n=1, cutoff=0.5)
            if moved:
                hint = f"; it moved to {moved!r}"
            elif near:
                hint = f"; did you mean {prefix + near[0]!r}?"
            else:
                hint = f"; valid keys: {sorted(types_)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = _merge(current, value, f"{path}.")
        else:
            changes[key] = _coerce(value, types_[key], path)
    merged = dataclasses.replace(base, **changes)
    validate = getattr(merged, "validate", None)
    if callable(validate):
        validate()
    return merged


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[8000, 16000]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() != "" else ""
    return tree


def _deep_update(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
    return dst


def load_config(cls: type[T], recipe: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, then the recipe's YAML overrides, then ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping, got {type(loaded).__name__}")
        tree = _move_keys(cls, loaded, f"recipe {str(path)!r}")
    if overrides:
        tree = _deep_update(tree, _move_keys(cls, parse_overrides(overrides), "command line"))
    return _merge(cls(), tree)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


def _added_keys(cls: type, tree: Any) -> Any:
    """``tree`` (a copy where anything changes) with the :data:`ADDED_KEYS` a saved section lacks filled in."""
    if not isinstance(tree, dict) or not dataclasses.is_dataclass(cls):
        return tree
    out = tree
    for key, value in ((k, v) for section, k, v in ADDED_KEYS if section == cls.__name__):
        if key not in out:
            out = dict(out) if out is tree else out
            out[key] = value
    for name, tp in _field_types(cls).items():
        sub_cls = _unwrap_optional(tp)[0]
        if dataclasses.is_dataclass(sub_cls) and isinstance(out.get(name), dict):
            filled = _added_keys(sub_cls, out[name])
            if filled is not out[name]:
                out = dict(out) if out is tree else out
                out[name] = filled
    return out


def config_from_dict(cls: type[T], tree: dict[str, Any]) -> T:
    """Rebuild a config saved by :func:`save_config` (the full tree, so every key must still exist, or have moved:
    :data:`MOVED_KEYS`; a key added since gets the value it had then: :data:`ADDED_KEYS`)."""
    return _merge(cls(), _added_keys(cls, _move_keys(cls, tree, "saved config")))


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
