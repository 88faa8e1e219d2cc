"""Report analysis: every run's estimates with intervals, paired differences, the premise check, gain grids.

Statistics: :mod:`xmkd.stats` (t intervals over seeds, paired differences, bootstrap over test clips).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmkd import stats
from xmkd.errors import DataError
from xmkd.report.load import (
    PREMISE_FAILS,
    PREMISE_HOLDS,
    Layout,
    Predictions,
    ReportConfig,
    RunData,
    RunSpecLike,
    _optional_json,
    load_predictions,
    load_run,
    tau0_of,
)


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


CLAIM_HOLDS = "holds"
CLAIM_FAILS = "does not hold"
CLAIM_UNSUPPORTED = "not supported"
CLAIM_UNCHECKED = "cannot be checked"


def claim_diffs(a: Analysis) -> list[stats.PairedDifference]:
    """The paired top-1 differences the paper's claim is judged on: ``mnf_csc − none`` and ``mnf_csc − best
    baseline`` (those that ran)."""
    return [d for k in ("none", "best") if (d := a.paired.get(f"mnf_csc-{k}/top1")) is not None]


def claim_verdict(a: Analysis) -> str:
    """Verdict on the claim of Xia et al. (arXiv 2304.07775) that MNF+CSC beats the baselines, on top-1.

    Returns:
        :data:`CLAIM_HOLDS` when every difference of :func:`claim_diffs` is a win on both its seed interval and
        its bootstrap interval; :data:`CLAIM_FAILS` when one of them is a loss on either; :data:`CLAIM_UNCHECKED`
        when mnf_csc, or both none and every baseline, are missing from ``methods``; else
        :data:`CLAIM_UNSUPPORTED` (no interval excludes zero in either direction).
    """
    diffs = claim_diffs(a)
    if a.full_mnf is None or not diffs:
        return CLAIM_UNCHECKED
    verdicts = [(d.seed_verdict, d.bootstrap_verdict) for d in diffs]
    if all(sv == stats.WIN and bv == stats.WIN for sv, bv in verdicts):
        return CLAIM_HOLDS
    if any(stats.LOSS in v for v in verdicts):
        return CLAIM_FAILS
    return CLAIM_UNSUPPORTED


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


def _rate_key(rates: list[float], r: float) -> float:
    return next((x for x in rates if math.isclose(x, r, abs_tol=1e-9)), r)


def _finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default
