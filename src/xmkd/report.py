"""Comparison report: tables (markdown + CSV) and plots built from the runs named in params.

The table is built from ``methods`` x ``seeds`` in params.yaml, never by globbing ``metrics/``: a
stale metrics file of a method removed from params cannot leak into the report, and a missing run
is an error that names the stage to run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from xmkd.errors import DataError  # noqa: E402

# Main-table columns, in order (metric key in metrics/eval/*.json -> column header).
MAIN_COLUMNS = {
    "top1": "top-1",
    "top5": "top-5",
    "mean_class_acc": "mean class acc",
    "R@1": "R@1",
    "R@5": "R@5",
    "R@10": "R@10",
    "mAP": "mAP",
}
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


@dataclass(frozen=True)
class RunMetrics:
    """Metrics of one (method, seed) run: eval (test) metrics and the training history."""

    method: str
    seed: int
    eval: dict[str, float]
    history: list[dict[str, float]]


def load_runs(methods: list[str], seeds: list[int], eval_dir: Path, train_dir: Path) -> list[RunMetrics]:
    """Read ``<eval_dir>/<m>-<s>.json`` and ``<train_dir>/<m>-<s>.json`` for every method and seed.

    Raises:
        DataError: a run's metrics file is missing (names the stage that produces it).
    """
    runs = []
    for m in methods:
        for s in seeds:
            ev, tr = eval_dir / f"{m}-{s}.json", train_dir / f"{m}-{s}.json"
            for f, stage in ((ev, "evaluate"), (tr, "distill")):
                if not f.exists():
                    raise DataError(f"{f} is missing: run `dvc repro {stage}@{m}-{s}` (or `dvc repro`).")
            runs.append(RunMetrics(m, s, json.loads(ev.read_text()), json.loads(tr.read_text())["history"]))
    return runs


def summarize(runs: list[RunMetrics]) -> pd.DataFrame:
    """Long table: one row per (method, metric) with mean, std (ddof=1; 0 for one seed), n, values."""
    rows = []
    methods = list(dict.fromkeys(r.method for r in runs))
    for m in methods:
        mine = [r for r in runs if r.method == m]
        keys = sorted(set().union(*(r.eval for r in mine)))
        for k in keys:
            vals = np.array([r.eval[k] for r in mine if k in r.eval], dtype=float)
            rows.append(
                {
                    "method": m,
                    "metric": k,
                    "mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                    "values": " ".join(f"{v:.4f}" for v in vals),
                }
            )
    return pd.DataFrame(rows, columns=["method", "metric", "mean", "std", "n", "values"])


def _cell(df: pd.DataFrame, method: str, metric: str, percent: bool = True) -> str:
    row = df[(df.method == method) & (df.metric == metric)]
    if row.empty or math.isnan(row["mean"].iloc[0]):
        return "–"
    if percent:
        return f"{row['mean'].iloc[0] * 100:.1f} ± {row['std'].iloc[0] * 100:.1f}"
    return f"{row['mean'].iloc[0]:.3f} ± {row['std'].iloc[0]:.3f}"


def markdown_table(df: pd.DataFrame, methods: list[str], columns: dict[str, str], percent: bool = True) -> str:
    """Markdown table, one row per method, ``mean ± std`` (in % when ``percent``) per column."""
    cols = [c for c in columns if (df.metric == c).any()]
    lines = ["| method | " + " | ".join(columns[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_cell(df, m, c, percent) for c in cols) + " |")
    return "\n".join(lines)


def plot_accuracy(df: pd.DataFrame, methods: list[str], path: Path, teacher_top1: float | None) -> None:
    """Grouped bars of top-1, top-5 and mAP (%) per method with ±1 std error bars over seeds."""
    metrics = [("top1", "top-1"), ("top5", "top-5"), ("mAP", "mAP")]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(methods))
    for i, (k, label) in enumerate(metrics):
        means = [100 * _get(df, m, k, "mean") for m in methods]
        stds = [100 * _get(df, m, k, "std") for m in methods]
        ax.bar(x + (i - 1) * width, means, width, yerr=stds, capsize=3, label=label)
    if teacher_top1 is not None:
        ax.axhline(100 * teacher_top1, color="k", ls="--", lw=1, label="audio teacher top-1")
    ax.set_xticks(x, methods)
    ax.set_ylabel("test accuracy / mAP (%)")
    ax.set_xlabel("distillation method")
    n = int(df["n"].max()) if len(df) else 0
    ax.set_title(f"Video student on the test clips (mean ± std over {n} seeds)")
    lo = min(100 * _get(df, m, "mAP", "mean") for m in methods)
    ax.set_ylim(max(0.0, lo - 15), 100)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _get(df: pd.DataFrame, method: str, metric: str, col: str) -> float:
    row = df[(df.method == method) & (df.metric == metric)]
    return float(row[col].iloc[0]) if not row.empty else float("nan")


def plot_training_curves(runs: list[RunMetrics], methods: list[str], path: Path) -> None:
    """Validation top-1 (%) and total training loss per epoch; mean over seeds with a min-max band."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        hs = [r.history for r in runs if r.method == m]
        n_ep = min(len(h) for h in hs)
        ep = np.arange(1, n_ep + 1)
        for ax, key, scale in ((ax1, "val_top1", 100.0), (ax2, "loss/total", 1.0)):
            if not all(key in h[0] for h in hs):
                continue
            v = np.array([[h[e][key] * scale for e in range(n_ep)] for h in hs])
            (line,) = ax.plot(ep, v.mean(0), label=m)
            ax.fill_between(ep, v.min(0), v.max(0), color=line.get_color(), alpha=0.2)
    ax1.set(xlabel="epoch", ylabel="validation top-1 (%)", title="Validation accuracy")
    ax2.set(xlabel="epoch", ylabel="training loss (sum of weighted terms)", title="Training loss")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(
    methods: list[str],
    seeds: list[int],
    eval_dir: Path,
    train_dir: Path,
    teacher_metrics: dict[str, Any] | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Write ``results.md``, ``results.csv``, ``accuracy.png``, ``training_curves.png`` to ``out_dir``.

    Returns:
        A headline summary per method (``{method: {"top1": mean, "top1_std": ..., "mAP": ...}}``).

    Raises:
        DataError: a run's metrics are missing.
    """
    runs = load_runs(methods, seeds, eval_dir, train_dir)
    df = summarize(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "results.csv", index=False, float_format="%.6f")
    teacher_top1 = teacher_metrics.get("test_top1") if teacher_metrics else None
    plot_accuracy(df, methods, out_dir / "accuracy.png", teacher_top1)
    plot_training_curves(runs, methods, out_dir / "training_curves.png")
    lines = [
        "# Cross-modal distillation: audio teacher -> video student",
        "",
        f"Runs: methods {methods} x seeds {seeds}; test clips; mean ± std over seeds, in %. "
        "Built by `dvc repro` (stage `report`) from the runs named in params.yaml.",
        "",
        "## Main table",
        "",
        markdown_table(df, methods, MAIN_COLUMNS),
        "",
        "## Student top-1 by the clip's audio condition",
        "",
        "The student sees only video; the condition is that of the sound its teacher heard in training "
        "and test clips.",
        "",
        markdown_table(df, methods, CONDITION_COLUMNS),
    ]
    gate_methods = [m for m in methods if (df[(df.method == m)].metric == "gate_auroc").any()]
    if gate_methods:
        lines += [
            "",
            "## MNF gate (mean of g per audio condition; AUROC of clean vs irrelevant)",
            "",
            markdown_table(df, gate_methods, GATE_COLUMNS, percent=False),
        ]
    if teacher_metrics:
        lines += ["", "## Audio teacher (frozen) on the same test clips", ""]
        lines += [f"- {k}: {100 * v:.1f}%" for k, v in sorted(teacher_metrics.items()) if k.startswith("test_top1")]
    lines += ["", "![accuracy](accuracy.png)", "", "![training curves](training_curves.png)", ""]
    (out_dir / "results.md").write_text("\n".join(lines))
    summary: dict[str, Any] = {}
    for m in methods:
        summary[m] = {
            "top1": round(_get(df, m, "top1", "mean"), 6),
            "top1_std": round(_get(df, m, "top1", "std"), 6),
            "mAP": round(_get(df, m, "mAP", "mean"), 6),
        }
    return summary
