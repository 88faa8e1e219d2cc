"""Report inputs: what the report reads and where (layout, config), loaded per run with clear errors.

Every table is built from the run specs of params.yaml (:func:`xmkd.runs.run_specs`), never by globbing
``metrics/``: a stale metrics file of a run removed from params cannot leak into the report, and a
missing file is a :class:`~xmkd.errors.DataError` naming the DVC stage that produces it.

Inputs (relative to the project root, see :class:`Layout`):

- ``metrics/eval/<run>.json``: test metrics per seed (``{"seeds": {"0": {"top1": ..}, ..}, ..}``), every run;
- ``metrics/train/<run>.json``: training history per seed, main runs (training curves, train time);
- ``data/predictions/<run>.npz``: per-seed predicted class of every test clip, main runs (bootstrap);
- ``metrics/teacher.json`` (audio teacher) and ``metrics/video_teacher.json`` (reverse direction's
  teacher), optional.

Also the column names and fixed strings every other part of the report shares.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xmkd import stats
from xmkd.errors import ConfigError, DataError

# Metric key in metrics/eval/<run>.json -> column header. The main table has the CCL/MNF papers' columns.
MAIN_COLUMNS = {"top1": "top-1", "top5": "top-5", "R@1": "R@1", "R@5": "R@5", "mAP": "mAP"}


EXTRA_COLUMNS = {"mean_class_acc": "mean class acc", "R@10": "R@10"}


CONDITION_COLUMNS = {
    "top1/clean": "top-1 clean",
    "top1/background": "top-1 background",
    "top1/mismatched": "top-1 mismatched",
}


GATE_COLUMNS = {
    "gate_mean/clean": "gate clean",
    "gate_mean/background": "gate background",
    "gate_mean/mismatched": "gate mismatched",
    "gate_auroc": "gate AUROC",
}


GATE_CONTROL_COLUMNS = {f"init_{k}": f"untrained {v}" for k, v in GATE_COLUMNS.items()}


GATE_RATIO_COLUMNS = {
    **{f"gate_norm_ratio/{c}": f"‖a′‖/‖a‖ {c}" for c in ("clean", "background", "mismatched")},
    **{f"init_gate_norm_ratio/{c}": f"untrained ‖a′‖/‖a‖ {c}" for c in ("clean", "background", "mismatched")},
}


REVERSE_COLUMNS = {"top1": "top-1", "top5": "top-5", "R@1": "R@1", "mAP": "mAP", **CONDITION_COLUMNS}


ABLATION_COLUMNS = {"top1": "top-1", "top5": "top-5", "R@1": "R@1", "mAP": "mAP"}


# Metrics that are not fractions (shown as numbers, not percent).
NON_PERCENT = {"map_queries_without_hit", "train_seconds", *GATE_COLUMNS, *GATE_CONTROL_COLUMNS, *GATE_RATIO_COLUMNS}


DECIMALS = {"map_queries_without_hit": 1, "train_seconds": 1}  # non-percent metrics not shown with 3 decimals


PLOTS = ("accuracy.png", "tau0.png", "robustness.png", "ablations.png", "training_curves.png")


PREFIXES = {"ablation": "ablate", "robustness": "robust", "reverse": "reverse"}


class RunSpecLike(Protocol):
    """What the report reads of a run spec (:class:`xmkd.runs.RunSpec`)."""

    name: str
    kind: str
    method: str
    label: str
    irrelevant_rate: float | None
    overrides: dict[str, Any]


def stage_of(spec: RunSpecLike) -> str:
    """The DVC stage that produces a run's files, e.g. ``distill@kd``, ``ablate@no_mnf``, ``robust@kd-0.6``.

    Uses ``spec.stage`` when the spec has it (:class:`xmkd.runs.RunSpec`), else derives it from the kind.
    """
    stage = getattr(spec, "stage", None)
    if isinstance(stage, str) and stage:
        return stage
    if spec.kind == "main":
        return f"distill@{spec.name}"
    prefix = PREFIXES.get(spec.kind, spec.kind)
    item = spec.name[len(prefix) + 1 :] if spec.name.startswith(prefix + "-") else spec.name
    return f"{prefix}@{item}"


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the report, read from params (:meth:`from_params`) or given directly in tests.

    Attributes:
        seeds: the seeds every run trained (params ``seeds``); only these are read from the files.
        base_rate: ``benchmark.irrelevant_rate``, the rate of the benchmark as built (main runs).
        base_tau0: ``csc.temperature``, the τ0 of the main mnf_csc run.
        confidence: confidence level of every interval (0.95).
        resamples, bootstrap_seed: paired bootstrap over test clips (10,000 resamples, seed 0).
        teacher_free: main methods that use no teacher (``none``): the robustness table shows their main run
            at every irrelevant-sound rate (their student does not depend on the sound), not a run per rate.
        logit_level: methods that distil the teacher's logits only (``kd``); every other teacher-using method
            but mnf_csc counts as a feature-level distiller in the premise check.
    """

    seeds: tuple[int, ...]
    base_rate: float
    base_tau0: float
    confidence: float = stats.CONFIDENCE
    resamples: int = stats.BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = stats.BOOTSTRAP_SEED
    teacher_free: tuple[str, ...] = ("none",)
    logit_level: tuple[str, ...] = ("kd",)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReportConfig:
        """Read ``seeds``, ``benchmark.irrelevant_rate`` and ``csc.temperature`` from params.

        Raises:
            ConfigError: one of them is missing or has the wrong type.
        """
        s = params.get("seeds")
        if not isinstance(s, list) or not s or not all(isinstance(x, int) and not isinstance(x, bool) for x in s):
            raise ConfigError("params.yaml 'seeds' must be a non-empty list of integers, e.g. [0, 1, 2].")
        try:
            rate = float((params.get("benchmark") or {})["irrelevant_rate"])
            tau0 = float((params.get("csc") or {})["temperature"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                "the report needs numbers at params.yaml 'benchmark.irrelevant_rate' and 'csc.temperature' "
                f"({e!r}); restore them from the repository's params.yaml."
            ) from e
        from xmkd.methods import method_class  # imports torch: only here, not for the report's tests

        named = list(params.get("methods") or []) + list((params.get("robustness") or {}).get("methods") or [])
        free = tuple(m for m in params.get("methods") or [] if not method_class(m).uses_teacher)
        logits = tuple(dict.fromkeys(m for m in named if method_class(m).distills == "logits"))
        return cls(tuple(s), rate, tau0, teacher_free=free, logit_level=logits)


@dataclass(frozen=True)
class Layout:
    """Where the report reads its inputs and writes its outputs, relative to ``root`` (the project root)."""

    root: Path = Path(".")

    @property
    def eval_dir(self) -> Path:
        """``metrics/eval``: one JSON per run."""
        return self.root / "metrics" / "eval"

    @property
    def train_dir(self) -> Path:
        """``metrics/train``: one JSON per run."""
        return self.root / "metrics" / "train"

    @property
    def pred_dir(self) -> Path:
        """``data/predictions``: one NPZ per run."""
        return self.root / "data" / "predictions"

    @property
    def teacher(self) -> Path:
        """``metrics/teacher.json`` (audio teacher; optional)."""
        return self.root / "metrics" / "teacher.json"

    @property
    def video_teacher(self) -> Path:
        """``metrics/video_teacher.json`` (the reverse direction's video teacher; optional)."""
        return self.root / "metrics" / "video_teacher.json"

    @property
    def reports(self) -> Path:
        """``reports/``: every table and plot."""
        return self.root / "reports"

    @property
    def summary(self) -> Path:
        """``metrics/summary.json``: the report's conclusions for ``dvc exp show`` (verdicts, paired differences)."""
        return self.root / "metrics" / "summary.json"

    @property
    def runs(self) -> Path:
        """``metrics/runs.json``: each run's top-1 and mAP with intervals, for ``dvc exp show``."""
        return self.root / "metrics" / "runs.json"

    @property
    def plot_data(self) -> Path:
        """``reports/plots/``: the data files of the DVC plots (:mod:`xmkd.report.plotdata`)."""
        return self.reports / "plots"


@dataclass
class RunData:
    """The loaded files of one run.

    Attributes:
        spec: the run spec. rate: effective irrelevant-sound rate (``base_rate`` when the spec has None).
        modality: the student's modality (``video``, or ``audio`` for the reverse direction).
        values: seed -> {metric: value} (fractions; NaN for null), for the params seeds only.
        history: seed -> per-epoch records (main runs; empty otherwise).
    """

    spec: RunSpecLike
    rate: float
    modality: str
    values: dict[int, dict[str, float]]
    history: dict[int, list[dict[str, float]]] = field(default_factory=dict)

    def per_seed(self, metric: str) -> dict[int, float]:
        """seed -> value of ``metric`` (NaN where missing)."""
        return {s: v.get(metric, math.nan) for s, v in self.values.items()}

    def metrics(self) -> list[str]:
        """Every metric key any seed has, sorted."""
        return sorted(set().union(*(v.keys() for v in self.values.values())))


@dataclass(frozen=True)
class Predictions:
    """``data/predictions/<run>.npz``: ids (N,) str, labels (N,) int, pred (S, N) int for the params seeds."""

    ids: np.ndarray
    labels: np.ndarray
    pred: np.ndarray


def _missing(path: Path, spec: RunSpecLike, what: str) -> DataError:
    return DataError(
        f"{path} is missing ({what} of run '{spec.name}', kind {spec.kind}): run `dvc repro {stage_of(spec)}` "
        "(or `dvc repro` for the whole pipeline)."
    )


def _read_json(path: Path, spec: RunSpecLike, what: str) -> dict[str, Any]:
    if not path.exists():
        raise _missing(path, spec, what)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}): re-run `dvc repro {stage_of(spec)}`.") from e
    if not isinstance(data, dict) or not isinstance(data.get("seeds"), dict):
        raise DataError(
            f"{path} has no 'seeds' mapping: it is from an older pipeline; run `dvc repro {stage_of(spec)}`."
        )
    if data.get("run", spec.name) != spec.name:
        raise DataError(f"{path} belongs to run '{data['run']}', not '{spec.name}': run `dvc repro {stage_of(spec)}`.")
    return data


