"""The CORSMAL pipeline end to end (corsmal/dvc.yaml, run by its profile) on a small subset of the real feature files:
layouts, teachers, configs, every listed method and ablation on every fold, the report; DVC tracks each; a change
of one method's section re-runs that method alone; the default pipeline is not touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, merge, run_in
from test_corsmal import MIRROR, needs_data, small_corsmal

METHODS = ["none", "kd", "mnf_csc", "c2kd"]
TINY = {
    "methods": METHODS,
    "seeds": [0, 1],
    "corsmal": {"train": {"epochs": 2, "batch_size": 8, "seed_workers": 2}, "teacher": {"epochs": 2, "hidden": 16},
                "ablations": ["no_mnf"]},
}


@pytest.fixture(scope="module")
def corsmal_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MIRROR / "vggish").is_dir():
        pytest.skip("CORSMAL mirror not present")
    base = tmp_path_factory.mktemp("corsmal")
    data = small_corsmal(base, containers=tuple(range(1, 10)))
    repo = base / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    for d in ("stages", "src", "profiles", "corsmal"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dvc.lock",
                                                                          "folds", "runs", "configs", "reports",
                                                                          "metrics", ".gitignore"))
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    params["corsmal"]["root"] = str(data)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(repo, ["git", "init", "-q"])
    run_in(repo, ["dvc", "init", "-q"])
    run_in(repo, ["git", "add", "-A"])
    run_in(repo, ["git", "commit", "-qm", "corsmal"])
    run_in(repo, ["python", "-m", "xmkd.profiles", "run", "corsmal"], timeout=1800)
    return repo


@needs_data
def test_profile_runs_every_method_fold_and_seed(corsmal_repo: Path) -> None:
    out = corsmal_repo / "corsmal"
    for run in [*METHODS, "ablate-no_mnf"]:
        summary = json.loads((out / "metrics" / f"{run}.json").read_text())
        assert set(summary) == {"fold0", "fold1", "fold2", "mean"}
        for f in range(3):
            ev = json.loads((out / "runs" / run / f"fold-{f}" / "eval" / f"{run}.json").read_text())
            assert sorted(ev["seeds"]) == ["0", "1"]
            assert 0 <= ev["seeds"]["0"]["f1_weighted"] <= ev["seeds"]["0"]["f1_best_epoch"] <= 1
            assert (out / "runs" / run / f"fold-{f}" / "seed-1.pt").is_file()
    for f in range(3):
        ann = json.loads((out / "folds" / f"fold-{f}" / "annotation.json").read_text())
        held = {e["container"] for e in ann["database"].values() if e["subset"] == "testing"}
        assert held == {0: {3, 6, 9}, 1: {2, 5, 8}, 2: {1, 4, 7}}[f]
        assert "test_f1_weighted" in json.loads((out / "folds" / f"fold-{f}" / "teacher.json").read_text())
    md = (out / "reports" / "results.md").read_text()
    assert "## The premise check" in md and "MNF+CSC" in md and "91.3" in md and "67.3" in md
    assert "Robustness to irrelevant sound" in md and "| no_mnf |" in md
    head = json.loads((out / "metrics" / "summary.json").read_text())
    assert {"teacher", "main", "premise"} <= set(head) and "kd-none_top1" in head["premise"]
    # the default pipeline was not run
    assert not (corsmal_repo / "data" / "features").exists() and not (corsmal_repo / "metrics" / "eval").exists()
    status = run_in(corsmal_repo, ["dvc", "status", "corsmal/dvc.yaml"]).stdout
    assert "up to date" in status, status


@needs_data
def test_a_methods_section_reruns_that_method_alone(corsmal_repo: Path) -> None:
    params = yaml.safe_load((corsmal_repo / "params.yaml").read_text())
    params["kd"]["temperature"] = 2.0
    (corsmal_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run_in(corsmal_repo, ["dvc", "status", "corsmal/dvc.yaml"]).stdout
    assert "corsmal/dvc.yaml:configs" in status
    run_in(corsmal_repo, ["dvc", "repro", "corsmal/dvc.yaml:configs"])
    status = run_in(corsmal_repo, ["dvc", "status", "corsmal/dvc.yaml"]).stdout
    stale = {line.strip().rstrip(":") for line in status.splitlines() if line.strip().startswith("corsmal/dvc.yaml:")}
    assert stale == {"corsmal/dvc.yaml:distill@kd"}, status


SCRIPTS = {"layout": "corsmal_layout", "teacher": "corsmal_teacher", "configs": "corsmal_configs",
           "distill": "corsmal_distill", "ablate": "corsmal_distill", "report": "corsmal_report"}


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_corsmal_stage_deps_cover_the_import_closure(stage: str) -> None:
    """As tests/test_dvc_deps.py for the default pipeline: a module a CORSMAL stage imports is one of its deps."""
    from test_dvc_deps import _covered, closure

    body = yaml.safe_load((ROOT / "corsmal" / "dvc.yaml").read_text())["stages"][stage]
    body = body.get("do", body)
    deps = body["deps"]
    script = ROOT / "stages" / f"{SCRIPTS[stage]}.py"
    assert f"stages/{script.name}" in deps and body["wdir"] == ".."
    missing = sorted(f.relative_to(ROOT).as_posix() for f in closure(script, skip_methods=stage != "configs")
                     if not _covered(f, deps))
    assert not missing, f"corsmal/dvc.yaml stage {stage!r} omits modules that {script.name} imports: {missing}"
    if stage in ("distill", "ablate"):
        assert ("src/xmkd/methods/${item}.py" if stage == "distill" else "src/xmkd/methods/mnf_csc.py") in deps
