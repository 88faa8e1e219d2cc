"""The CORSMAL report: the comparison on 3 container folds, in the shape of the main table.

Inputs (written by ``corsmal/dvc.yaml``; every file is read through the main report's loaders, so a missing or
stale one is a :class:`~xmkd.errors.DataError` naming the stage to run): per run and fold k,
``corsmal/runs/<run>/fold-<k>/{eval,train}/<run>.json`` and ``<run>.npz``; per fold ``corsmal/folds/fold-<k>/
teacher.json``.

Statistics (:mod:`xmkd.stats`, 95%):

- a cell = the mean over the folds; its ± std and [t interval] are over the seeds of the fold mean (the folds are
  the protocol, the same for every method; the seeds are the training randomness);
- ``method − none`` is paired over the (fold, seed) pairs: the same fold and seed give the same initialisation,
  batches and teacher to both; a t interval over the 9 differences, and a paired bootstrap over the held-out
  recordings (each recording is held out in exactly one fold, so the 3 folds' predictions cover all 684 once):
  seed-averaged correctness, the same resampled recordings for both. A distiller *beats* ``none`` when both
  intervals lie above 0. Fourteen comparisons at 95% each: about one false "win" in 14 is expected by chance.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xmkd import stats
from xmkd.errors import DataError
from xmkd.report.analysis import bootstrap_top1
from xmkd.report.load import DASH, Layout, Predictions, ReportConfig, RunData, RunSpecLike, load_predictions, load_run
from xmkd.report.tables import _table, fmt_est, fmt_interval, fmt_pp

#: Published weighted F1 on this protocol (Iashin et al., arXiv 2012.01311; v-iashin/CORSMAL READMEs): the best
#: validation epoch, selected on the held-out containers themselves, averaged over the 3 folds.
PUBLISHED = {"audio": ("VGGish + GRU", 0.913), "video": ("R(2+1)D RGB, 4 cameras, GRU", 0.673)}
COLUMNS = {"top1": "top-1", "mean_class_acc": "mean class acc.", "f1_weighted": "weighted F1",
           "f1_best_epoch": "weighted F1, best epoch (optimistic)"}


@dataclass(frozen=True)
class FoldLayout(Layout):
    """Where one run's files of one fold are: ``root`` = ``corsmal/runs/<run>/fold-<k>``."""

    @property
    def eval_dir(self) -> Path:
        """``<root>/eval``."""
        return self.root / "eval"

    @property
    def train_dir(self) -> Path:
        """``<root>/train``."""
        return self.root / "train"

    @property
    def pred_dir(self) -> Path:
        """``<root>`` (``<run>.npz``)."""
        return self.root


@dataclass
class CorsmalRunData:
    """One run on every fold: ``folds[k]`` the fold's :class:`~xmkd.report.load.RunData`, ``pred`` the held-out
    predictions of all folds concatenated (every recording once)."""

    spec: RunSpecLike
    folds: dict[int, RunData]
    pred: Predictions

    def pairs(self, metric: str) -> dict[tuple[int, int], float]:
        """(fold, seed) -> value."""
        return {(f, s): v for f, r in self.folds.items() for s, v in r.per_seed(metric).items()}

    def fold_mean(self, metric: str) -> dict[int, float]:
        """seed -> the mean over the folds."""
        seeds = next(iter(self.folds.values())).values
        return {s: float(np.mean([r.per_seed(metric)[s] for r in self.folds.values()])) for s in seeds}


def load_corsmal_run(spec: RunSpecLike, folds: Sequence[int], cfg: ReportConfig, runs_dir: Path) -> CorsmalRunData:
    """Read a run's files of every fold (the main report's loaders and checks).

    Raises:
        DataError: a file is missing, of another run or lacks a seed (names the stage to run).
    """
    per_fold, preds = {}, []
    for f in folds:
        layout = FoldLayout(runs_dir / spec.name / f"fold-{f}")
        per_fold[f] = load_run(spec, cfg, layout, with_history=True)
        preds.append(load_predictions(spec, cfg, layout))
    pred = Predictions(np.concatenate([p.ids for p in preds]), np.concatenate([p.labels for p in preds]),
                       np.concatenate([p.pred for p in preds], axis=1))
    return CorsmalRunData(spec, per_fold, pred)


