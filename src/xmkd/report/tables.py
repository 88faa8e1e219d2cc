"""Report tables: number formatting, markdown tables, the long and summary CSV frames, the headline dict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from xmkd import stats
from xmkd.report.analysis import Analysis, claim_verdict
from xmkd.report.load import DASH, DECIMALS, NON_PERCENT, RunData


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


#: The headline metrics of each run in ``metrics/runs.json``.
RUN_HEADLINE = ("top1", "mAP")


@dataclass(frozen=True)
class Headline:
    """The metrics files `dvc exp show` shows (the report's headline numbers; per-seed detail stays in outputs).

    Attributes:
        summary: ``metrics/summary.json``, the conclusions: the verdicts on the premise and on the claim
            (strings), the paired differences with their intervals, the ablations' Δ top-1 and the gains over
            none (see :func:`headline`).
        runs: ``metrics/runs.json``, run name -> top-1 and mAP, mean over seeds and t interval (see
            :func:`run_headline`).
    """

    summary: dict[str, dict[str, float | str | None]]
    runs: dict[str, dict[str, float | None]]


def run_headline(a: Analysis) -> dict[str, dict[str, float | None]]:
    """``metrics/runs.json``: for every run in params, ``top1``, ``top1_ci_low``, ``top1_ci_high``, ``mAP``,
    ``mAP_ci_low``, ``mAP_ci_high`` (fractions: mean over seeds and its t interval; null when undefined, e.g.
    the interval of one seed)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, r in a.runs.items():
        out[name] = {}
        for m in RUN_HEADLINE:
            e = a.est(r, m)
            out[name] |= {m: _r(e.mean), f"{m}_ci_low": _r(e.ci_low), f"{m}_ci_high": _r(e.ci_high)}
    return out


def headline(a: Analysis) -> dict[str, dict[str, float | str | None]]:
    """The compact (2-level) dict written to ``metrics/summary.json``; NaN becomes null.

    Sections: ``verdict`` (``premise``: :data:`~xmkd.report.load.PREMISE_HOLDS` or ``PREMISE_FAILS``;
    ``claim``: :func:`~xmkd.report.analysis.claim_verdict`), ``paired`` (mnf_csc against none and the best
    baseline, with seed and bootstrap intervals), ``premise`` (the distillers against none at rate 0),
    ``ablation`` (Δ top-1 of each ablation against mnf_csc), ``gain`` (each method against none, and mnf_csc
    against each method, at every irrelevant-sound rate). The runs' own numbers are in :func:`run_headline`.
    """
    paired: dict[str, float | str | None] = {}
    for key, d in a.paired.items():
        pre = key.replace("/", "_")  # mnf_csc-none_top1
        e = d.seed_estimate
        paired |= {pre: _r(e.mean), f"{pre}_ci_low": _r(e.ci_low), f"{pre}_ci_high": _r(e.ci_high)}
        if d.bootstrap is not None:
            paired |= {f"{pre}_boot_low": _r(d.bootstrap.ci_low), f"{pre}_boot_high": _r(d.bootstrap.ci_high)}
    verdict: dict[str, float | str | None] = {"claim": claim_verdict(a)}
    out: dict[str, dict[str, float | str | None]] = {"verdict": verdict, "paired": paired}
    if a.premise is not None:
        verdict["premise"] = a.premise.verdict if not a.premise.missing else "cannot be checked"
        prem: dict[str, float | str | None] = {"can_test_claim": 1.0 if a.premise.holds else 0.0}
        for key, d in a.premise.diffs.items():
            e, b = d.seed_estimate, d.bootstrap
            prem |= {f"{key}-none_top1": _r(e.mean), f"{key}-none_ci_low": _r(e.ci_low), f"{key}-none_ci_high": _r(e.ci_high)}
            if b is not None:
                prem |= {f"{key}-none_boot_low": _r(b.ci_low), f"{key}-none_boot_high": _r(b.ci_high)}
        out["premise"] = prem
    if a.ablation_diffs:
        out["ablation"] = {
            f"{a.runs[n].spec.label}/delta_top1": _r(d.seed_estimate.mean) for n, d in a.ablation_diffs.items()
        }
    if a.gains:
        out["gain"] = {f"{m}-none/{rate:g}": _r(d.seed_estimate.mean) for (m, rate), d in a.gains.items()}
        out["gain"] |= {f"mnf_csc-{m}/{rate:g}": _r(d.seed_estimate.mean) for (m, rate), d in a.versus.items()}
    return out


def flat_metrics(summary: dict[str, dict[str, float | str | None]]) -> dict[str, float]:
    """``{"section/key": value}`` of a 2-level headline dict, numbers only (nulls and verdict strings dropped;
    for MLflow)."""
    return {
        f"{s}/{k}": float(v)
        for s, d in summary.items()
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
