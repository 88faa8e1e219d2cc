"""The data files of the DVC plots (``plots:`` in dvc.yaml): one JSON list of records per plot, in ``reports/plots/``.

`dvc plots show` draws them with the templates in ``.dvc/plots/`` (a line per method, a dash per revision),
and `dvc plots diff <exp>` overlays two experiments. Values are fractions, like every metrics file.

- ``training.json``: per main run and epoch, the mean over seeds of ``val_top1``, ``train_top1``, ``loss`` (the
  total training loss) and ``lr``;
- ``loss_terms.json``: per main run, epoch and loss term (``ce``, ``kd``, ``csc``, ...), the mean over seeds;
- ``robustness.json``: per robustness method and irrelevant-sound rate, test top-1 (mean over seeds, t interval);
- ``tau0.json``: the τ0 sweep of mnf_csc (the main run and the ablations that only change ``csc.temperature``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xmkd.report.analysis import Analysis
from xmkd.report.load import RunData

#: The files :func:`write_plot_data` writes (see the module docstring).
PLOT_DATA = ("training.json", "loss_terms.json", "robustness.json", "tau0.json")

#: Per-epoch history key -> field of ``training.json``.
TRAINING_FIELDS = {"val_top1": "val_top1", "train_top1": "train_top1", "loss/total": "loss", "lr": "lr"}


def _num(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def _epoch_means(run: RunData) -> list[dict[str, float]]:
    """Per epoch (the epochs every seed has), the mean over seeds of each finite history value."""
    hs = [h for h in run.history.values() if h]
    if not hs:
        return []
    out = []
    for e in range(min(len(h) for h in hs)):
        keys = sorted(set().union(*(h[e].keys() for h in hs)) - {"epoch"})
        means: dict[str, float] = {}
        for k in keys:
            vals = [float(v) for h in hs if isinstance(v := h[e].get(k), (int, float)) and math.isfinite(v)]
            if vals:
                means[k] = sum(vals) / len(vals)
        out.append(means)
    return out


def training_records(a: Analysis) -> list[dict[str, Any]]:
    """``training.json``: {method, run, epoch, val_top1, train_top1, loss, lr} per main run and epoch (seed means)."""
    rows = []
    for r in a.main:
        for e, m in enumerate(_epoch_means(r), 1):
            row: dict[str, Any] = {"method": r.spec.label, "run": r.spec.name, "epoch": e}
            row |= {f: _num(m[k]) for k, f in TRAINING_FIELDS.items() if k in m}
            rows.append(row)
    return rows


def loss_term_records(a: Analysis) -> list[dict[str, Any]]:
    """``loss_terms.json``: {method, run, epoch, term, value} per main run, epoch and loss term (seed means);
    ``loss/total`` is in ``training.json``."""
    rows = []
    for r in a.main:
        for e, m in enumerate(_epoch_means(r), 1):
            for k, v in m.items():
                if k.startswith("loss/") and k != "loss/total":
                    rows.append({"method": r.spec.label, "run": r.spec.name, "epoch": e, "term": k[5:], "value": _num(v)})
    return rows


def _estimate_row(a: Analysis, r: RunData) -> dict[str, Any]:
    e = a.est(r, "top1")
    return {"top1": _num(e.mean), "ci_low": _num(e.ci_low), "ci_high": _num(e.ci_high), "seeds": e.n}


def robustness_records(a: Analysis) -> list[dict[str, Any]]:
    """``robustness.json``: {method, run, rate, top1, ci_low, ci_high, seeds} per robustness method and rate."""
    return [
        {"method": m, "run": r.spec.name, "rate": rate, **_estimate_row(a, r)}
        for m in a.robust_methods
        for rate in a.rates
        if (r := a.robust_grid.get((m, rate))) is not None
    ]


def tau0_records(a: Analysis) -> list[dict[str, Any]]:
    """``tau0.json``: {method, run, tau0, top1, ci_low, ci_high, seeds} for each τ0 of the sweep."""
    return [{"method": "mnf_csc", "run": r.spec.name, "tau0": t, **_estimate_row(a, r)} for t, r in a.tau0_rows]


def write_plot_data(a: Analysis, out: Path) -> None:
    """Write every file of :data:`PLOT_DATA` to ``out`` (created); a plot without data gets an empty list."""
    out.mkdir(parents=True, exist_ok=True)
    for name, records in zip(
        PLOT_DATA, (training_records(a), loss_term_records(a), robustness_records(a), tau0_records(a)), strict=True
    ):
        (out / name).write_text(json.dumps(records, indent=1, allow_nan=False) + "\n")
