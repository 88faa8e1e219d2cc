"""Comparison report: tables (markdown + CSV), plots, headline metrics, built from the runs named in params.

Every table is built from the run specs of params.yaml (:func:`xmkd.runs.run_specs`), never by globbing
``metrics/``: a stale metrics file of a run removed from params cannot leak into the report, and a
missing file is a :class:`~xmkd.errors.DataError` naming the DVC stage that produces it.

Inputs (relative to the project root, see :class:`Layout`):

- ``metrics/eval/<run>.json``: test metrics per seed (``{"seeds": {"0": {"top1": ..}, ..}, ..}``), every run;
- ``metrics/train/<run>.json``: training history per seed, main runs (training curves, train time);
- ``data/predictions/<run>.npz``: per-seed predicted class of every test clip, main runs (bootstrap);
- ``metrics/teacher.json`` (audio teacher) and ``metrics/video_teacher.json`` (reverse direction's
  teacher), optional.

Outputs: ``reports/results.md``, ``results.csv`` (long: one row per run, seed, metric),
``summary.csv`` (per run and metric: mean, std, 95% CI, n), ``accuracy.png``, ``tau0.png``,
``robustness.png``, ``ablations.png``, ``training_curves.png``, and the headline dict written to
``metrics/summary.json`` by the stage. Statistics: :mod:`xmkd.stats`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from xmkd import stats  # noqa: E402
from xmkd.errors import ConfigError, DataError  # noqa: E402

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
        """``metrics/summary.json``: headline metrics for ``dvc exp show``."""
        return self.root / "metrics" / "summary.json"


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


def bootstrap_top1(a: Predictions, b: Predictions, names: tuple[str, str], cfg: ReportConfig) -> stats.BootstrapResult:
    """Paired bootstrap of seed-averaged top-1 of ``a`` minus ``b`` on the same test clips (aligned by id).

    Raises:
        DataError: the two runs were evaluated on different clips, or disagree on a clip's label.
    """
    if set(a.ids) != set(b.ids) or len(a.ids) != len(b.ids):
        raise DataError(
            f"predictions of '{names[0]}' and '{names[1]}' are on different test clips: re-run both "
            "distill stages on the current benchmark (`dvc repro`)."
        )
    order = {c: i for i, c in enumerate(b.ids)}
    idx = np.array([order[c] for c in a.ids])
    if not np.array_equal(a.labels, b.labels[idx]):
        raise DataError(f"predictions of '{names[0]}' and '{names[1]}' disagree on test labels: re-run `dvc repro`.")
    return stats.paired_bootstrap(
        stats.correctness(a.pred, a.labels),
        stats.correctness(b.pred[:, idx], a.labels),
        resamples=cfg.resamples,
        seed=cfg.bootstrap_seed,
        confidence=cfg.confidence,
    )


# ----------------------------------------------------------------------------------------------- analysis


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


def _overrides_text(o: dict[str, Any]) -> str:
    return ", ".join(f"{s}.{k}={v}" for s, d in o.items() for k, v in (d.items() if isinstance(d, dict) else []))


PREMISE_HOLDS = "the benchmark can test the claim"
PREMISE_FAILS = "the benchmark cannot test the claim"


@dataclass
class Premise:
    """The premise of cross-modal distillation, checked on clean sound (irrelevant rate 0).

    A clean teacher must help the student before one can ask whether MNF+CSC keeps that help when the sound
    is irrelevant (Xia et al., arXiv 2304.07775): ``kd − none`` and ``best feature-level distiller − none``
    on top-1, each with the paired t interval over seeds and the paired bootstrap over test clips.

    Attributes:
        rate: the irrelevant rate of the compared runs (0).
        diffs: ``"kd"`` / ``"feature"`` -> paired difference to ``none`` (with its bootstrap).
        feature_method: the feature-level distiller with the highest mean top-1 at that rate (None if none ran).
        holds: True when at least one of the differences is a win on both intervals.
        missing: why the check could not run (empty when it ran).
    """

    rate: float
    diffs: dict[str, stats.PairedDifference]
    feature_method: str | None
    holds: bool
    missing: str = ""

    @property
    def verdict(self) -> str:
        """:data:`PREMISE_HOLDS` or :data:`PREMISE_FAILS`."""
        return PREMISE_HOLDS if self.holds else PREMISE_FAILS


@dataclass
class Analysis:
    """Everything the report states, computed once from the loaded runs (see :func:`analyse`)."""

    cfg: ReportConfig
    runs: dict[str, RunData]
    main: list[RunData]
    ablations: list[RunData]
    robust: list[RunData]
    reverse: list[RunData]
    estimates: dict[tuple[str, str], stats.Estimate]
    full_mnf: RunData | None
    none: RunData | None
    best_baseline: RunData | None
    paired: dict[str, stats.PairedDifference]  # "mnf_csc-none/top1", "mnf_csc-best/top1", ... -> difference
    ablation_diffs: dict[str, stats.PairedDifference]  # run name -> top-1 difference to full mnf_csc
    tau0_rows: list[tuple[float, RunData]]
    robust_methods: list[str]
    rates: list[float]
    robust_grid: dict[tuple[str, float], RunData]
    reverse_diff: stats.PairedDifference | None
    teacher: dict[str, Any] | None
    video_teacher: dict[str, Any] | None
    premise: Premise | None = None
    gains: dict[tuple[str, float], stats.PairedDifference] = field(default_factory=dict)
    versus: dict[tuple[str, float], stats.PairedDifference] = field(default_factory=dict)

    def est(self, run: RunData | str, metric: str) -> stats.Estimate:
        """:class:`~xmkd.stats.Estimate` of ``metric`` over the seeds of ``run`` (all NaN if unknown)."""
        name = run if isinstance(run, str) else run.spec.name
        return self.estimates.get((name, metric)) or stats.describe([], self.cfg.confidence)


def _by_method(runs: list[RunData], method: str) -> RunData | None:
    return next((r for r in runs if r.spec.method == method), None)


def _mean(a: Analysis, r: RunData, metric: str = "top1") -> float:
    m = a.est(r, metric).mean
    return m if math.isfinite(m) else -math.inf


def analyse(specs: Sequence[RunSpecLike], cfg: ReportConfig, layout: Layout) -> Analysis:
    """Load every run named in ``specs`` and compute all statistics of the report.

    Raises:
        DataError: a file the report needs is missing or invalid (names the stage to run).
    """
    runs: dict[str, RunData] = {}
    for spec in specs:
        runs[spec.name] = load_run(spec, cfg, layout, with_history=spec.kind == "main")
    kinds = {k: [runs[s.name] for s in specs if s.kind == k] for k in ("main", "ablation", "robustness", "reverse")}
    estimates = {
        (n, m): stats.describe(r.per_seed(m).values(), cfg.confidence) for n, r in runs.items() for m in r.metrics()
    }
    a = Analysis(
        cfg,
        runs,
        kinds["main"],
        kinds["ablation"],
        kinds["robustness"],
        kinds["reverse"],
        estimates,
        full_mnf=_by_method(kinds["main"], "mnf_csc"),
        none=_by_method(kinds["main"], "none"),
        best_baseline=None,
        paired={},
        ablation_diffs={},
        tau0_rows=[],
        robust_methods=[],
        rates=[],
        robust_grid={},
        reverse_diff=None,
        teacher=_optional_json(layout.teacher),
        video_teacher=_optional_json(layout.video_teacher),
    )
    baselines = [r for r in a.main if r.spec.method not in ("none", "mnf_csc")]
    if baselines:
        a.best_baseline = max(baselines, key=lambda r: _mean(a, r))
    # Paired differences of the main comparison (seeds: top-1 and mAP; bootstrap over test clips: top-1).
    if a.full_mnf is not None:
        preds: dict[str, Predictions] = {}

        def pred(r: RunData) -> Predictions:
            if r.spec.name not in preds:
                preds[r.spec.name] = load_predictions(r.spec, cfg, layout)
            return preds[r.spec.name]

        for key, other in (("none", a.none), ("best", a.best_baseline)):
            if other is None:
                continue
            names = (a.full_mnf.spec.label, other.spec.label)
            for metric in ("top1", "mAP"):
                d = stats.paired_difference(
                    a.full_mnf.per_seed(metric), other.per_seed(metric), names, metric, cfg.confidence
                )
                if metric == "top1":
                    d = dataclasses.replace(d, bootstrap=bootstrap_top1(pred(a.full_mnf), pred(other), names, cfg))
                a.paired[f"mnf_csc-{key}/{metric}"] = d
        for r in a.ablations:
            a.ablation_diffs[r.spec.name] = stats.paired_difference(
                r.per_seed("top1"), a.full_mnf.per_seed("top1"), (r.spec.label, "mnf_csc"), "top1", cfg.confidence
            )
        rows = [(cfg.base_tau0, a.full_mnf)] + [(t, r) for r in a.ablations if (t := tau0_of(r.spec)) is not None]
        a.tau0_rows = sorted(rows, key=lambda x: x[0])
    # Robustness grid: robustness runs at their rates, the main runs at the benchmark's own rate.
    # Teacher-free main methods (none): the same student at every rate, so their main run fills every column.
    free = [m for m in cfg.teacher_free if a.robust and _by_method(a.main, m) is not None]
    a.robust_methods = list(dict.fromkeys([*free, *(r.spec.method for r in a.robust)]))
    a.rates = sorted({r.rate for r in a.robust} | ({cfg.base_rate} if a.robust else set()))
    for m in free:
        for rate in a.rates:
            a.robust_grid[(m, rate)] = _by_method(a.main, m)
    for m in a.robust_methods:
        base = _by_method(a.main, m)
        if base is not None:
            a.robust_grid[(m, cfg.base_rate)] = base
        for r in a.robust:
            if r.spec.method == m:
                a.robust_grid[(m, _rate_key(a.rates, r.rate))] = r
    a.premise = premise_check(a, cfg, layout)
    a.gains, a.versus = gain_grid(a)
    rn, rm = _by_method(a.reverse, "none"), _by_method(a.reverse, "mnf_csc")
    if rn is not None and rm is not None:
        a.reverse_diff = stats.paired_difference(
            rm.per_seed("top1"), rn.per_seed("top1"), ("mnf_csc", "none"), "top1", cfg.confidence
        )
    return a


def _runs_at(a: Analysis, rate: float) -> dict[str, RunData]:
    """method -> its run at irrelevant ``rate``: the robustness grid, or the main table at the base rate."""
    out = {m: r for (m, x), r in a.robust_grid.items() if math.isclose(x, rate, abs_tol=1e-9)}
    if math.isclose(a.cfg.base_rate, rate, abs_tol=1e-9):
        out = {r.spec.method: r for r in a.main} | out
    return out


def premise_check(a: Analysis, cfg: ReportConfig, layout: Layout, rate: float = 0.0) -> Premise:
    """Does a clean teacher help here? ``kd − none`` and ``best feature-level − none`` at ``rate`` (see :class:`Premise`).

    Raises:
        DataError: a run's predictions are missing or on other clips (names the stage to run).
    """
    at = _runs_at(a, rate)
    none = a.none or at.get("none")
    if none is None:
        return Premise(rate, {}, None, False, "`none` is not in `methods`")
    features = [
        r for m, r in at.items() if m not in (*cfg.teacher_free, *cfg.logit_level, "mnf_csc") and m != none.spec.method
    ]
    best = max(features, key=lambda r: _mean(a, r)) if features else None
    pairs = {"kd": at.get("kd"), "feature": best}
    diffs: dict[str, stats.PairedDifference] = {}
    for key, run in pairs.items():
        if run is None:
            continue
        names = (run.spec.label, none.spec.label)
        d = stats.paired_difference(run.per_seed("top1"), none.per_seed("top1"), names, "top1", cfg.confidence)
        boot = bootstrap_top1(load_predictions(run.spec, cfg, layout), load_predictions(none.spec, cfg, layout), names, cfg)
        diffs[key] = dataclasses.replace(d, bootstrap=boot)
    if not diffs:
        return Premise(
            rate, {}, None, False,
            f"no distiller ran at irrelevant rate {rate:g}: add {rate:g} to `robustness.rates` (and kd to "
            "`robustness.methods`)",
        )  # fmt: skip
    holds = any(d.seed_verdict == stats.WIN and d.bootstrap_verdict == stats.WIN for d in diffs.values())
    return Premise(rate, diffs, best.spec.method if best else None, holds)


def gain_grid(
    a: Analysis,
) -> tuple[dict[tuple[str, float], stats.PairedDifference], dict[tuple[str, float], stats.PairedDifference]]:
    """Distillation's gain over ``none`` at every irrelevant rate, and MNF+CSC against each other method.

    The question of Xia et al. (arXiv 2304.07775) as numbers: does MNF+CSC keep more of what distillation
    gives (its top-1 gain over the student alone on clean sound) than kd and the baselines as irrelevant sound
    grows?

    Returns:
        ``gains``: (method, rate) -> ``method − none`` on top-1, paired over seeds (``none`` uses no teacher, so
        its main run is the reference at every rate), for every robustness method that uses a teacher;
        ``versus``: (method, rate) -> ``mnf_csc − method`` at that rate, paired over seeds (same seeds, same
        videos). Both empty when there are no robustness runs or no ``none``.
    """
    gains: dict[tuple[str, float], stats.PairedDifference] = {}
    versus: dict[tuple[str, float], stats.PairedDifference] = {}
    none = a.none
    if none is None or not a.robust:
        return gains, versus

    def diff(x: RunData, y: RunData, names: tuple[str, str]) -> stats.PairedDifference:
        return stats.paired_difference(x.per_seed("top1"), y.per_seed("top1"), names, "top1", a.cfg.confidence)

    for m in (m for m in a.robust_methods if m not in a.cfg.teacher_free):
        for rate in a.rates:
            run, mnf = a.robust_grid.get((m, rate)), a.robust_grid.get(("mnf_csc", rate))
            if run is None:
                continue
            gains[(m, rate)] = diff(run, none, (m, "none"))
            if m != "mnf_csc" and mnf is not None:
                versus[(m, rate)] = diff(mnf, run, ("mnf_csc", m))
    return gains, versus


def _kept(a: Analysis, m: str, lo: float, hi: float) -> str:
    """``+5.0 [..] -> +2.0 [..] pp (keeps 40% of it)``: the gain at ``lo`` and at ``hi`` and the share kept.

    The share is stated only when the gain at ``lo`` is a win over seeds (a ratio to a gain that may be zero
    means nothing).
    """
    g0, g1 = a.gains.get((m, lo)), a.gains.get((m, hi))
    if g0 is None or g1 is None:
        return DASH
    e0, e1 = g0.seed_estimate, g1.seed_estimate
    if g0.seed_verdict != stats.WIN:
        share = " (no significant gain at the first rate: nothing to keep)"
    elif not math.isfinite(e1.mean):
        share = ""
    else:
        share = f" (keeps {100 * e1.mean / e0.mean:.0f}% of it)" if e1.mean >= 0 else " (below none: all of it lost)"
    return f"{fmt_pp(e0.mean)} {fmt_interval(e0)} -> {fmt_pp(e1.mean)} {fmt_interval(e1)} pp{share}"


def _gain_sentences(a: Analysis) -> list[str]:
    """The summary's answer to the paper's question: the gain over none kept from the lowest to the highest rate."""
    if not a.gains or len(a.rates) < 2:
        return []
    lo, hi = a.rates[0], a.rates[-1]
    methods = list(dict.fromkeys(m for m, _ in a.gains))
    out = [
        f"Distillation's gain over none on top-1 (paired over seeds) from irrelevant rate {lo:g} to {hi:g}: "
        + "; ".join(f"{m} {_kept(a, m, lo, hi)}" for m in methods) + "."
    ]  # fmt: skip
    vs = [(m, d) for (m, rate), d in a.versus.items() if math.isclose(rate, hi, abs_tol=1e-9)]
    if vs:
        out.append(
            f"At irrelevant rate {hi:g}, mnf_csc against "
            + "; ".join(f"{m}: {fmt_pp(d.seed_estimate.mean)} pp {fmt_interval(d.seed_estimate)} ({d.seed_verdict})" for m, d in vs)
            + "."
        )  # fmt: skip
    return out


def _premise_sentence(p: Premise | None) -> str:
    head = "Premise (a clean teacher helps: distillers against none at irrelevant rate 0)"
    if p is None or p.missing:
        return f"{head} cannot be checked: {p.missing if p else 'no analysis'}."
    parts = [
        f"{d.a} − {d.b} {fmt_pp(d.seed_estimate.mean)} pp (seeds {fmt_interval(d.seed_estimate)}, "
        f"bootstrap {fmt_interval(d.bootstrap)})"
        for d in p.diffs.values()
    ]
    return f"{head}: {'; '.join(parts)}. Verdict: **{p.verdict}**."


def _rate_key(rates: list[float], r: float) -> float:
    return next((x for x in rates if math.isclose(x, r, abs_tol=1e-9)), r)


def _optional_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}): re-run the stage that writes it (`dvc repro`).") from e
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------------------- formatting

DASH = "–"


def fmt_est(e: stats.Estimate, percent: bool = True, ci: bool = True, decimals: int = 3) -> str:
    """``mean ± std [ci_low, ci_high]`` (in % with one decimal when ``percent``, else ``decimals`` decimals).

    One seed gives ``mean (1 seed, no interval)``; no finite value gives ``–``.
    """
    if e.n == 0 or not math.isfinite(e.mean):
        return DASH
    k, f = (100.0, "{:.1f}") if percent else (1.0, f"{{:.{decimals}f}}")
    mean = f.format(k * e.mean)
    if e.n == 1:
        return f"{mean} (1 seed, no interval)"
    out = f"{mean} ± {f.format(k * e.std)}"
    return out + (f" [{f.format(k * e.ci_low)}, {f.format(k * e.ci_high)}]" if ci else "")


def fmt_pp(x: float) -> str:
    """A difference of fractions in percentage points, signed, one decimal (``+1.2``)."""
    return DASH if not math.isfinite(x) else f"{100 * x:+.1f}"


def fmt_interval(e: stats.Estimate | stats.BootstrapResult | None) -> str:
    """``[low, high]`` in signed percentage points, or ``–``."""
    if e is None or not e.has_interval:
        return DASH
    return f"[{fmt_pp(e.ci_low)}, {fmt_pp(e.ci_high)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def metric_table(a: Analysis, runs: list[RunData], columns: dict[str, str], row_name: str = "label") -> str:
    """Markdown table, one row per run, one ``fmt_est`` cell per column present in any run."""
    cols = [c for c in columns if any((r.spec.name, c) in a.estimates for r in runs)]
    rows = []
    for r in runs:
        name = r.spec.label if row_name == "label" else r.spec.name
        rows.append(
            [name] + [fmt_est(a.est(r, c), percent=c not in NON_PERCENT, decimals=DECIMALS.get(c, 3)) for c in cols]
        )
    return _table(["method" if row_name == "label" else "run"] + [columns[c] for c in cols], rows)


def _diff_cells(d: stats.PairedDifference) -> list[str]:
    e = d.seed_estimate
    return [fmt_pp(e.mean), str(e.n), fmt_interval(e), d.seed_verdict]


def _diff_sentence(d: stats.PairedDifference, unit: str = "top-1") -> str:
    e = d.seed_estimate
    if e.n == 0:
        return f"{d.a} − {d.b} on {unit}: no seed has both values."
    s = f"{d.a} − {d.b} on {unit}: {fmt_pp(e.mean)} pp"
    if e.has_interval:
        s += f" (95% t interval over {e.n} seeds {fmt_interval(e)} pp: {d.seed_verdict}"
    else:
        s += f" (one seed: no interval over seeds, so {stats.NO_INTERVAL}"
    if d.bootstrap is not None:
        b = d.bootstrap
        s += (
            f"; paired bootstrap over {b.n:,} test clips, {b.resamples:,} resamples: {fmt_pp(b.mean)} pp "
            f"{fmt_interval(b)}: {d.bootstrap_verdict}"
        )
    return s + ")."


# ----------------------------------------------------------------------------------------------- summary text


def summary_lines(a: Analysis) -> list[str]:
    """The generated summary: plain sentences computed from the numbers (one bullet each)."""
    out: list[str] = [_premise_sentence(a.premise)]
    if a.main:
        best = max(a.main, key=lambda r: _mean(a, r))
        out.append(f"Best on top-1 (mean over seeds): **{best.spec.label}**, {fmt_est(a.est(best, 'top1'))} %.")
    for key, title in (("none", "no distillation"), ("best", "the best baseline")):
        d = a.paired.get(f"mnf_csc-{key}/top1")
        if d is not None:
            extra = (
                f" ({a.best_baseline.spec.label}, the highest top-1 among the main methods other than none and mnf_csc)"
                if key == "best" and a.best_baseline
                else ""
            )
            out.append(f"Against {title}{extra}: {_diff_sentence(d)}")
    out.append(_claim(a))
    if a.ablation_diffs:
        worst_name = min(a.ablation_diffs, key=lambda n: _finite_or(a.ablation_diffs[n].seed_estimate.mean, math.inf))
        w = a.ablation_diffs[worst_name]
        if math.isfinite(w.seed_estimate.mean) and w.seed_estimate.mean < 0:
            out.append(f"The ablation that costs most top-1: **{a.runs[worst_name].spec.label}**; {_diff_sentence(w)}")
        else:
            out.append("No ablation lowers the mean top-1 of mnf_csc.")
    out += _robustness_sentences(a)
    out += _gain_sentences(a)
    if a.reverse:
        best = max(a.reverse, key=lambda r: _mean(a, r))
        s = f"Reverse direction (video teacher -> audio student): best top-1 **{best.spec.label}**, {fmt_est(a.est(best, 'top1'))} %"
        if a.video_teacher and "test_top1" in a.video_teacher:
            s += f"; the video teacher itself scores {100 * float(a.video_teacher['test_top1']):.1f}%"
        out.append(s + ".")
        if a.reverse_diff is not None:
            out.append(f"Reverse direction, {_diff_sentence(a.reverse_diff)}")
    return out


def _finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


def _claim(a: Analysis) -> str:
    """Whether the paper's claim (MNF+CSC beats the baselines) holds: both intervals exclude 0 upwards."""
    head = "The paper's claim (MNF+CSC beats the baselines, judged against none and the best baseline on top-1)"
    if a.full_mnf is None:
        return f"{head} cannot be checked: mnf_csc is not in `methods`."
    diffs = [a.paired.get(f"mnf_csc-{k}/top1") for k in ("none", "best")]
    diffs = [d for d in diffs if d is not None]
    if not diffs:
        return f"{head} cannot be checked: neither none nor a baseline is in `methods`."
    verdicts = [(d.b, d.seed_verdict, d.bootstrap_verdict) for d in diffs]
    detail = "; ".join(f"vs {b}: seeds {sv}, bootstrap {bv}" for b, sv, bv in verdicts)
    if all(sv == stats.WIN and bv == stats.WIN for _, sv, bv in verdicts):
        return f"{head} **holds here**: both intervals exclude zero in mnf_csc's favour ({detail})."
    if any(stats.LOSS in (sv, bv) for _, sv, bv in verdicts):
        return f"{head} **does not hold here**: mnf_csc is significantly worse in at least one test ({detail})."
    return f"{head} **is not supported here** (a win needs an interval that excludes zero): {detail}."


