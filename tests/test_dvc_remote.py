"""A DVC remote that works offline (a local directory): push, a second clone that pulls instead of recomputing,
an experiment pushed and pulled, and `dvc artifacts get` of the teacher and a student by name (docs/dvc.md).

Slow (minutes): it works on a copy of the session's tiny pipeline (tests/conftest.py) and trains one tiny run
for the experiment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_mirror, run_in

pytestmark = [pytest.mark.slow, needs_mirror]

EXP = "cheap-exp"
COMPARED = ("models/teacher.pt", "metrics/runs.json", "models/students/mnf_csc/seed-0.pt", "reports/results.md",
            "models/students/ablate-no_mnf/seed-0.pt")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pushed(tiny_repo_copy: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny repo with a local DVC remote and a bare git remote ``origin``, everything pushed: the commit, its
    DVC outputs, and one experiment (`dvc exp push`)."""
    repo = tiny_repo_copy("remote")
    tmp = tmp_path_factory.mktemp("remotes")
    store, origin = tmp / "dvc-store", tmp / "origin.git"
    run_in(repo, ["dvc", "remote", "add", "-d", "local", str(store)])
    run_in(repo, ["git", "add", ".dvc/config"])
    run_in(repo, ["git", "commit", "-qm", "dvc remote: a local directory"])
    run_in(tmp, ["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)])
    run_in(repo, ["git", "remote", "add", "origin", str(origin)])
    run_in(repo, ["git", "push", "-q", "origin", "HEAD:refs/heads/main"])
    run_in(repo, ["dvc", "push"])
    pushed_md5 = {f: _md5(repo / f) for f in COMPARED}  # the workspace holds the experiment's results after it ran
    # a cheap experiment: one ablation's override changes, so one tiny training stage (+ configs, report) re-runs
    out = run_in(repo, ["dvc", "exp", "run", "-n", EXP, "-S", "ablations.no_mnf.mnf.enabled=true"]).stdout
    assert "Running stage 'ablate@no_mnf'" in out and "Running stage 'distill@kd'" not in out
    run_in(repo, ["dvc", "exp", "push", "origin", EXP])
    return {"repo": repo, "store": store, "origin": origin, "tmp": tmp, "md5": pushed_md5}


def test_remote_is_filled_by_push(pushed: dict[str, Any]) -> None:
    files = [p for p in (pushed["store"] / "files" / "md5").rglob("*") if p.is_file()]
    assert len(files) > 50  # every output of every stage, raw data to report
    status = run_in(pushed["repo"], ["dvc", "status", "--cloud"]).stdout
    assert "Cache and remote 'local' are in sync" in status


def test_second_clone_pulls_instead_of_recomputing(pushed: dict[str, Any]) -> None:
    clone = pushed["tmp"] / "clone"
    run_in(pushed["tmp"], ["git", "clone", "-q", "-b", "main", str(pushed["origin"]), str(clone)])
    assert not (clone / "models" / "teacher.pt").exists()
    run_in(clone, ["dvc", "pull"])
    assert "Data and pipelines are up to date" in run_in(clone, ["dvc", "status"]).stdout
    assert "Running stage" not in run_in(clone, ["dvc", "repro"]).stdout
    base = json.loads((clone / "metrics/runs.json").read_text())
    for f in COMPARED:
        assert _md5(clone / f) == pushed["md5"][f], f  # the pushed files, not recomputed ones
    # the experiment: `dvc exp pull` brings its git ref and its outputs; applied, nothing needs re-running
    run_in(clone, ["dvc", "exp", "pull", "origin", EXP])
    assert EXP in run_in(clone, ["dvc", "exp", "list", "--name-only"]).stdout
    run_in(clone, ["dvc", "exp", "apply", EXP])
    assert "Data and pipelines are up to date" in run_in(clone, ["dvc", "status"]).stdout
    runs = json.loads((clone / "metrics/runs.json").read_text())
    assert runs == json.loads((pushed["repo"] / "metrics/runs.json").read_text())  # the experiment's results
    assert runs["kd"] == base["kd"]
    ablation = "models/students/ablate-no_mnf/seed-0.pt"  # re-trained by the experiment (the MNF filter back on)
    assert _md5(clone / ablation) == _md5(pushed["repo"] / ablation) != pushed["md5"][ablation]


@pytest.mark.parametrize(("name", "path"), [("teacher", "teacher.pt"), ("student-mnf_csc", "mnf_csc")])
def test_artifacts_get_by_name(pushed: dict[str, Any], name: str, path: str) -> None:
    """`dvc artifacts get <git url> <name>` from the pushed repository (the DVC remote in its .dvc/config) at the
    artifact's registered version (a GTO tag, `gto register`)."""
    repo, dest = pushed["repo"], pushed["tmp"] / f"got-{name}"
    run_in(repo, ["gto", "register", name, "--version", "v1.0.0"])
    run_in(repo, ["git", "push", "-q", "origin", f"{name}@v1.0.0"])
    dest.mkdir()
    out = run_in(dest, ["dvc", "artifacts", "get", str(pushed["origin"]), name]).stdout
    assert "Downloaded" in out
    got = dest / path
    want = repo / "models" / ("students" if name.startswith("student-") else "") / path
    if want.is_dir():
        assert sorted(p.name for p in got.iterdir()) == ["seed-0.pt", "seed-1.pt"]
        assert all(_md5(got / p.name) == _md5(p) for p in want.iterdir())
    else:
        assert _md5(got) == _md5(want)
