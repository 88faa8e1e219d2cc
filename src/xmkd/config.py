"""Strict, typed access to ``params.yaml``.

Each params section maps onto a frozen dataclass. :func:`parse_section` rejects unknown keys
(with a "did you mean" hint), missing keys and values of the wrong type, so a mistyped
parameter fails loudly before any work is done instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from xmkd.errors import ConfigError

T = TypeVar("T")

PARAMS_FILE = "params.yaml"


def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """Return the project root: ``$DVC_ROOT`` if set, else the nearest parent holding ``dvc.yaml``.

    Raises:
        ConfigError: if no directory above ``start`` (default: cwd) holds a ``dvc.yaml``.
    """
    env = os.environ.get("DVC_ROOT")
    if env and (Path(env) / "dvc.yaml").exists():
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists():
            return d
    raise ConfigError(
        f"no dvc.yaml found in {here} or its parents: run the command from inside the project "
        "checkout (the folder that holds dvc.yaml and params.yaml)."
    )


def load_params(path: str | os.PathLike[str] = PARAMS_FILE) -> dict[str, Any]:
    """Load ``params.yaml`` (relative to the current directory, as DVC runs stages) as a dict.

    Raises:
        ConfigError: if the file is missing or is not a YAML mapping.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p.resolve()} does not exist: run stages from the project root, where params.yaml is.")
    with p.open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must be a YAML mapping of sections, got {type(data).__name__}.")
    return data


def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the type annotation ``tp``; int -> float is allowed."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
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
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        return parse_section(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not allowed; choose one of {list(allowed)}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


def parse_section(cls: type[T], mapping: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a params mapping, strictly.

    Args:
        cls: a dataclass type; fields without defaults are required.
        mapping: the params section (``None`` is treated as empty).
        where: dotted name of the section, used in error messages (e.g. ``"csc"``).

    Raises:
        ConfigError: on an unknown key (with the closest known key suggested), a missing
            required key, or a value of the wrong type.
    """
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = [k for k in mapping if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"unknown parameter '{where}.{k}'{_suggest(k, list(fields))}; "
            f"known keys of '{where}': {sorted(fields)}. Fix the key in params.yaml (or in your -S override)."
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in mapping:
            kwargs[name] = _coerce(mapping[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"missing parameter '{where}.{name}': add it to params.yaml.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation
        raise ConfigError(f"invalid '{where}' parameters: {e}") from e


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys: ``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