def _paired(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float], names: tuple[str, str], metric: str,
            cfg: ReportConfig) -> stats.PairedDifference:
    keys = sorted(set(a) & set(b))  # (fold, seed) pairs, numbered for stats.paired_difference
    return stats.paired_difference({i: a[k] for i, k in enumerate(keys)}, {i: b[k] for i, k in enumerate(keys)},
                                   names, metric, cfg.confidence)


@dataclass
class CorsmalAnalysis:
    """Everything the CORSMAL report states (see :func:`analyse_corsmal`)."""

    cfg: ReportConfig
    folds: tuple[int, ...]
    runs: dict[str, CorsmalRunData]
    teacher: dict[int, dict[str, Any]]
    vs_none: dict[str, dict[str, stats.PairedDifference]]  # run -> {"top1" (with bootstrap), "f1_weighted"}
    vs_full: dict[str, stats.PairedDifference]  # ablation run -> top-1 minus the full mnf_csc's

    def est(self, run: str, metric: str, fold: int | None = None) -> stats.Estimate:
        """Over the seeds: of the fold mean (``fold`` None), or of one fold."""
        r = self.runs[run]
        vals = r.fold_mean(metric) if fold is None else r.folds[fold].per_seed(metric)
        return stats.describe(vals.values(), self.cfg.confidence)

    def winners(self) -> list[str]:
        """Distillers (main runs other than none) whose top-1 beats ``none`` on both intervals."""
        return [n for n, d in self.vs_none.items() if self.runs[n].spec.kind == "main" and _beats(d["top1"])]


def _beats(d: stats.PairedDifference) -> bool:
    return d.seed_verdict == stats.WIN and d.bootstrap_verdict == stats.WIN


def analyse_corsmal(specs: Sequence[RunSpecLike], folds: Sequence[int], cfg: ReportConfig, out_root: Path
                    ) -> CorsmalAnalysis:
    """Load every run and fold, the teacher metrics, and compute the paired differences.

    Raises:
        DataError: an input is missing or invalid (names the stage to run); no ``none`` run.
    """
    runs = {s.name: load_corsmal_run(s, folds, cfg, out_root / "runs") for s in specs}
    teacher = {}
    for f in folds:
        p = out_root / "folds" / f"fold-{f}" / "teacher.json"
        if not p.exists():
            raise DataError(f"{p} is missing: run `dvc repro corsmal/dvc.yaml:teacher@{f}`.")
        teacher[f] = json.loads(p.read_text())
    none = next((r for r in runs.values() if r.spec.kind == "main" and r.spec.method == "none"), None)
    if none is None:
        raise DataError("the CORSMAL report compares every run with `none`: add none to params.yaml `methods`.")
    vs_none: dict[str, dict[str, stats.PairedDifference]] = {}
    for name, r in runs.items():
        if r is none:
            continue
        names = (r.spec.label, "none")
        top1 = _paired(r.pairs("top1"), none.pairs("top1"), names, "top1", cfg)
        vs_none[name] = {"top1": dataclasses.replace(top1, bootstrap=bootstrap_top1(r.pred, none.pred, names, cfg)),
                         "f1_weighted": _paired(r.pairs("f1_weighted"), none.pairs("f1_weighted"), names,
                                                "f1_weighted", cfg)}
    full = next((r for r in runs.values() if r.spec.kind == "main" and r.spec.method == "mnf_csc"), None)
    vs_full = {n: _paired(r.pairs("top1"), full.pairs("top1"), (r.spec.label, "mnf_csc"), "top1", cfg)
               for n, r in runs.items() if full is not None and r.spec.kind == "ablation"}
    return CorsmalAnalysis(cfg, tuple(folds), runs, teacher, vs_none, vs_full)


def _pct(x: float) -> str:
    return DASH if not math.isfinite(x) else f"{100 * x:.1f}"


def _diff(d: stats.PairedDifference | None, boot: bool = False) -> list[str]:
    if d is None:
        return [DASH] * (4 if boot else 2)
    e = d.seed_estimate
    cells = [fmt_pp(e.mean), fmt_interval(e)]
    if boot:
        cells += [fmt_interval(d.bootstrap), "**beats none**" if _beats(d) else (
            "below none" if d.seed_verdict == stats.LOSS and d.bootstrap_verdict == stats.LOSS else "no clear difference")]
    return cells


