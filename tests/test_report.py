"""The report stage on a tiny fixture of metric files: tables, plots, statistics, errors, stale files.

The fixture (3 seeds, 200 test clips) has main runs none, kd, crd, mnf_csc; ablations no_mnf and
tau0_0.2 (a τ0 sweep member); robustness for kd and mnf_csc at rates 0.0 and 0.6 (the main runs give
0.3); reverse runs none and kd. Its numbers are chosen so that the statistics can be computed by hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from xmkd import stats
from xmkd.errors import DataError
from xmkd.report import Headline, Layout, ReportConfig, build_report, fmt_est, stage_of

SEEDS = (0, 1, 2)
N_CLIPS = 200
T_975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), also in any t table: 4.303


@dataclass(frozen=True)
class Spec:
    """Mirror of xmkd.runs.RunSpec (the report only reads these fields)."""

    name: str
    kind: str
    method: str
    label: str
    irrelevant_rate: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


SPECS = [
    Spec("none", "main", "none", "none"),
    Spec("kd", "main", "kd", "kd"),
    Spec("crd", "main", "crd", "crd"),
    Spec("mnf_csc", "main", "mnf_csc", "mnf_csc"),
    Spec("ablate-no_mnf", "ablation", "mnf_csc", "no_mnf", overrides={"mnf": {"enabled": False}}),
    Spec("ablate-tau0_0.2", "ablation", "mnf_csc", "tau0_0.2", overrides={"csc": {"temperature": 0.2}}),
    Spec("robust-kd-0.0", "robustness", "kd", "kd", irrelevant_rate=0.0),
    Spec("robust-kd-0.6", "robustness", "kd", "kd", irrelevant_rate=0.6),
    Spec("robust-mnf_csc-0.0", "robustness", "mnf_csc", "mnf_csc", irrelevant_rate=0.0),
    Spec("robust-mnf_csc-0.6", "robustness", "mnf_csc", "mnf_csc", irrelevant_rate=0.6),
    Spec("reverse-none", "reverse", "none", "none"),
    Spec("reverse-kd", "reverse", "kd", "kd"),
]

# top-1 per seed (0, 1, 2): multiples of 1/200 so the predictions can match them exactly.
TOP1 = {
    "none": [0.80, 0.82, 0.84],  # mean 0.82, std 0.02
    "kd": [0.78, 0.79, 0.80],
    "crd": [0.84, 0.87, 0.83],  # the best baseline (mean 0.8467)
    "mnf_csc": [0.85, 0.86, 0.87],  # - none = [0.05, 0.04, 0.03]; - crd = [0.01, -0.01, 0.04]
    "ablate-no_mnf": [0.80, 0.81, 0.79],  # - mnf_csc = [-0.05, -0.05, -0.08]
    "ablate-tau0_0.2": [0.84, 0.86, 0.86],  # - mnf_csc = [-0.01, 0.00, -0.01]
    "robust-kd-0.0": [0.83, 0.84, 0.85],
    "robust-kd-0.6": [0.70, 0.71, 0.72],
    "robust-mnf_csc-0.0": [0.86, 0.87, 0.88],
    "robust-mnf_csc-0.6": [0.83, 0.84, 0.85],
    "reverse-none": [0.60, 0.62, 0.64],
    "reverse-kd": [0.65, 0.66, 0.67],
}


def _metrics(run: str, seed: int, top1: dict[str, list[float]]) -> dict[str, float | None]:
    t = top1[run][seed]
    m: dict[str, float | None] = {
        "top1": t,
        "top5": min(1.0, t + 0.1),
        "mean_class_acc": t,
        "R@1": t - 0.01,
        "R@5": t + 0.05,
        "R@10": t + 0.07,
        "mAP": t - 0.05,
        "map_queries_without_hit": 3.0,
        "top1/clean": t + 0.02,
        "top1/background": t - 0.03,
        "top1/mismatched": t - 0.04,
    }
    if "mnf_csc" in run or run.startswith("ablate"):
        m |= {
            "gate_mean/clean": 0.43,
            "gate_mean/background": 0.42,
            "gate_mean/mismatched": 0.41,
            "gate_auroc": [0.51, 0.53, float("nan")][seed],
            "init_gate_mean/clean": 0.50,
            "init_gate_mean/background": 0.50,
            "init_gate_mean/mismatched": 0.50,
            "init_gate_auroc": [0.49, 0.50, 0.51][seed],
            "gate_norm_ratio/clean": 0.45,
            "gate_norm_ratio/background": 0.44,
            "gate_norm_ratio/mismatched": 0.40,
            "init_gate_norm_ratio/clean": 0.52,
            "init_gate_norm_ratio/background": 0.52,
            "init_gate_norm_ratio/mismatched": 0.52,
        }
    return m


def write_fixture(root: Path, specs: list[Spec] = SPECS, top1: dict[str, list[float]] = TOP1) -> None:
    """Every file the report reads, under ``root`` (the project layout)."""
    lay = Layout(root)
    for d in (lay.eval_dir, lay.train_dir, lay.pred_dir):
        d.mkdir(parents=True, exist_ok=True)
    labels = np.arange(N_CLIPS) % 10
    for s in specs:
        modality = "audio" if s.kind == "reverse" else "video"
        ev = {
            "run": s.name,
            "kind": s.kind,
            "method": s.method,
            "label": s.label,
            "irrelevant_rate": s.irrelevant_rate,
            "modality": modality,
            "seeds": {str(k): _metrics(s.name, k, top1) for k in SEEDS},
        }
        (lay.eval_dir / f"{s.name}.json").write_text(json.dumps(ev))
        hist = {
            str(k): {
                "train_seconds": 90.0 + k,
                "history": [
                    {
                        "epoch": e,
                        "loss/ce": 2.0 / e,
                        "train_top1": 0.3 * e,
                        "val_top1": top1[s.name][k] * e / 3,
                        "lr": 1e-3,
                        "seconds": 10.0,
                    }
                    for e in (1, 2, 3)
                ],
            }
            for k in SEEDS
        }
        (lay.train_dir / f"{s.name}.json").write_text(json.dumps({"run": s.name, "seeds": hist}))
        # seed k classifies the first round(top1 * N) clips correctly, the rest wrong
        pred = np.stack(
            [np.where(np.arange(N_CLIPS) < round(t * N_CLIPS), labels, (labels + 1) % 10) for t in top1[s.name]]
        )
        ids = np.array([f"clip{i:04d}" for i in range(N_CLIPS)])
        cond = np.array(["clean", "background", "mismatched", "clean"] * (N_CLIPS // 4))
        np.savez(
            lay.pred_dir / f"{s.name}.npz", ids=ids, labels=labels, seeds=np.array(SEEDS), pred=pred, conditions=cond
        )
    (root / "metrics" / "teacher.json").write_text(json.dumps({"test_top1": 0.681, "test_top1/clean": 0.953}))
    (root / "metrics" / "video_teacher.json").write_text(json.dumps({"test_top1": 0.823}))


CFG = ReportConfig(seeds=SEEDS, base_rate=0.3, base_tau0=0.07)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Headline]:
    root = tmp_path_factory.mktemp("proj")
    write_fixture(root)
    # stale files that params no longer name: a removed method and an extra seed; they must be ignored
    stale = {"run": "fitnet", "kind": "main", "method": "fitnet", "label": "fitnet", "seeds": {"0": {"top1": 0.999}}}
    (root / "metrics/eval/fitnet.json").write_text(json.dumps(stale))
    ev = json.loads((root / "metrics/eval/none.json").read_text())
    ev["seeds"]["7"] = {"top1": 0.111}
    (root / "metrics/eval/none.json").write_text(json.dumps(ev))
    return root, build_report(SPECS, CFG, Layout(root))


# ---------------------------------------------------------------------------- statistics by hand


def test_describe_matches_hand_computation() -> None:
    e = stats.describe([0.80, 0.82, 0.84])
    assert e.n == 3 and e.mean == pytest.approx(0.82) and e.std == pytest.approx(0.02)
    assert e.half_width == pytest.approx(T_975_2 * 0.02 / math.sqrt(3)) == pytest.approx(0.0497, abs=5e-5)
    assert (e.ci_low, e.ci_high) == pytest.approx((0.82 - 0.049683, 0.82 + 0.049683), abs=1e-6)


def test_describe_one_seed_and_nan() -> None:
    one = stats.describe([0.8])
    assert one.n == 1 and one.mean == 0.8 and math.isnan(one.std) and not one.has_interval
    assert stats.verdict(one) == stats.NO_INTERVAL
    assert fmt_est(one) == "80.0 (1 seed, no interval)"
    with_nan = stats.describe([0.5, float("nan"), None, 0.7])
    assert with_nan.n == 2 and with_nan.mean == pytest.approx(0.6)
    empty = stats.describe([float("nan")])
    assert empty.n == 0 and fmt_est(empty) == "–" and stats.verdict(empty) == stats.NO_DATA


def test_paired_difference_and_verdicts() -> None:
    d = stats.paired_difference({0: 0.85, 1: 0.86, 2: 0.87}, {0: 0.80, 1: 0.82, 2: 0.84}, ("mnf_csc", "none"))
    assert d.diffs == pytest.approx((0.05, 0.04, 0.03)) and d.seeds == (0, 1, 2)
    half = T_975_2 * 0.01 / math.sqrt(3)  # std of the differences = 0.01
    assert (d.seed_estimate.ci_low, d.seed_estimate.ci_high) == pytest.approx((0.04 - half, 0.04 + half))
    assert d.seed_verdict == stats.WIN
    crossing = stats.paired_difference({0: 0.85, 1: 0.86, 2: 0.87}, {0: 0.84, 1: 0.87, 2: 0.83})
    assert crossing.seed_estimate.ci_low < 0 < crossing.seed_estimate.ci_high
    assert crossing.seed_verdict == stats.NO_DIFFERENCE
    worse = stats.paired_difference({0: 0.80, 1: 0.81, 2: 0.79}, {0: 0.85, 1: 0.86, 2: 0.87})
    assert worse.seed_verdict == stats.LOSS
    # a NaN seed is left out of the pairing; a seed only one run has is left out too
    partial = stats.paired_difference({0: 0.9, 1: float("nan"), 2: 0.7, 3: 0.1}, {0: 0.8, 1: 0.8, 2: 0.8})
    assert partial.seeds == (0, 2) and partial.diffs == pytest.approx((0.1, -0.1))


def test_paired_bootstrap_is_paired_seeded_and_correct() -> None:
    n = 100
    b = np.zeros((2, n), bool)
    a = b.copy()
    a[:, :10] = True  # A is right on 10 clips where B is wrong, never the reverse: every resample >= 0
    r = stats.paired_bootstrap(a, b, resamples=2000, seed=3)
    assert r.mean == pytest.approx(0.10) and r.ci_low > 0 and stats.verdict(r) == stats.WIN
    # the binomial standard error of a proportion 0.1 over 100 clips is 0.03: the interval is about ± 1.96 x that
    assert r.ci_high - r.ci_low == pytest.approx(2 * 1.96 * 0.03, rel=0.2)
    assert stats.paired_bootstrap(a, b, resamples=2000, seed=3) == r
    same = stats.paired_bootstrap(a, a, resamples=500)
    assert same.mean == 0 and stats.verdict(same) == stats.NO_DIFFERENCE
    with pytest.raises(DataError, match="same clips"):
        stats.paired_bootstrap(a, b[:, :50])


# ---------------------------------------------------------------------------- the report on the fixture


def _section(md: str, title: str) -> str:
    start = md.index(title)
    nxt = md.find("\n## ", start + 1)
    return md[start : nxt if nxt > 0 else len(md)]


def test_every_table_section_is_written(built: tuple[Path, Headline]) -> None:
    md = (built[0] / "reports/results.md").read_text()
    for title in (
        "## Summary",
        "## Main table",
        "### Top-1 by the clip's audio condition",
        "### MNF gate",
        "## Paired differences",
        "## Ablations of MNF+CSC",
        "## τ0 sweep",
        "## Robustness to irrelevant sound",
        "## Reverse direction",
        "## Audio teacher",
        "## How the statistics are computed",
    ):
        assert title in md, title
    main = _section(md, "## Main table")
    assert "| method | top-1 | top-5 | R@1 | R@5 | mAP |" in main
    assert "| none | 82.0 ± 2.0 [77.0, 87.0] |" in main  # mean ± std [95% t CI], %
    for m in ("none", "kd", "crd", "mnf_csc"):
        assert f"| {m} |" in main
    cond = _section(md, "### Top-1 by the clip's audio condition")
    assert "| none | 84.0 ± 2.0" in cond and "top-1 mismatched" in cond
    gate = _section(md, "### MNF gate")
    assert "| mnf_csc | 0.430 ± 0.000" in gate and "| ablate-no_mnf |" in gate and "| robust-mnf_csc-0.6 |" in gate
    assert "0.520 ± 0.014" in gate  # gate_auroc: seed 2 is NaN, mean/std over the 2 finite seeds
    assert "| none |" not in gate


def test_paired_differences(built: tuple[Path, Headline]) -> None:
    md = (built[0] / "reports/results.md").read_text()
    sec = _section(md, "## Paired differences")
    # mnf_csc - none = [0.05, 0.04, 0.03]: mean 4.0 pp, half-width 4.303 * 1 / sqrt(3) = 2.5 pp
    assert "| mnf_csc − none | top1 | +4.0 | 3 | [+1.5, +6.5] | win |" in sec
    # the best baseline is crd; mnf_csc - crd = [0.01, -0.01, 0.04] crosses zero over seeds
    assert "| mnf_csc − crd | top1 | +1.3 | 3 |" in sec
    row = next(line for line in sec.splitlines() if line.startswith("| mnf_csc − crd | top1"))
    assert row.split("|")[6].strip() == stats.NO_DIFFERENCE
    # the bootstrap over test clips is stated beside it (crd is never right where mnf_csc is wrong: a win)
    assert row.split("|")[7].strip() == "+1.3" and row.split("|")[9].strip() == stats.WIN
    summary = _section(md, "## Summary")
    assert "Best on top-1 (mean over seeds): **mnf_csc**" in summary
    assert "crd, the highest top-1 among the main methods other than none and mnf_csc" in summary
    assert "mnf_csc − crd on top-1: +1.3 pp (95% t interval over 3 seeds" in summary
    assert "no significant difference" in summary
    assert "**is not supported here**" in summary  # a claim of a win needs both intervals above zero
    s = built[1].summary["paired"]
    assert s["mnf_csc-none_top1"] == pytest.approx(0.04)
    assert s["mnf_csc-none_top1_ci_low"] == pytest.approx(0.04 - T_975_2 * 0.01 / math.sqrt(3), abs=1e-6)
    assert s["mnf_csc-best_top1_ci_low"] < 0 < s["mnf_csc-best_top1_ci_high"]
    assert s["mnf_csc-best_top1_boot_low"] > 0


def test_ablation_tau0_robustness_reverse_tables(built: tuple[Path, Headline]) -> None:
    md = (built[0] / "reports/results.md").read_text()
    abl = _section(md, "## Ablations of MNF+CSC").splitlines()
    rows = [r for r in abl if r.startswith("| ") and not r.startswith("| run")]
    assert rows[0].startswith("| mnf_csc (full) |") and rows[1].startswith("| no_mnf | mnf.enabled=False |")
    assert "| -6.0 | 3 |" in rows[1] and rows[1].rstrip(" |").endswith("loss")
    assert rows[2].startswith("| tau0_0.2 | csc.temperature=0.2 |") and "no significant difference" in rows[2]
    assert "ablation that costs most top-1: **no_mnf**" in md
    tau = _section(md, "## τ0 sweep")
    assert tau.index("| 0.07 | mnf_csc (main) |") < tau.index("| 0.2 | tau0_0.2 |")
    rob = _section(md, "## Robustness")
    assert "| method | rate 0 | rate 0.3 | rate 0.6 |" in rob
    assert "| kd | 84.0 ± 1.0 [81.5, 86.5] | 79.0 ± 1.0 [76.5, 81.5] | 71.0 ± 1.0 [68.5, 73.5] |" in rob
    # none uses no teacher: its main run fills every rate, and the first row of the table is it
    none_row = "| none | " + " | ".join(["82.0 ± 2.0 [77.0, 87.0]"] * 3) + " |"
    assert none_row in rob and rob.index(none_row) < rob.index("| kd |")
    assert "none uses no teacher, so its student is the same at every rate" in rob
    assert "kd goes from 84.0 ± 1.0 [81.5, 86.5] % top-1 at irrelevant rate 0 to 71.0" in md and "(-13.0 pp" in md
    assert "fewer than two such baselines" in rob  # only crd is a non-trivial baseline in the fixture
    # distillation's gain over none per rate (paired over seeds): kd +2.0 / -3.0 / -11.0, mnf_csc +5.0 / +4.0 / +2.0
    assert "| kd | +2.0 [-0.5, +4.5] | -3.0 [-5.5, -0.5] | -11.0 [-13.5, -8.5] |" in rob
    assert "| mnf_csc | +5.0 [+2.5, +7.5] | +4.0 [+1.5, +6.5] | +2.0 [-0.5, +4.5] |" in rob
    assert "| mnf_csc − kd | +3.0 [+3.0, +3.0] win | +7.0 [+7.0, +7.0] win | +13.0 [+13.0, +13.0] win |" in rob
    assert "kd +2.0 [-0.5, +4.5] -> -11.0 [-13.5, -8.5] pp (no significant gain at the first rate: nothing to keep)" in md
    assert "mnf_csc +5.0 [+2.5, +7.5] -> +2.0 [-0.5, +4.5] pp (keeps 40% of it)" in md
    assert "At irrelevant rate 0.6, mnf_csc against kd: +13.0 pp [+13.0, +13.0] (win)." in md
    rev = _section(md, "## Reverse direction")
    assert "| none | 62.0 ± 2.0 [57.0, 67.0] |" in rev and "| kd | 66.0 ± 1.0" in rev and "top-1 clean" in rev
    assert "Video teacher (frozen) on the same test clips: test_top1 82.3%" in rev
    assert "- test_top1: 68.1%" in _section(md, "## Audio teacher")


def test_csv_and_summary_outputs(built: tuple[Path, Headline]) -> None:
    root, head = built
    summary, runs = head.summary, head.runs
    res = pd.read_csv(root / "reports/results.csv")
    assert list(res.columns) == ["run", "kind", "method", "label", "rate", "metric", "seed", "value"]
    assert set(res.run) == {s.name for s in SPECS}  # the stale fitnet file is ignored
    assert set(res.seed) == set(SEEDS)  # the stale seed 7 in none.json is ignored
    kd06 = res[(res.run == "robust-kd-0.6") & (res.metric == "top1")]
    assert sorted(kd06.value) == pytest.approx([0.70, 0.71, 0.72]) and set(kd06.rate) == {0.6}
    assert set(res[res.run == "none"].rate) == {0.3}  # main runs: the benchmark's own rate
    summ = pd.read_csv(root / "reports/summary.csv")
    assert list(summ.columns) == ["run", "metric", "mean", "std", "ci_low", "ci_high", "n"]
    row = summ[(summ.run == "none") & (summ.metric == "top1")].iloc[0]
    assert (row["mean"], row["std"], row["n"]) == pytest.approx((0.82, 0.02, 3))
    assert (row.ci_low, row.ci_high) == pytest.approx((0.82 - 0.049683, 0.82 + 0.049683), abs=1e-6)
    auroc = summ[(summ.run == "mnf_csc") & (summ.metric == "gate_auroc")].iloc[0]
    assert auroc.n == 2
    # metrics/runs.json: every run of params (not the stale fitnet), top-1 and mAP with their t intervals
    assert list(runs) == [s.name for s in SPECS]
    assert runs["none"] == pytest.approx(
        {"top1": 0.82, "top1_ci_low": 0.82 - 0.049683, "top1_ci_high": 0.82 + 0.049683,
         "mAP": 0.77, "mAP_ci_low": 0.77 - 0.049683, "mAP_ci_high": 0.77 + 0.049683}, abs=1e-6
    )  # fmt: skip
    assert runs["reverse-kd"]["top1"] == pytest.approx(0.66) and runs["robust-kd-0.6"]["top1"] == pytest.approx(0.71)
    assert not {"main", "robustness", "reverse"} & set(summary)  # the runs' own numbers are in runs.json only
    assert summary["verdict"] == {"claim": "not supported", "premise": "the benchmark cannot test the claim"}
    assert summary["gain"] == pytest.approx(
        {"kd-none/0": 0.02, "kd-none/0.3": -0.03, "kd-none/0.6": -0.11, "mnf_csc-none/0": 0.05, "mnf_csc-none/0.3": 0.04}
        | {"mnf_csc-none/0.6": 0.02, "mnf_csc-kd/0": 0.03, "mnf_csc-kd/0.3": 0.07, "mnf_csc-kd/0.6": 0.13}
    )
    assert summary["ablation"] == pytest.approx({"no_mnf/delta_top1": -0.06, "tau0_0.2/delta_top1": -0.006667}, abs=1e-6)
    for d in (summary, runs):
        json.dumps(d, allow_nan=False)  # valid JSON for DVC: no NaN
        assert all(not isinstance(v, dict) for sec in d.values() for v in sec.values())  # 2 levels


def test_every_plot_is_a_png(built: tuple[Path, Headline]) -> None:
    import matplotlib.image as mpimg

    for name in ("accuracy.png", "tau0.png", "robustness.png", "ablations.png", "training_curves.png"):
        p = built[0] / "reports" / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = mpimg.imread(p)
        assert img.shape[0] >= 300 and img.shape[1] >= 500, (name, img.shape)
        assert img[..., :3].std() > 0.05, name  # not a blank canvas


def test_dvc_plot_data(built: tuple[Path, Headline]) -> None:
    """reports/plots/*.json: the records dvc.yaml's `plots:` draw (seed means per epoch; top-1 with intervals)."""
    plots = built[0] / "reports/plots"
    training = json.loads((plots / "training.json").read_text())
    assert {r["method"] for r in training} == {"none", "kd", "crd", "mnf_csc"}  # the main runs
    none3 = next(r for r in training if r["run"] == "none" and r["epoch"] == 3)
    assert none3["val_top1"] == pytest.approx(0.82) and none3["train_top1"] == pytest.approx(0.9)  # seed means
    assert [r["epoch"] for r in training if r["run"] == "kd"] == [1, 2, 3]
    terms = json.loads((plots / "loss_terms.json").read_text())
    assert [(r["term"], r["epoch"], r["value"]) for r in terms if r["run"] == "kd"] == [
        ("ce", 1, 2.0), ("ce", 2, 1.0), ("ce", 3, 0.666667)]  # fmt: skip (rounded to 6 decimals)
    robust = {(r["method"], r["rate"]): r for r in json.loads((plots / "robustness.json").read_text())}
    assert {k: r["top1"] for k, r in robust.items()} == pytest.approx(
        {("none", 0.0): 0.82, ("none", 0.3): 0.82, ("none", 0.6): 0.82, ("kd", 0.0): 0.84, ("kd", 0.3): 0.79,
         ("kd", 0.6): 0.71, ("mnf_csc", 0.0): 0.87, ("mnf_csc", 0.3): 0.86, ("mnf_csc", 0.6): 0.84}
    )  # fmt: skip
    assert robust[("kd", 0.3)]["run"] == "kd" and robust[("kd", 0.6)]["run"] == "robust-kd-0.6"
    assert robust[("none", 0.0)]["ci_low"] == pytest.approx(0.82 - 0.049683, abs=1e-6)
    tau0 = json.loads((plots / "tau0.json").read_text())
    assert [(r["tau0"], r["run"]) for r in tau0] == [(0.07, "mnf_csc"), (0.2, "ablate-tau0_0.2")]
    assert tau0[1]["top1"] == pytest.approx(0.853333, abs=1e-6)


# ---------------------------------------------------------------------------- errors and edge cases


@pytest.mark.parametrize(
    ("rel", "stage"),
    [
        ("metrics/eval/kd.json", "distill@kd"),
        ("metrics/eval/ablate-no_mnf.json", "ablate@no_mnf"),
        ("metrics/eval/robust-kd-0.6.json", "robust@kd-0.6"),
        ("metrics/eval/reverse-kd.json", "reverse@kd"),
        ("metrics/train/crd.json", "distill@crd"),
        ("data/predictions/none.npz", "distill@none"),
    ],
)
def test_missing_file_names_the_stage(tmp_path: Path, rel: str, stage: str) -> None:
    write_fixture(tmp_path)
    (tmp_path / rel).unlink()
    with pytest.raises(DataError, match=f"dvc repro {stage}`") as e:
        build_report(SPECS, CFG, Layout(tmp_path))
    assert rel in str(e.value)
    assert not (tmp_path / "reports" / "results.md").exists()


def test_missing_seed_and_foreign_file_are_errors(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    with pytest.raises(DataError, match=r"missing \[3\].*dvc repro distill@none"):
        build_report(SPECS, ReportConfig(seeds=(0, 1, 2, 3), base_rate=0.3, base_tau0=0.07), Layout(tmp_path))
    p = tmp_path / "metrics/eval/kd.json"
    ev = json.loads(p.read_text())
    p.write_text(json.dumps(ev | {"run": "crd"}))
    with pytest.raises(DataError, match="belongs to run 'crd'"):
        build_report(SPECS, CFG, Layout(tmp_path))


def test_stage_names() -> None:
    from xmkd.runs import RunSpec

    for s in SPECS:
        real = RunSpec(s.name, s.kind, s.method, s.label, s.irrelevant_rate, s.overrides)  # type: ignore[arg-type]
        assert stage_of(s) == stage_of(real), s.name
    assert [stage_of(s) for s in SPECS[4:8]] == ["ablate@no_mnf", "ablate@tau0_0.2", "robust@kd-0.0", "robust@kd-0.6"]


def test_one_seed_and_robustness_check(tmp_path: Path) -> None:
    specs = [
        *SPECS[:3],
        Spec("pkt", "main", "pkt", "pkt"),
        SPECS[3],
        Spec("robust-crd-0.6", "robustness", "crd", "crd", 0.6),
        Spec("robust-pkt-0.6", "robustness", "pkt", "pkt", 0.6),
        SPECS[10],
        Spec("reverse-mnf_csc", "reverse", "mnf_csc", "mnf_csc"),
    ]
    top1 = TOP1 | {
        "pkt": [0.81, 0.80, 0.79],
        "robust-crd-0.6": [0.75, 0.76, 0.77],
        "robust-pkt-0.6": [0.7] * 3,
        "reverse-mnf_csc": [0.55, 0.5, 0.5],
    }
    write_fixture(tmp_path, specs, top1)
    head = build_report(specs, ReportConfig(seeds=(0,), base_rate=0.3, base_tau0=0.07), Layout(tmp_path))
    md = (tmp_path / "reports/results.md").read_text()
    assert "| none | 80.0 (1 seed, no interval) |" in md
    assert "| mnf_csc − none | top1 | +5.0 | 1 | – | no interval (one seed) |" in md
    assert "the robustness runs use crd, pkt, which **are** the two best baselines of the main table" in md
    assert "| crd | 84.0 (1 seed, no interval) | 75.0 (1 seed, no interval) |" in md  # rate 0.3 = main run
    pkt_low = {**top1, "kd": [0.9, 0.9, 0.9]}  # kd is never one of "the two best baselines": it is run anyway
    write_fixture(tmp_path, specs, pkt_low)
    build_report(specs, ReportConfig(seeds=(0,), base_rate=0.3, base_tau0=0.07), Layout(tmp_path))
    assert "**are** the two best" in (tmp_path / "reports/results.md").read_text()
    swapped = [*specs[:5], Spec("robust-kd-0.6", "robustness", "kd", "kd", 0.6), specs[6], *specs[7:]]
    write_fixture(tmp_path, swapped, top1 | {"robust-kd-0.6": [0.7] * 3})
    build_report(swapped, ReportConfig(seeds=(0,), base_rate=0.3, base_tau0=0.07), Layout(tmp_path))
    md2 = (tmp_path / "reports/results.md").read_text()
    assert "the robustness runs use pkt, but the two best baselines" in md2 and "**are not** the same" in md2
    assert "No ablation runs in params.yaml" in md and "No τ0 sweep" in md
    assert "Reverse direction (video teacher -> audio student): best top-1 **none**, 60.0 (1 seed" in md
    assert "Reverse direction, mnf_csc − none on top-1: -5.0 pp (one seed: no interval over seeds" in md
    # more robustness baselines than the best two: fine, as long as the best two are among them
    more = [*specs[:5], Spec("rkd", "main", "rkd", "rkd"), *specs[5:]]
    more += [Spec("robust-rkd-0.6", "robustness", "rkd", "rkd", 0.6)]
    write_fixture(tmp_path, more, top1 | {"rkd": [0.5] * 3, "robust-rkd-0.6": [0.6] * 3})
    build_report(more, ReportConfig(seeds=(0,), base_rate=0.3, base_tau0=0.07), Layout(tmp_path))
    md3 = (tmp_path / "reports/results.md").read_text()
    assert "the robustness runs use crd, pkt, rkd, which **include** the two best baselines" in md3
    assert head.summary["paired"]["mnf_csc-none_top1_ci_low"] is None
    assert head.runs["none"] == {"top1": 0.8, "top1_ci_low": None, "top1_ci_high": None,
                                 "mAP": 0.75, "mAP_ci_low": None, "mAP_ci_high": None}  # fmt: skip
    for name in ("tau0.png", "ablations.png"):  # sections absent from params still give a (labelled) PNG
        assert (tmp_path / "reports" / name).stat().st_size > 1000


# ---------------------------------------------------------------------------- the premise check


def test_premise_fails_when_no_distiller_wins_on_both_intervals(built: tuple[Path, Headline]) -> None:
    """The fixture at rate 0: kd − none = [0.03, 0.02, 0.01] (t interval 0.02 ± 0.0248: crosses zero), and
    no feature-level distiller ran at rate 0 (crd is a main run only)."""
    root, head = built
    md = (root / "reports/results.md").read_text()
    sec = _section(md, "## Premise check")
    assert "| kd − none | +2.0 | 3 | [-0.5, +4.5] | no significant difference |" in sec
    assert "Verdict: **the benchmark cannot test the claim**." in sec
    assert "Premise (a clean teacher helps" in _section(md, "## Summary")
    p = head.summary["premise"]
    assert p["can_test_claim"] == 0.0 and p["kd-none_top1"] == pytest.approx(0.02)
    assert p["kd-none_ci_low"] == pytest.approx(0.02 - T_975_2 * 0.01 / math.sqrt(3), abs=1e-6)  # rounded to 6
    assert p["kd-none_boot_low"] > 0  # kd is right on a superset of none's clips for every seed
    assert "feature-none_top1" not in p


def test_premise_holds_with_a_feature_level_win(tmp_path: Path) -> None:
    """A feature-level distiller (crd) at rate 0 that beats none on both intervals makes the premise hold,
    even though kd does not; the best feature-level run is chosen by mean top-1 (crd over pkt)."""
    specs = [*SPECS, Spec("robust-crd-0.0", "robustness", "crd", "crd", 0.0), Spec("robust-pkt-0.0", "robustness", "pkt", "pkt", 0.0)]
    top1 = TOP1 | {"robust-crd-0.0": [0.86, 0.88, 0.89], "robust-pkt-0.0": [0.81, 0.83, 0.85]}
    write_fixture(tmp_path, specs, top1)
    summary = build_report(specs, CFG, Layout(tmp_path)).summary
    sec = _section((tmp_path / "reports/results.md").read_text(), "## Premise check")
    # crd − none = [0.06, 0.06, 0.05]: mean 0.0567, std 0.00577, half-width 4.303 * 0.00577 / sqrt(3) = 0.0143
    assert "| crd − none | +5.7 | 3 | [+4.2, +7.1] | win |" in sec
    assert "pkt − none" not in sec
    assert "Verdict: **the benchmark can test the claim**." in sec
    assert summary["premise"]["can_test_claim"] == 1.0
    assert summary["verdict"]["premise"] == "the benchmark can test the claim"
    assert summary["premise"]["feature-none_top1"] == pytest.approx(0.05667, abs=1e-5)


def test_premise_uses_the_main_table_when_the_benchmark_is_clean(tmp_path: Path) -> None:
    specs = SPECS[:4]
    write_fixture(tmp_path, specs)
    summary = build_report(specs, ReportConfig(seeds=SEEDS, base_rate=0.0, base_tau0=0.07), Layout(tmp_path)).summary
    sec = _section((tmp_path / "reports/results.md").read_text(), "## Premise check")
    assert "| kd − none | -3.0 |" in sec and "| crd − none | +2.7 |" in sec  # main runs at rate 0
    assert summary["premise"]["can_test_claim"] == 0.0
    no_rate0 = [s for s in SPECS if s.irrelevant_rate != 0.0]
    write_fixture(tmp_path, no_rate0)
    build_report(no_rate0, CFG, Layout(tmp_path))
    md = (tmp_path / "reports/results.md").read_text()
    assert "no distiller ran at irrelevant rate 0: add 0 to `robustness.rates`" in _section(md, "## Premise check")


def test_gate_section_has_the_untrained_control_and_norm_ratio(built: tuple[Path, Headline]) -> None:
    md = (built[0] / "reports/results.md").read_text()
    sec = _section(md, "### MNF gate")
    assert "Untrained gate (control):" in sec and "untrained gate AUROC" in sec
    assert "| mnf_csc | 0.500 ± 0.000 [0.500, 0.500] |" in sec  # untrained gate clean, not in %
    assert "0.500 ± 0.010" in sec  # the untrained gate's AUROC over 3 seeds (0.49, 0.50, 0.51)
    assert "‖a′‖/‖a‖ mismatched" in sec and "0.400 ± 0.000" in sec and "0.520 ± 0.000" in sec