def _robustness_sentences(a: Analysis) -> list[str]:
    out: list[str] = []
    if not a.robust:
        return out
    lo, hi = a.rates[0], a.rates[-1]
    for m in ("kd", "mnf_csc"):
        r0, r1 = a.robust_grid.get((m, lo)), a.robust_grid.get((m, hi))
        if r0 is None or r1 is None or lo == hi:
            continue
        e0, e1 = a.est(r0, "top1"), a.est(r1, "top1")
        out.append(
            f"{m} goes from {fmt_est(e0)} % top-1 at irrelevant rate {lo:g} to {fmt_est(e1)} % at {hi:g} "
            f"({fmt_pp(e1.mean - e0.mean)} pp, difference of the means)."
        )
    out.append(_robust_check(a))
    return out


def _robust_check(a: Analysis) -> str:
    """Are the non-trivial robustness methods the two best baselines of the main table?"""
    picked = [m for m in a.robust_methods if m not in ("none", "kd", "mnf_csc")]
    candidates = sorted(
        (r for r in a.main if r.spec.method not in ("none", "kd", "mnf_csc")), key=lambda r: -_mean(a, r)
    )
    top = [r.spec.method for r in candidates[:2]]
    tops = ", ".join(f"{r.spec.method} ({fmt_est(a.est(r, 'top1'), ci=False)} %)" for r in candidates[:2])
    if len(candidates) < 2:
        return (
            f"Robustness methods other than none/kd/mnf_csc: {', '.join(picked) or '(no such method)'}; the main table has fewer than two "
            "such baselines, so the best two cannot be checked."
        )
    if set(picked) == set(top):
        return f"Check: the robustness runs use {', '.join(picked)}, which **are** the two best baselines of the main table ({tops})."
    if set(top) <= set(picked):
        return (
            f"Check: the robustness runs use {', '.join(picked)}, which **include** the two best baselines of the main "
            f"table ({tops})."
        )
    return (
        f"Check: the robustness runs use {', '.join(picked) or 'no baseline'}, but the two best baselines of the main "
        f"table (other than none, kd, mnf_csc) are {tops}: they **are not** the same; update `robustness.methods`."
    )


