"""End to end: `dvc repro` and `dvc exp run -S csc.temperature=0.1` in a temporary git repo on tiny params,
then the metrics files, the report, and the MLflow runs as `mlflow ui` serves them (REST API).

Slow (a few minutes): it runs every stage of the real pipeline on real data from the mirror.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY, mlflow_ui, needs_mirror, run_in

pytestmark = [pytest.mark.slow, needs_mirror]


def _run(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_in(repo, args, check=check)


@pytest.fixture(scope="module")
def repo(tiny_repo_copy: Callable[[str], Path]) -> Path:
    """A private copy of the session's tiny pipeline after `dvc repro` (tests/conftest.py)."""
    return tiny_repo_copy("pipeline")


RUNS = [*TINY["methods"], "ablate-no_mnf", "ablate-tau0_0.2", "robust-kd-0.0", "robust-mnf_csc-0.0",
        "reverse-none", "reverse-mnf_csc"]


def test_repro_writes_metrics_and_report(repo: Path) -> None:
    for run in RUNS:
        ev = json.loads((repo / f"metrics/eval/{run}.json").read_text())
        assert set(ev["seeds"]) == {"0", "1"}, run
        for seed, m in ev["seeds"].items():
            for k in ("top1", "top5", "mean_class_acc", "R@1", "R@5", "R@10", "mAP"):
                assert 0.0 <= m[k] <= 1.0, (run, seed, k)
            assert (repo / f"models/students/{run}/seed-{seed}.pt").exists()
        assert (repo / f"data/predictions/{run}.npz").exists()
    gate = json.loads((repo / "metrics/eval/mnf_csc.json").read_text())["seeds"]["0"]
    assert {"gate_auroc", "init_gate_auroc"} <= set(gate)  # the trained gate and its untrained control
    for c in ("clean", "background", "mismatched"):
        assert 0.0 < gate[f"gate_norm_ratio/{c}"] <= 1.0 and 0.0 < gate[f"init_gate_norm_ratio/{c}"] <= 1.0
    assert gate["gate_mean/clean"] != gate["init_gate_mean/clean"]  # the control is not the trained gate
    assert json.loads((repo / "metrics/eval/reverse-none.json").read_text())["modality"] == "audio"
    assert "test_top1" in json.loads((repo / "metrics/video_teacher.json").read_text())
    table = (repo / "reports/results.md").read_text()
    for m in TINY["methods"]:
        assert f"| {m} |" in table
    for f in ("results.csv", "summary.csv", "accuracy.png", "tau0.png", "robustness.png", "ablations.png",
              "training_curves.png"):
        assert (repo / "reports" / f).stat().st_size > 0
    teacher = json.loads((repo / "metrics/teacher.json").read_text())
    assert {"test_top1", "test_top1/clean", "test_top1/background", "test_top1/mismatched"} <= set(teacher)
    # nothing changed -> nothing re-runs
    out = _run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in out


def test_exp_run_reruns_only_what_depends_on_csc(repo: Path) -> None:
    out = _run(["dvc", "exp", "run", "-S", "csc.temperature=0.1"], repo).stdout
    # every run whose resolved config changes: mnf_csc and what derives from it, except the tau0 member
    for stage in ("distill@mnf_csc", "ablate@no_mnf", "robust@mnf_csc-0.0", "reverse@mnf_csc", "report"):
        assert f"Running stage '{stage}'" in out, stage
    for stage in ("distill@none", "distill@kd", "ablate@tau0_0.2", "robust@kd-0.0", "reverse@none",
                  "embed_video_teacher", "train_teacher", "extract_features"):
        assert f"Running stage '{stage}'" not in out, stage
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "summary.json" in text and "0.1" in text


PLOTS = {"val_top1", "train_loss", "loss_terms", "robustness", "tau0", "reports/accuracy.png",
         "reports/training_curves.png", "reports/robustness.png", "reports/tau0.png", "reports/ablations.png"}