def premise_sentences(a: CorsmalAnalysis) -> list[str]:
    """Does any distiller beat ``none``, and MNF+CSC in particular (plain sentences with the numbers)."""
    win = a.winners()
    main = [n for n in a.vs_none if a.runs[n].spec.kind == "main"]
    out = ["**Does any distiller beat the video student alone?** "
           + (f"Yes: {', '.join(f'`{w}`' for w in win)} (top-1, both intervals above 0)." if win else
              f"No: none of the {len(main)} distillers has both intervals of its top-1 difference above 0.")]
    half = [n for n in main if n not in win and stats.WIN in (a.vs_none[n]["top1"].seed_verdict,
                                                                a.vs_none[n]["top1"].bootstrap_verdict)]
    if half:
        out.append("Closest (one of the two intervals above 0, not both): " + "; ".join(
            f"`{n}` {fmt_pp(d.seed_estimate.mean)} points {fmt_interval(d.seed_estimate)}, bootstrap "
            f"{fmt_interval(d.bootstrap)}" for n in half for d in [a.vs_none[n]["top1"]]) + ".")
    below = [n for n in main if a.vs_none[n]["top1"].seed_verdict == stats.LOSS
             and a.vs_none[n]["top1"].bootstrap_verdict == stats.LOSS]
    if below:
        out.append(f"Below `none` on both intervals: {', '.join(f'`{n}`' for n in below)}.")
    if "mnf_csc" in a.vs_none:
        d, f1 = a.vs_none["mnf_csc"]["top1"], a.vs_none["mnf_csc"]["f1_weighted"]
        verdict = "beats" if _beats(d) else "does not beat"
        out.append(f"**MNF+CSC {verdict} `none`**: top-1 {fmt_pp(d.seed_estimate.mean)} points "
                   f"{fmt_interval(d.seed_estimate)} over the (fold, seed) pairs, bootstrap {fmt_interval(d.bootstrap)}; "
                   f"weighted F1 {fmt_pp(f1.seed_estimate.mean)} {fmt_interval(f1.seed_estimate)}.")
    return out


def markdown_corsmal(a: CorsmalAnalysis) -> str:
    """``corsmal/reports/results.md``."""
    folds, seeds = a.folds, a.cfg.seeds
    t_f1 = [a.teacher[f]["test_f1_weighted"] for f in folds]
    main = [n for n, r in a.runs.items() if r.spec.kind == "main"]
    abl = [n for n, r in a.runs.items() if r.spec.kind == "ablation"]
    lines = [
        "# CORSMAL filling type: cross-modal distillation on real audio-visual features", "",
        f"Audio (VGGish) teacher -> video (R(2+1)D features of 4 cameras) student, 4 classes (empty, pasta, rice, "
        f"water), the source's {len(folds)} container folds (held out: {{3,6,9}}, {{2,5,8}}, {{1,4,7}}), seeds "
        f"{list(seeds)} per fold. Metrics on the held-out containers at the **last epoch** (no selection). A cell: "
        "the mean over the folds, ± std and [95% t interval] over the seeds of the fold mean. `− none`: paired "
        f"over the {len(folds) * len(seeds)} (fold, seed) pairs (t interval) and a paired bootstrap over the "
        "held-out recordings (each once). The best-epoch F1 is selected on the held-out containers themselves: "
        "optimistic, shown only beside the published figures, which are selected so.", "",
        "## The premise check", "", *(x for line in premise_sentences(a) for x in (line, "")),
        "## Teacher and video student beside the published figures (weighted F1, %)", "",
        _table(["model", "ours, last epoch", "ours, best held-out epoch (optimistic)", "published (best validation "
                "epoch, mean over folds)"], [
            [f"audio teacher, {PUBLISHED['audio'][0]}", f"{_pct(float(np.mean(t_f1)))} (folds "
             + " / ".join(_pct(x) for x in t_f1) + ")", f"{DASH} (frozen at its last epoch)",
             _pct(PUBLISHED["audio"][1])],
            ["video student alone (`none`), masked temporal conv", fmt_est(a.est("none", "f1_weighted")),
             fmt_est(a.est("none", "f1_best_epoch")), f"{_pct(PUBLISHED['video'][1])} ({PUBLISHED['video'][0]})"],
        ]), "",
        "## Main table (mean over folds)", "",
        _table(["method", *COLUMNS.values(), "top-1 − none", "[t interval]", "[bootstrap]", "verdict",
                "F1 − none", "[t interval]"],
               [[a.runs[n].spec.label, *(fmt_est(a.est(n, m)) for m in COLUMNS),
                 *_diff(a.vs_none.get(n, {}).get("top1"), boot=True), *_diff(a.vs_none.get(n, {}).get("f1_weighted"))]
                for n in main]), "",
    ]
    if abl:
        lines += ["## MNF+CSC ablations (mean over folds)", "",
                  _table(["ablation", *COLUMNS.values(), "top-1 − mnf_csc", "[t interval]", "top-1 − none",
                          "[t interval]", "[bootstrap]", "verdict"],
                         [[a.runs[n].spec.label, *(fmt_est(a.est(n, m)) for m in COLUMNS), *_diff(a.vs_full.get(n)),
                           *_diff(a.vs_none[n]["top1"], boot=True)] for n in abl]), ""]
    lines += ["## Per fold (mean over seeds ± std [95% t interval])", "",
              _table(["run", *(f"fold {f} {c}" for f in folds for c in ("top-1", "weighted F1"))],
                     [[a.runs[n].spec.label, *(fmt_est(a.est(n, m, f)) for f in folds for m in ("top1", "f1_weighted"))]
                      for n in (*main, *abl)]), "",
              "Teacher per fold (held-out containers, last epoch): " + "; ".join(
                  f"fold {f} top-1 {_pct(a.teacher[f]['test_top1'])}, weighted F1 {_pct(a.teacher[f]['test_f1_weighted'])}"
                  for f in folds) + ".", "",
              "## What does not apply here", "",
              "- **Robustness to irrelevant sound**: CORSMAL has no controlled rate of irrelevant sound (every "
              "recording's sound is its own), so the robustness runs, the per-condition metrics and the gate "
              "statistics of the main report are not computed.",
              "- Retrieval metrics (R@k, mAP) and top-5 (4 classes) are not computed.", "",
              "Files: `results.csv` (every run, fold, seed and metric), `summary.csv` (estimates per run, metric and "
              "scope). Reproduce: `python -m xmkd.profiles run corsmal` (docs/corsmal.md).", ""]
    return "\n".join(lines)