# ----------------------------------------------------------------------------------------------- markdown


def markdown(a: Analysis) -> str:
    """The whole ``results.md``."""
    cfg = a.cfg
    L: list[str] = [
        "# Cross-modal distillation: the comparison",
        "",
        f"Built by `dvc repro` (stage `report`) from the runs named in params.yaml (never by globbing). Seeds "
        f"{list(cfg.seeds)}; test clips. Cells: mean ± std over seeds (ddof = 1) [{100 * cfg.confidence:.0f}% "
        "Student-t confidence interval of the mean], in % (one decimal) unless stated. Differences are in "
        "percentage points (pp). A difference is a **win** only when its interval excludes zero.",
        "",
        "## Summary",
        "",
    ]
    L += [f"- {s}" for s in summary_lines(a)]
    L += _premise_section(a)
    L += ["", "## Main table (video student)", ""]
    L += [metric_table(a, a.main, MAIN_COLUMNS) if a.main else "No main runs.", ""]
    if a.main:
        L += [
            "More metrics (mean class accuracy, R@10, mAP queries without a hit in the top 500, training "
            "time in s per seed):",
            "",
            metric_table(
                a,
                a.main,
                {**EXTRA_COLUMNS, "map_queries_without_hit": "queries without hit", "train_seconds": "train time (s)"},
            ),
            "",
        ]
        L += [
            "### Top-1 by the clip's audio condition",
            "",
            "The student sees only video; the condition is that of the sound its teacher heard.",
            "",
            metric_table(a, a.main, CONDITION_COLUMNS),
            "",
        ]
    gated = [r for r in a.runs.values() if (r.spec.name, "gate_auroc") in a.estimates]
    if gated:
        L += [
            "### MNF gate",
            "",
            "Mean gate value per audio condition (not %) and AUROC of clean vs irrelevant "
            "sound from the gate (0.5 = chance). No loss term trains the gate to tell irrelevant sound apart "
            "(only CSC, MNF's classifier, the triplet and L1 terms reach it), so read it against the control: "
            "the same statistics of the untrained gate (the MNF module at its initial weights, on the same "
            "trained student and test clips).",
            "",
            metric_table(a, gated, GATE_COLUMNS, row_name="run"),
            "",
        ]
        controlled = [r for r in gated if (r.spec.name, "init_gate_auroc") in a.estimates]
        if controlled:
            L += [
                "Untrained gate (control):",
                "",
                metric_table(a, controlled, GATE_CONTROL_COLUMNS, row_name="run"),
                "",
                "Share of the teacher embedding that passes the gate, ‖a′‖/‖a‖ = ‖g ⊙ a‖/‖a‖ (1 = all of it), "
                "trained and untrained:",
                "",
                metric_table(a, controlled, GATE_RATIO_COLUMNS, row_name="run"),
                "",
            ]
    L += _paired_section(a)
    L += _ablation_section(a)
    L += _tau0_section(a)
    L += _robustness_section(a)
    L += _reverse_section(a)
    L += ["## Audio teacher (frozen) on the same test clips", ""]
    if a.teacher:
        L += [f"- {k}: {100 * float(v):.1f}%" for k, v in sorted(a.teacher.items()) if k.startswith("test_top1")]
    else:
        L += ["metrics/teacher.json not found (stage `embed_teacher`)."]
    L += ["", "## Plots", ""] + [line for p in PLOTS for line in (f"![{p[:-4]}]({p})", "")]
    L += [
        "## How the statistics are computed",
        "",
        f"- Per metric: mean and sample std (ddof = 1) over the {len(cfg.seeds)} seeds; the {100 * cfg.confidence:.0f}% "
        "interval is mean ± t(0.975, n−1) · std / √n (Student t). One seed gives no interval.",
        "- Paired difference over seeds: d_s = A_s − B_s for each seed s (same initialisation and data order), "
        "its mean and t interval (paired t-test).",
        f"- Paired bootstrap over test clips: {cfg.resamples:,} resamples of the test clips with replacement "
        f"(numpy seed {cfg.bootstrap_seed}), difference of the seed-averaged top-1 of A and B on each resample; "
        "2.5 / 97.5 percentiles.",
        "- Best baseline: the highest mean top-1 among the main methods other than none and mnf_csc.",
        "",
    ]
    return "\n".join(L)


