"""Resolve params.yaml into one validated JSON config per distillation method.

The ``resolve_configs`` stage writes ``data/configs/<method>.json``; stage ``distill@<method>-<seed>``
depends on that file alone (not on params sections), so changing ``csc.temperature`` re-runs only the
methods whose resolved config changed (DVC skips stages whose dependencies hash the same). Which
sections a method reads is declared by the method's class (``sections``), so code is the single
source of truth. Everything is validated here, before any training starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmkd.config import parse_section
from xmkd.errors import ConfigError
from xmkd.methods import method_class, method_config
from xmkd.models.student import StudentConfig
from xmkd.train import TrainConfig


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate`` section: map_topk = mAP depth (reference: 500); batch_size for inference."""

    map_topk: int = 500
    batch_size: int = 256


@dataclass(frozen=True)
class RunConfig:
    """Everything one distillation run needs besides the seed and the data."""

    method: str
    sections: dict[str, Any]
    train: TrainConfig
    student: StudentConfig

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (dataclasses as dicts, sorted keys on dump)."""
        return {
            "method": self.method,
            "sections": {k: dataclasses.asdict(v) for k, v in self.sections.items()},
            "train": dataclasses.asdict(self.train),
            "student": dataclasses.asdict(self.student),
        }


def method_names(params: dict[str, Any]) -> list[str]:
    """The ``methods`` list, validated (non-empty, unique, every name registered).

    Raises:
        ConfigError: not a list of strings, duplicates, or an unknown method (known ones listed).
    """
    names = params.get("methods")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("params.yaml 'methods' must be a non-empty list of method names, e.g. [none, kd, mnf_csc].")
    if len(set(names)) != len(names):
        raise ConfigError(f"params.yaml 'methods' lists a method twice: {names}.")
    for n in names:
        method_class(n)
    return names


def seeds(params: dict[str, Any]) -> list[int]:
    """The ``seeds`` list, validated (non-empty list of distinct ints)."""
    s = params.get("seeds")
    if not isinstance(s, list) or not s or not all(isinstance(x, int) and not isinstance(x, bool) for x in s):
        raise ConfigError("params.yaml 'seeds' must be a non-empty list of integers, e.g. [0, 1].")
    if len(set(s)) != len(s):
        raise ConfigError(f"params.yaml 'seeds' lists a seed twice: {s}.")
    return s


def resolve(params: dict[str, Any]) -> dict[str, RunConfig]:
    """Validate params and build the :class:`RunConfig` of every listed method.

    Raises:
        ConfigError: any invalid, unknown or missing parameter.
    """
    train = parse_section(TrainConfig, params.get("train"), "train")
    student = parse_section(StudentConfig, params.get("student"), "student")
    parse_section(EvaluateConfig, params.get("evaluate"), "evaluate")
    seeds(params)
    return {m: RunConfig(m, method_config(m, params), train, student) for m in method_names(params)}


def write_configs(params: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/<method>.json`` for every method; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rc in resolve(params).items():
        p = out_dir / f"{name}.json"
        p.write_text(json.dumps(rc.to_json(), indent=1, sort_keys=True) + "\n")
        paths.append(p)
    return paths


def load_run_config(path: Path) -> RunConfig:
    """Read a resolved config written by :func:`write_configs`.

    Raises:
        DataError-like ConfigError: the file is missing (run the resolve_configs stage).
    """
    if not path.exists():
        raise ConfigError(f"{path} does not exist: run `dvc repro resolve_configs` (or the whole pipeline) first.")
    raw = json.loads(path.read_text())
    cls = method_class(raw["method"])
    sections = {k: parse_section(cls.sections[k], v, k) for k, v in raw["sections"].items()}
    return RunConfig(
        raw["method"],
        sections,
        parse_section(TrainConfig, raw["train"], "train"),
        parse_section(StudentConfig, raw["student"], "student"),
    )
