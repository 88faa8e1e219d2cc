"""The CORSMAL report (src/xmkd/report/corsmal.py) on hand-made run files: fold means with intervals over seeds,
differences with none paired over (fold, seed), the bootstrap over all held-out recordings, the premise sentence,
and the errors for missing inputs. Also the `targets` list of profiles (the corsmal profile runs corsmal/dvc.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from xmkd.errors import ConfigError, DataError
from xmkd.profiles import check, combine, main, run_command, targets
from xmkd.report.corsmal import analyse_corsmal, build_corsmal_report
from xmkd.report.load import ReportConfig

ROOT = Path(__file__).resolve().parents[1]
SEEDS, FOLDS, N = (0, 1, 2), (0, 1, 2), 40  # 40 held-out recordings per fold


class Spec:
    """A run spec as the report reads it (:class:`xmkd.corsmal_config.CorsmalRun` in the pipeline)."""

    def __init__(self, name: str, kind: str, method: str, label: str) -> None:
        self.name, self.kind, self.method, self.label = name, kind, method, label
        self.irrelevant_rate, self.overrides = None, {}
        self.stage = f"corsmal/dvc.yaml:{'distill' if kind == 'main' else 'ablate'}@{label}"


def _labels(f: int) -> np.ndarray:
    return (np.arange(N) + f) % 4


def write_run(out: Path, spec: Spec, correct: dict[tuple[int, int], int]) -> None:
    """Files of ``spec`` where seed s of fold f gets the first ``correct[(f, s)]`` recordings right."""
    for f in FOLDS:
        d = out / "runs" / spec.name / f"fold-{f}"
        y = _labels(f)
        preds, seeds = [], {}
        for s in SEEDS:
            p = y.copy()
            p[correct[(f, s)]:] = (y[correct[(f, s)]:] + 1) % 4
            preds.append(p)
            top1 = correct[(f, s)] / N
            seeds[str(s)] = {"top1": top1, "mean_class_acc": top1, "f1_weighted": top1 - 0.05,
                             "f1_best_epoch": top1 + 0.02, "best_epoch": 3.0}
        head = {"run": spec.name, "kind": spec.kind, "method": spec.method, "label": spec.label, "fold": f}
        for sub, body in (("eval", seeds), ("train", {s: {"train_seconds": 1.0, "history": []} for s in seeds})):
            (d / sub).mkdir(parents=True, exist_ok=True)
            (d / sub / f"{spec.name}.json").write_text(json.dumps({**head, "seeds": body}))
        np.savez(d / f"{spec.name}.npz", ids=np.array([f"c{f}_{i}" for i in range(N)]), labels=y,
                 seeds=np.array(SEEDS), pred=np.stack(preds))
    for f in FOLDS:
        t = out / "folds" / f"fold-{f}"
        t.mkdir(parents=True, exist_ok=True)
        (t / "teacher.json").write_text(json.dumps({"test_top1": 0.9 + 0.01 * f, "test_f1_weighted": 0.9 + 0.02 * f}))


SPECS = [Spec("none", "main", "none", "none"), Spec("kd", "main", "kd", "kd"), Spec("mnf_csc", "main", "mnf_csc", "mnf_csc"),
         Spec("ablate-no_mnf", "ablation", "mnf_csc", "no_mnf")]
CFG = ReportConfig(SEEDS, float("nan"), 0.07, resamples=2000)


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    base = {(f, s): 16 + 2 * f + s for f in FOLDS for s in SEEDS}
    write_run(tmp_path, SPECS[0], base)
    write_run(tmp_path, SPECS[1], {k: v + 8 + k[1] for k, v in base.items()})  # kd: clearly better
    write_run(tmp_path, SPECS[2], {k: v + (1 if k[1] == 1 else -1) * (k[0] - 1) for k, v in base.items()})  # noise
    write_run(tmp_path, SPECS[3], {k: v - 6 for k, v in base.items()})
    return tmp_path


def test_fold_means_pairs_and_premise(out: Path) -> None:
    a = analyse_corsmal(SPECS, FOLDS, CFG, out)
    none = a.est("none", "top1")
    per_seed = [np.mean([(16 + 2 * f + s) / N for f in FOLDS]) for s in SEEDS]
    assert none.mean == pytest.approx(np.mean(per_seed)) and none.n == 3
    half = st.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / np.sqrt(3)
    assert none.ci_high == pytest.approx(np.mean(per_seed) + half)
    assert a.est("kd", "top1", fold=2).mean == pytest.approx(np.mean([(20 + s + 8 + s) / N for s in SEEDS]))
    d = a.vs_none["kd"]["top1"]
    assert d.seed_estimate.n == 9 and d.seed_estimate.mean == pytest.approx(np.mean([(8 + s) / N for s in SEEDS]))
    assert d.bootstrap is not None and d.bootstrap.n == 3 * N and d.bootstrap.ci_low > 0
    assert a.winners() == ["kd"]
    assert a.vs_none["mnf_csc"]["top1"].seed_verdict == "no significant difference"
    assert a.vs_full["ablate-no_mnf"].seed_estimate.mean == pytest.approx(-6 / N - np.mean(
        [(1 if s == 1 else -1) * (f - 1) / N for f in FOLDS for s in SEEDS]))


def test_report_files(out: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    head = build_corsmal_report(SPECS, FOLDS, CFG, out, reports)
    md = (reports / "results.md").read_text()
    assert "Yes: `kd`" in md and "**MNF+CSC does not beat `none`**" in md
    assert "| kd | " in md and "| no_mnf |" in md and "91.3" in md and "67.3" in md
    assert "Robustness to irrelevant sound" in md
    assert head["premise"]["any_distiller_beats_none"] == 1.0 and head["premise"]["kd-none_top1"] > 0
    assert head["teacher"]["f1_weighted"] == pytest.approx(0.92)
    long = pd.read_csv(reports / "results.csv")
    assert len(long[(long.run == "kd") & (long.metric == "top1")]) == 9
    summary = pd.read_csv(reports / "summary.csv")
    assert set(summary.scope) == {"mean over folds", "fold 0", "fold 1", "fold 2"}


def test_missing_inputs_name_the_stage(out: Path) -> None:
    (out / "runs" / "kd" / "fold-1" / "eval" / "kd.json").unlink()
    with pytest.raises(DataError, match=r"dvc repro corsmal/dvc.yaml:distill@kd"):
        analyse_corsmal(SPECS, FOLDS, CFG, out)
    (out / "folds" / "fold-2" / "teacher.json").unlink()
    with pytest.raises(DataError, match="teacher@2"):
        analyse_corsmal([SPECS[0]], FOLDS, CFG, out)


def test_corsmal_profile_runs_the_corsmal_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    profile, merged = check("corsmal", ROOT)
    assert targets(profile) == ["corsmal/dvc.yaml"] and merged == json.loads(json.dumps(merged))
    cmd = run_command("corsmal", profile)
    assert cmd[1:] == ["exp", "run", "-n", "corsmal", "corsmal/dvc.yaml"]
    assert main(["show", "corsmal"]) == 0 and "runs: corsmal/dvc.yaml" in capsys.readouterr().out
    assert targets(combine([profile, {"train": {"epochs": 2}}])) == ["corsmal/dvc.yaml"]
    with pytest.raises(ConfigError, match="targets"):
        targets({"targets": "corsmal/dvc.yaml"})