def _seed_block(data: dict[str, Any], path: Path, spec: RunSpecLike, seeds: Sequence[int]) -> dict[int, Any]:
    have = {int(k): v for k, v in data["seeds"].items()}
    lacking = [s for s in seeds if s not in have]
    if lacking:
        raise DataError(
            f"{path} has seeds {sorted(have)} but params.yaml seeds are {list(seeds)} (missing {lacking}): "
            f"run `dvc repro {stage_of(spec)}`."
        )
    return {s: have[s] for s in seeds}


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def load_run(spec: RunSpecLike, cfg: ReportConfig, layout: Layout, with_history: bool) -> RunData:
    """Read a run's eval file (and, when ``with_history``, its train file) for the params seeds.

    Raises:
        DataError: a file is missing, unreadable, of another run or method, or lacks a params seed; the
            message names the stage to run.
    """
    path = layout.eval_dir / f"{spec.name}.json"
    data = _read_json(path, spec, "test metrics")
    if data.get("method", spec.method) != spec.method:
        raise DataError(
            f"{path} holds method '{data['method']}', params say '{spec.method}': run `dvc repro {stage_of(spec)}`."
        )
    block = _seed_block(data, path, spec, cfg.seeds)
    values = {s: {k: _num(v) for k, v in m.items()} for s, m in block.items()}
    rate = cfg.base_rate if spec.irrelevant_rate is None else float(spec.irrelevant_rate)
    run = RunData(spec, rate, str(data.get("modality", "video")), values)
    if with_history:
        tpath = layout.train_dir / f"{spec.name}.json"
        tblock = _seed_block(_read_json(tpath, spec, "training history"), tpath, spec, cfg.seeds)
        for s, t in tblock.items():
            run.history[s] = list(t.get("history", []))
            if "train_seconds" in t:
                run.values[s]["train_seconds"] = _num(t["train_seconds"])
    return run