def _premise_section(a: Analysis) -> list[str]:
    p = a.premise
    L = [
        "",
        "## Premise check: does a clean teacher help?",
        "",
        "The paper's question (does MNF+CSC keep what distillation gives when the sound is irrelevant?) needs "
        "distillation to give something first. At irrelevant rate 0 (every clip's sound is the right digit), kd and "
        "the best feature-level distiller against the student alone (none), paired over seeds and over test clips. "
        "The benchmark can test the claim when at least one of them wins on both intervals.",
        "",
    ]
    if p is None or p.missing:
        return L + [f"Cannot be checked: {p.missing if p else 'no analysis'}.", ""]
    header = ["comparison", "Δ top-1 (pp)", "seeds", "95% t interval (pp)", "verdict (seeds)",
              "bootstrap 95% interval (pp)", "verdict (bootstrap)"]  # fmt: skip
    rows = [
        [f"{d.a} − {d.b}", fmt_pp(d.seed_estimate.mean), str(d.seed_estimate.n), fmt_interval(d.seed_estimate),
         d.seed_verdict, fmt_interval(d.bootstrap), d.bootstrap_verdict]  # fmt: skip
        for d in p.diffs.values()
    ]
    return L + [_table(header, rows), "", f"Verdict: **{p.verdict}**.", ""]


