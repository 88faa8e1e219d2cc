"""Report text: the sentences (premise, claim, robustness verdicts) and the markdown of ``reports/results.md``."""

from __future__ import annotations

import math
from typing import Any

from xmkd import stats
from xmkd.report.analysis import (
    CLAIM_FAILS,
    CLAIM_HOLDS,
    Analysis,
    Premise,
    _finite_or,
    _mean,
    claim_diffs,
    claim_verdict,
)
from xmkd.report.load import (
    ABLATION_COLUMNS,
    CONDITION_COLUMNS,
    DASH,
    EXTRA_COLUMNS,
    GATE_COLUMNS,
    GATE_CONTROL_COLUMNS,
    GATE_RATIO_COLUMNS,
    MAIN_COLUMNS,
    PLOTS,
    REVERSE_COLUMNS,
)
from xmkd.report.tables import _diff_cells, _table, fmt_est, fmt_interval, fmt_pp, metric_table


def _overrides_text(o: dict[str, Any]) -> str:
    return ", ".join(f"{s}.{k}={v}" for s, d in o.items() for k, v in (d.items() if isinstance(d, dict) else []))


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


def _claim(a: Analysis) -> str:
    """Whether the paper's claim (MNF+CSC beats the baselines) holds: both intervals exclude 0 upwards."""
    head = "The paper's claim (MNF+CSC beats the baselines, judged against none and the best baseline on top-1)"
    if a.full_mnf is None:
        return f"{head} cannot be checked: mnf_csc is not in `methods`."
    diffs = claim_diffs(a)
    if not diffs:
        return f"{head} cannot be checked: neither none nor a baseline is in `methods`."
    detail = "; ".join(f"vs {d.b}: seeds {d.seed_verdict}, bootstrap {d.bootstrap_verdict}" for d in diffs)
    verdict = claim_verdict(a)
    if verdict == CLAIM_HOLDS:
        return f"{head} **holds here**: both intervals exclude zero in mnf_csc's favour ({detail})."
    if verdict == CLAIM_FAILS:
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