def test_plots_show_and_diff_two_experiments(repo: Path) -> None:
    """`dvc plots show` writes the page of every plot; `dvc plots diff` overlays the baseline and the experiment of
    the test above (csc.temperature 0.07 -> 0.1: the tau0 sweep's main point moves)."""
    shown = json.loads(_run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert set(shown) == PLOTS
    val = shown["val_top1"][0]["content"]
    assert val["encoding"]["color"]["field"] == "method" and val["encoding"]["y"]["field"] == "val_top1"
    assert {v["method"] for v in val["data"]["values"]} == set(TINY["methods"])  # one line per main run
    terms = {v["term"] for v in shown["loss_terms"][0]["content"]["data"]["values"]}
    assert {"ce", "kd"} <= terms
    assert {(v["method"], v["rate"]) for v in shown["robustness"][0]["content"]["data"]["values"]} >= {
        ("kd", 0.0), ("kd", 0.3), ("mnf_csc", 0.0), ("none", 0.0)}  # fmt: skip
    _run(["dvc", "plots", "show"], repo)
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert all(f'id = "{p}"' in page for p in ("val_top1", "loss_terms", "robustness", "tau0"))
    exp = _run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    assert len(exp) == 1
    diff = json.loads(_run(["dvc", "plots", "diff", "HEAD", exp[0], "--json"], repo).stdout)["data"]
    assert set(diff) == PLOTS
    tau0 = diff["tau0"][0]
    assert set(tau0["revisions"]) == {"HEAD", exp[0]}
    by_rev = {r: {v["tau0"] for v in tau0["content"]["data"]["values"] if v["rev"] == r} for r in tau0["revisions"]}
    assert by_rev == {"HEAD": {0.07, 0.2}, exp[0]: {0.1, 0.2}}
    assert len(diff["reports/tau0.png"]) == 2  # the report's image of each revision


def test_exp_show_has_the_headline_metrics_only(repo: Path) -> None:
    """`dvc exp show`: each run's top-1 and mAP with intervals (metrics/runs.json), the verdicts and paired
    differences (metrics/summary.json), no per-seed columns (metrics/eval/<run>.json are plain outputs)."""
    header = _run(["dvc", "exp", "show", "--csv"], repo).stdout.splitlines()[0].split(",")
    assert not [c for c in header if c.startswith("metrics/eval/") or "seeds." in c]  # (metrics/eval: a dep column)
    for run in RUNS:
        for k in ("top1", "top1_ci_low", "top1_ci_high", "mAP", "mAP_ci_low", "mAP_ci_high"):
            assert f"{run}.{k}" in header, (run, k)
    assert {"verdict.claim", "verdict.premise", "paired.mnf_csc-none_top1"} <= set(header)
    shown = json.dumps(json.loads(_run(["dvc", "exp", "show", "--json"], repo).stdout))
    assert '"claim": "' in shown  # the verdict is a word, not a code


def test_mistyped_override_is_rejected(repo: Path) -> None:
    proc = _run(["dvc", "exp", "run", "-S", "csc.temprature=0.2"], repo, check=False)
    assert proc.returncode != 0
    assert "temprature" in proc.stdout + proc.stderr


def test_mlflow_ui_lists_parent_and_child_runs(repo: Path) -> None:
    with mlflow_ui(repo) as api:
        exp_id = api.get("experiments/get-by-name", experiment_name="xmkd")["experiment"]["experiment_id"]
        runs = api.post("runs/search", {"experiment_ids": [exp_id], "max_results": 1000})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = {run["info"]["run_id"] for run, t in zip(runs, tags, strict=True) if t.get("xmkd.kind") == "pipeline"}
    children = [t for t in tags if t.get("xmkd.kind") == "stage"]
    assert len(parents) >= 2  # the repro and the experiment (the rejected -S typo never starts a stage)
    assert children and all(t.get("mlflow.parentRunId") in parents for t in children)
    stages = {t["dvc.stage"] for t in children}
    assert {"sources", "build_benchmark", "extract_features", "train_teacher", "embed_conditions",
            "distill@mnf_csc", "ablate@no_mnf", "robust@kd-0.0", "reverse@mnf_csc", "report"} <= stages
    assert any(t.get("dvc.exp_name") for t in children)  # stages of `dvc exp run` carry the experiment name
    assert all(len(t.get("mlflow.source.git.commit", "")) == 40 for t in children)
    stage_ids = {run["info"]["run_id"] for run, t in zip(runs, tags, strict=True) if t.get("xmkd.kind") == "stage"}
    seeds = [(run, t) for run, t in zip(runs, tags, strict=True) if t.get("xmkd.kind") == "seed"]
    assert seeds and all(t["mlflow.parentRunId"] in stage_ids for _, t in seeds)  # pipeline > stage > seed
    kd = [run for run, t in seeds if t.get("dvc.stage") == "distill@kd"]
    assert len(kd) >= 2  # one child run per seed
    metrics = {m["key"] for m in kd[0]["data"]["metrics"]}
    assert {"val_top1", "loss/ce", "loss/kd", "top1", "R_at_1"} <= metrics
