"""Report plots: accuracy, τ0 sweep, robustness, ablations, training curves (PNG, matplotlib Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from xmkd import stats  # noqa: E402
from xmkd.report.analysis import Analysis, _finite_or  # noqa: E402


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