def _paired_section(a: Analysis) -> list[str]:
    L = ["## Paired differences: mnf_csc against none and the best baseline", ""]
    if not a.paired:
        return L + ["Needs mnf_csc and at least one of none / a baseline in `methods`.", ""]
    header = [
        "comparison",
        "metric",
        "Δ mean (pp)",
        "seeds",
        "95% t interval (pp)",
        "verdict (seeds)",
        "bootstrap Δ (pp)",
        "bootstrap 95% interval (pp)",
        "verdict (bootstrap)",
    ]
    rows = []
    for key, d in a.paired.items():
        b = d.bootstrap
        rows.append(
            [f"{d.a} − {d.b}", key.split("/")[1]]
            + _diff_cells(d)
            + ([fmt_pp(b.mean), fmt_interval(b), d.bootstrap_verdict] if b else [DASH, DASH, DASH])
        )
    return L + [_table(header, rows), ""]


def _ablation_section(a: Analysis) -> list[str]:
    L = ["## Ablations of MNF+CSC", ""]
    if not a.ablations:
        return L + ["No ablation runs in params.yaml (`ablations`).", ""]
    if a.full_mnf is None:
        return L + ["mnf_csc is not in `methods`: no full run to compare the ablations with.", ""]
    cols = list(ABLATION_COLUMNS)
    header = (
        ["run", "what changes"]
        + list(ABLATION_COLUMNS.values())
        + ["Δ top-1 vs full (pp)", "seeds", "95% t interval (pp)", "verdict"]
    )
    rows = [["mnf_csc (full)", "–"] + [fmt_est(a.est(a.full_mnf, c)) for c in cols] + [DASH] * 4]
    for r in a.ablations:
        rows.append(
            [r.spec.label, _overrides_text(r.spec.overrides)]
            + [fmt_est(a.est(r, c)) for c in cols]
            + _diff_cells(a.ablation_diffs[r.spec.name])
        )
    return L + [_table(header, rows), ""]