def _r(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def corsmal_headline(a: CorsmalAnalysis) -> dict[str, dict[str, float | None]]:
    """The 2-level dict of ``corsmal/metrics/summary.json`` (NaN -> null)."""
    out: dict[str, dict[str, float | None]] = {
        "teacher": {"f1_weighted": _r(float(np.mean([a.teacher[f]["test_f1_weighted"] for f in a.folds])))},
        "main": {f"{r.spec.label}/{m}": _r(a.est(n, m).mean) for n, r in a.runs.items() if r.spec.kind == "main"
                 for m in ("top1", "f1_weighted", "f1_best_epoch")},
        "premise": {"any_distiller_beats_none": 1.0 if a.winners() else 0.0},
    }
    for n, d in a.vs_none.items():
        e, b = d["top1"].seed_estimate, d["top1"].bootstrap
        out["premise"] |= {f"{n}-none_top1": _r(e.mean), f"{n}-none_ci_low": _r(e.ci_low),
                           f"{n}-none_ci_high": _r(e.ci_high)}
        if b is not None:
            out["premise"] |= {f"{n}-none_boot_low": _r(b.ci_low), f"{n}-none_boot_high": _r(b.ci_high)}
    return out


def build_corsmal_report(specs: Sequence[RunSpecLike], folds: Sequence[int], cfg: ReportConfig, out_root: Path,
                         reports: Path) -> dict[str, dict[str, float | None]]:
    """Write ``results.md``, ``results.csv`` and ``summary.csv`` to ``reports``; return the headline dict.

    Raises:
        DataError: an input is missing or invalid (names the stage to run).
    """
    a = analyse_corsmal(specs, folds, cfg, out_root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "results.md").write_text(markdown_corsmal(a))
    long = [{"run": n, "kind": r.spec.kind, "method": r.spec.method, "label": r.spec.label, "fold": f, "seed": s,
             "metric": m, "value": v}
            for n, r in a.runs.items() for f, rd in r.folds.items() for s, vals in rd.values.items()
            for m, v in sorted(vals.items())]
    pd.DataFrame(long).to_csv(reports / "results.csv", index=False, float_format="%.6f")
    rows = [{"run": n, "metric": m, "scope": scope, **{k: getattr(e, k) for k in ("mean", "std", "ci_low", "ci_high", "n")}}
            for n in a.runs for m in COLUMNS for scope, e in
            [("mean over folds", a.est(n, m)), *((f"fold {f}", a.est(n, m, f)) for f in a.folds)]]
    pd.DataFrame(rows).to_csv(reports / "summary.csv", index=False, float_format="%.6f")
    return corsmal_headline(a)