def load_predictions(spec: RunSpecLike, cfg: ReportConfig, layout: Layout) -> Predictions:
    """Read ``data/predictions/<run>.npz`` and keep the rows of the params seeds (in params order).

    Raises:
        DataError: missing file, missing keys, wrong shapes, or a params seed absent (names the stage).
    """
    path = layout.pred_dir / f"{spec.name}.npz"
    if not path.exists():
        raise _missing(path, spec, "test predictions")
    with np.load(path, allow_pickle=False) as z:
        lacking = [k for k in ("ids", "labels", "seeds", "pred") if k not in z.files]
        if lacking:
            raise DataError(f"{path} lacks {lacking}: run `dvc repro {stage_of(spec)}`.")
        ids, labels, seeds, pred = (np.asarray(z[k]) for k in ("ids", "labels", "seeds", "pred"))
    n = len(ids)
    if labels.shape != (n,) or pred.ndim != 2 or pred.shape != (len(seeds), n):
        raise DataError(
            f"{path}: shapes ids {ids.shape}, labels {labels.shape}, seeds {seeds.shape}, pred {pred.shape} do not "
            f"agree (pred must be (seeds, clips)): run `dvc repro {stage_of(spec)}`."
        )
    row = {int(s): i for i, s in enumerate(seeds)}
    lacking_seeds = [s for s in cfg.seeds if s not in row]
    if lacking_seeds:
        raise DataError(f"{path} lacks seeds {lacking_seeds} of params.yaml: run `dvc repro {stage_of(spec)}`.")
    return Predictions(ids.astype(str), labels.astype(int), pred[[row[s] for s in cfg.seeds]])


def tau0_of(spec: RunSpecLike) -> float | None:
    """τ0 of an ablation that only changes it (overrides exactly ``{"csc": {"temperature": x}}``), else None."""
    o = spec.overrides or {}
    if (
        spec.kind != "ablation"
        or set(o) != {"csc"}
        or not isinstance(o["csc"], dict)
        or set(o["csc"]) != {"temperature"}
    ):
        return None
    x = o["csc"]["temperature"]
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _optional_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}): re-run the stage that writes it (`dvc repro`).") from e
    return data if isinstance(data, dict) else None


PREMISE_HOLDS = "the benchmark can test the claim"


PREMISE_FAILS = "the benchmark cannot test the claim"


DASH = "–"