def _tau0_section(a: Analysis) -> list[str]:
    L = ["## τ0 sweep (`csc.temperature`)", ""]
    if len(a.tau0_rows) < 2:
        return L + ["No τ0 sweep: add ablations whose overrides are exactly `{csc: {temperature: x}}`.", ""]
    header = ["τ0", "run", "top-1", "mAP", "Δ top-1 vs main mnf_csc (pp)", "95% t interval (pp)", "verdict"]
    rows = []
    for t, r in a.tau0_rows:
        is_main = r.spec.kind == "main"
        d = None if is_main else a.ablation_diffs.get(r.spec.name)
        rows.append(
            [
                f"{t:g}",
                f"{r.spec.label} (main)" if is_main else r.spec.label,
                fmt_est(a.est(r, "top1")),
                fmt_est(a.est(r, "mAP")),
            ]
            + ([fmt_pp(d.seed_estimate.mean), fmt_interval(d.seed_estimate), d.seed_verdict] if d else [DASH] * 3)
        )
    return L + [_table(header, rows), ""]


def _robustness_section(a: Analysis) -> list[str]:
    L = ["## Robustness to irrelevant sound (top-1, %)", ""]
    if not a.robust:
        return L + ["No robustness runs in params.yaml (`robustness`).", ""]
    L += [
        f"Columns: `benchmark.irrelevant_rate` (fraction of clips whose sound is irrelevant). The column at "
        f"{a.cfg.base_rate:g} is the main table's run (the benchmark as built)."
        + "".join(
            f" {m} uses no teacher, so its student is the same at every rate: its row is its main run."
            for m in a.robust_methods
            if m in a.cfg.teacher_free
        ),
        "",
    ]
    rows = []
    for m in a.robust_methods:
        cells = []
        for rate in a.rates:
            r = a.robust_grid.get((m, rate))
            cells.append(fmt_est(a.est(r, "top1")) if r is not None else f"{DASH} (not a main run)")
        rows.append([m] + cells)
    L += [_table(["method"] + [f"rate {x:g}" for x in a.rates], rows), ""]
    L += _gain_tables(a)
    return L + [_robust_check(a), ""]


def _gain_tables(a: Analysis) -> list[str]:
    """Gain over none per rate, and mnf_csc − each method per rate (pp, paired over seeds)."""
    if not a.gains:
        return []

    def cell(d: stats.PairedDifference) -> str:
        return f"{fmt_pp(d.seed_estimate.mean)} {fmt_interval(d.seed_estimate)}"

    methods = list(dict.fromkeys(m for m, _ in a.gains))
    header = [f"rate {x:g}" for x in a.rates]
    rows = [[m] + [cell(d) if (d := a.gains.get((m, x))) else DASH for x in a.rates] for m in methods]
    L = [
        "**Distillation's gain over none** (method − none on top-1, pp, paired over seeds [95% t interval]): how much",
        "of what the teacher gives on clean sound each method keeps as irrelevant sound grows.",
        "",
        _table(["method", *header], rows),
        "",
    ]
    others = list(dict.fromkeys(m for m, _ in a.versus))
    if others:
        rows = [
            [f"mnf_csc − {m}"] + [f"{cell(d)} {d.seed_verdict}" if (d := a.versus.get((m, x))) else DASH for x in a.rates]
            for m in others
        ]
        L += [
            "**MNF+CSC against each method at each rate** (pp, paired over seeds [95% t interval], verdict):",
            "",
            _table(["difference", *header], rows),
            "",
        ]
    return L


def _reverse_section(a: Analysis) -> list[str]:
    L = ["## Reverse direction: video teacher -> audio student", ""]
    if not a.reverse:
        return L + ["No reverse runs in params.yaml (`reverse.methods`).", ""]
    L += [metric_table(a, a.reverse, REVERSE_COLUMNS), ""]
    if a.reverse_diff is not None:
        L += [_diff_sentence(a.reverse_diff), ""]
    if a.video_teacher:
        L += [
            "Video teacher (frozen) on the same test clips: "
            + ", ".join(
                f"{k} {100 * float(v):.1f}%" for k, v in sorted(a.video_teacher.items()) if k.startswith("test_top1")
            ),
            "",
        ]
    else:
        L += ["metrics/video_teacher.json not found (the reverse direction's teacher stage).", ""]
    return L


# ----------------------------------------------------------------------------------------------- CSV, JSON


def results_frame(a: Analysis) -> pd.DataFrame:
    """Long table: run, kind, method, label, rate, metric, seed, value (one row per run x seed x metric)."""
    rows = [
        {
            "run": r.spec.name,
            "kind": r.spec.kind,
            "method": r.spec.method,
            "label": r.spec.label,
            "rate": r.rate,
            "metric": m,
            "seed": s,
            "value": v,
        }
        for r in a.runs.values()
        for s, vals in r.values.items()
        for m, v in sorted(vals.items())
    ]
    return pd.DataFrame(rows, columns=["run", "kind", "method", "label", "rate", "metric", "seed", "value"])


def summary_frame(a: Analysis) -> pd.DataFrame:
    """run, metric, mean, std, ci_low, ci_high, n (one row per run and metric)."""
    rows = [
        {
            "run": r.spec.name,
            "metric": m,
            "mean": e.mean,
            "std": e.std,
            "ci_low": e.ci_low,
            "ci_high": e.ci_high,
            "n": e.n,
        }
        for r in a.runs.values()
        for m in r.metrics()
        for e in [a.est(r, m)]
    ]
    return pd.DataFrame(rows, columns=["run", "metric", "mean", "std", "ci_low", "ci_high", "n"])


def _r(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def headline(a: Analysis) -> dict[str, dict[str, float | None]]:
    """The compact (2-level) dict written to ``metrics/summary.json``; NaN becomes null."""
    main = {f"{r.spec.label}/{m}": _r(a.est(r, m).mean) for r in a.main for m in ("top1", "mAP")}
    paired: dict[str, float | None] = {}
    for key, d in a.paired.items():
        pre = key.replace("/", "_")  # mnf_csc-none_top1
        e = d.seed_estimate
        paired |= {pre: _r(e.mean), f"{pre}_ci_low": _r(e.ci_low), f"{pre}_ci_high": _r(e.ci_high)}
        if d.bootstrap is not None:
            paired |= {f"{pre}_boot_low": _r(d.bootstrap.ci_low), f"{pre}_boot_high": _r(d.bootstrap.ci_high)}
    robust = {f"{m}/{rate:g}": _r(a.est(r, "top1").mean) for (m, rate), r in sorted(a.robust_grid.items())}
    out: dict[str, dict[str, float | None]] = {"main": main, "paired": paired}
    if a.premise is not None:
        prem: dict[str, float | None] = {"can_test_claim": 1.0 if a.premise.holds else 0.0}
        for key, d in a.premise.diffs.items():
            e, b = d.seed_estimate, d.bootstrap
            prem |= {f"{key}-none_top1": _r(e.mean), f"{key}-none_ci_low": _r(e.ci_low), f"{key}-none_ci_high": _r(e.ci_high)}
            if b is not None:
                prem |= {f"{key}-none_boot_low": _r(b.ci_low), f"{key}-none_boot_high": _r(b.ci_high)}
        out["premise"] = prem
    if a.ablations:
        out["ablation"] = {f"{r.spec.label}/top1": _r(a.est(r, "top1").mean) for r in a.ablations}
        out["ablation"] |= {
            f"{a.runs[n].spec.label}/delta_top1": _r(d.seed_estimate.mean) for n, d in a.ablation_diffs.items()
        }
    if robust:
        out["robustness"] = robust
    if a.gains:
        out["gain"] = {f"{m}-none/{rate:g}": _r(d.seed_estimate.mean) for (m, rate), d in a.gains.items()}
        out["gain"] |= {f"mnf_csc-{m}/{rate:g}": _r(d.seed_estimate.mean) for (m, rate), d in a.versus.items()}
    if a.reverse:
        out["reverse"] = {f"{r.spec.label}/top1": _r(a.est(r, "top1").mean) for r in a.reverse}
    return out


# ----------------------------------------------------------------------------------------------- plots


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _yerr(e: stats.Estimate) -> float:
    return 100 * e.half_width if e.has_interval else 0.0


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ci_label(a: Analysis) -> str:
    return f"{100 * a.cfg.confidence:.0f}% CI over {len(a.cfg.seeds)} seeds"


def plot_accuracy(a: Analysis, path: Path) -> None:
    """Bars of the main table's top-1 (%) with CI error bars; the audio teacher's top-1 as lines."""
    fig, ax = plt.subplots(figsize=(4.5 + 0.7 * max(len(a.main), 1), 4.2))
    if not a.main:
        _empty(ax, "no main runs in params")
        return _save(fig, path)
    es = [a.est(r, "top1") for r in a.main]
    x = np.arange(len(a.main))
    ax.bar(
        x,
        [100 * e.mean for e in es],
        yerr=[_yerr(e) for e in es],
        capsize=4,
        color=_colors(len(es)),
        label=f"student top-1 (bars: {_ci_label(a)})",
    )
    if a.teacher and "test_top1" in a.teacher:
        ax.axhline(100 * float(a.teacher["test_top1"]), color="k", ls="--", lw=1, label="audio teacher, all test clips")
    if a.teacher and "test_top1/clean" in a.teacher:
        ax.axhline(
            100 * float(a.teacher["test_top1/clean"]), color="gray", ls=":", lw=1, label="audio teacher, clean sound"
        )
    ax.set_xticks(x, [r.spec.label for r in a.main], rotation=30, ha="right")
    ax.set_xlabel("distillation method")
    ax.set_ylabel("test top-1 accuracy (%)")
    finite = [100 * e.mean for e in es if math.isfinite(e.mean)]
    if a.teacher and "test_top1" in a.teacher:
        finite.append(100 * float(a.teacher["test_top1"]) + 5)
    y_low = max(0.0, min(finite, default=0.0) - 15)
    ax.set_ylim(y_low, 100)
    for xi, e in zip(x, es, strict=True):  # the mean, written at the foot of its bar
        if math.isfinite(e.mean):
            ax.text(xi, y_low + 1, f"{100 * e.mean:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_title("Video student, test top-1 (mean over seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_tau0(a: Analysis, path: Path) -> None:
    """Top-1 (%) of mnf_csc against τ0 on a log x axis, CI bars; the main run's τ0 marked."""
    fig, ax = plt.subplots(figsize=(6, 4.8))
    if len(a.tau0_rows) < 2:
        _empty(ax, "no τ0 sweep in params (ablations overriding only csc.temperature)")
        return _save(fig, path)
    ts = [t for t, _ in a.tau0_rows]
    es = [a.est(r, "top1") for _, r in a.tau0_rows]
    ax.errorbar(
        ts,
        [100 * e.mean for e in es],
        yerr=[_yerr(e) for e in es],
        marker="o",
        capsize=4,
        label=f"mnf_csc ({_ci_label(a)})",
    )
    main = [(t, e) for (t, r), e in zip(a.tau0_rows, es, strict=True) if r.spec.kind == "main"]
    if main:
        ax.plot([main[0][0]], [100 * main[0][1].mean], "s", ms=10, mfc="none", mec="C3", label="main run's τ0")
    if a.none is not None:
        ax.axhline(100 * a.est(a.none, "top1").mean, color="gray", ls="--", lw=1, label="none (no distillation)")
    ax.set_xscale("log")
    ax.set_xticks(ts, [f"{t:g}" for t in ts])
    ax.minorticks_off()
    ax.set_xlabel("τ0 = csc.temperature (log scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("MNF+CSC: top-1 against the CSC base temperature τ0")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_robustness(a: Analysis, path: Path) -> None:
    """Top-1 (%) against the irrelevant-sound rate, one line per robustness method, CI bars."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if not a.robust:
        _empty(ax, "no robustness runs in params")
        return _save(fig, path)
    k = len(a.robust_methods)
    span = 100 * (a.rates[-1] - a.rates[0]) if len(a.rates) > 1 else 10.0
    for i, (m, c) in enumerate(zip(a.robust_methods, _colors(k), strict=True)):
        dodge = (i - (k - 1) / 2) * 0.012 * span  # side by side, so the CI bars do not hide each other
        pts = [(rate, a.est(r, "top1")) for rate in a.rates if (r := a.robust_grid.get((m, rate))) is not None]
        ax.errorbar(
            [100 * p + dodge for p, _ in pts],
            [100 * e.mean for _, e in pts],
            yerr=[_yerr(e) for _, e in pts],
            marker="o",
            capsize=4,
            color=c,
            ls="--" if m in a.cfg.teacher_free else "-",
            label=f"{m} (no teacher: its main run)" if m in a.cfg.teacher_free else m,
        )
    ax.axvline(100 * a.cfg.base_rate, color="gray", ls=":", lw=1, label="benchmark as built (main table)")
    ax.set_xticks([100 * r for r in a.rates])
    ax.set_xlabel("clips with irrelevant sound (%)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"Robustness to irrelevant sound (bars: {_ci_label(a)})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_ablations(a: Analysis, path: Path) -> None:
    """Horizontal bars: Δ top-1 (pp) of each ablation against full mnf_csc, paired CI as error bars."""
    names = list(a.ablation_diffs)
    fig, ax = plt.subplots(figsize=(6.5, max(3.2, 1.8 + 0.45 * len(names))))
    if not names:
        _empty(ax, "no ablation runs in params (or no full mnf_csc run)")
        return _save(fig, path)
    ds = [a.ablation_diffs[n].seed_estimate for n in names]
    y = np.arange(len(names))[::-1]
    colors = ["C3" if stats.verdict(e) == stats.LOSS else "C2" if stats.verdict(e) == stats.WIN else "C7" for e in ds]
    ax.barh(y, [100 * _finite_or(e.mean, 0.0) for e in ds], xerr=[_yerr(e) for e in ds], capsize=4, color=colors)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(y, [a.runs[n].spec.label for n in names])
    ax.set_xlabel("Δ test top-1 vs full mnf_csc (percentage points)")
    ax.set_title(
        f"Ablations (paired over seeds; bars: {_ci_label(a)})\nred: significantly worse, green: better, grey: n.s."
    )
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_training_curves(a: Analysis, path: Path) -> None:
    """Validation top-1 (%) per epoch, mean over seeds, one line per main method."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for i, (r, c) in enumerate(zip(a.main, _colors(len(a.main)), strict=True)):
        hs = [h for h in r.history.values() if h and all("val_top1" in e for e in h)]
        if not hs:
            continue
        n_ep = min(len(h) for h in hs)
        v = np.array([[100 * float(h[e]["val_top1"]) for e in range(n_ep)] for h in hs])  # (seeds, epochs)
        ax.plot(
            np.arange(1, n_ep + 1),
            v.mean(axis=0),
            marker=".",
            color=c,
            ls="-" if i % 2 == 0 else "--",
            label=r.spec.label,
        )
        drawn += 1
    if not drawn:
        _empty(ax, "no training history with val_top1")
        return _save(fig, path)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.set_title(f"Training curves, mean over {len(a.cfg.seeds)} seeds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    _save(fig, path)


# ----------------------------------------------------------------------------------------------- entry point


def build_report(
    specs: Sequence[RunSpecLike], cfg: ReportConfig, layout: Layout = Layout(), out_dir: Path | None = None
) -> dict[str, dict[str, float | None]]:
    """Write every table and plot of the report to ``out_dir`` (default ``layout.reports``).

    Args:
        specs: every run named in params, in params order (:func:`xmkd.runs.run_specs`).
        cfg: seeds, benchmark rate, main τ0 and statistics settings (:meth:`ReportConfig.from_params`).
        layout: where the input files are.
        out_dir: output folder (created).

    Returns:
        The headline dict for ``metrics/summary.json`` (see :func:`headline`).

    Raises:
        DataError: an input file is missing or invalid; the message names the DVC stage to run.
    """
    a = analyse(specs, cfg, layout)
    out = out_dir or layout.reports
    out.mkdir(parents=True, exist_ok=True)
    results_frame(a).to_csv(out / "results.csv", index=False, float_format="%.6f")
    summary_frame(a).to_csv(out / "summary.csv", index=False, float_format="%.6f")
    (out / "results.md").write_text(markdown(a))
    plot_accuracy(a, out / "accuracy.png")
    plot_tau0(a, out / "tau0.png")
    plot_robustness(a, out / "robustness.png")
    plot_ablations(a, out / "ablations.png")
    plot_training_curves(a, out / "training_curves.png")
    return headline(a)


def flat_metrics(summary: dict[str, dict[str, float | None]]) -> dict[str, float]:
    """``{"section/key": value}`` of the headline dict, nulls dropped (for MLflow)."""
    return {f"{s}/{k}": float(v) for s, d in summary.items() for k, v in d.items() if v is not None}
