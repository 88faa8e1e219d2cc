"""Parallel experiments: two `dvc exp run --queue` experiments run by `dvc queue start -j 2`, in a temporary git
repo on tiny params; both succeed and every stage run of both lands in the ONE MLflow store of the repo
(sqlite:///<repo>/mlflow.db), tagged with its experiment's name, although DVC runs queued experiments in copies of
the repo under .dvc/tmp/exps/.

Slow (a few minutes): `dvc repro` of the real pipeline on tiny params, then the two experiments.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import needs_mirror, run_in

pytestmark = [pytest.mark.slow, needs_mirror]

EXPS = {"q-tau01": "0.1", "q-tau02": "0.2"}  # experiment name -> csc.temperature
QUEUE_TIMEOUT_S = 900


def _run(args: list[str], repo: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run_in(repo, args, check=check, timeout=timeout)


def _queue_logs(repo: Path) -> str:
    """The tail of every queue log DVC keeps (celery worker and experiment output), for failure messages."""
    out = []
    for f in sorted((repo / ".dvc" / "tmp" / "exps").rglob("*")):
        if f.is_file() and f.suffix in (".out", ".log", ".json") and f.stat().st_size < 5_000_000:
            out.append(f"--- {f.relative_to(repo)}\n{f.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)


def _status(repo: Path) -> dict[str, str]:
    """{experiment name: status} from `dvc queue status` (Queued, Running, Success, Failed)."""
    known = ("Queued", "Running", "Success", "Failed", "Revoked")
    out = {}
    for line in _run(["dvc", "queue", "status"], repo).stdout.splitlines():
        parts = line.split()
        for name in EXPS:
            if name in parts:
                out[name] = next((w for w in parts if w in known), "?")
    return out


@pytest.fixture(scope="module")
def repo(tiny_repo_copy: Callable[[str], Path]) -> Path:
    """A copy of the session's tiny pipeline after `dvc repro` (tests/conftest.py), then the two queued experiments."""
    repo = tiny_repo_copy("queue")
    for name, tau in EXPS.items():
        _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"csc.temperature={tau}"], repo)
    _run(["dvc", "queue", "start", "-j", "2"], repo)
    try:
        deadline = time.time() + QUEUE_TIMEOUT_S
        while True:
            status = _status(repo)
            if len(status) == len(EXPS) and all(s in ("Success", "Failed") for s in status.values()):
                break
            if time.time() > deadline:
                raise AssertionError(f"queue not done after {QUEUE_TIMEOUT_S} s: {status}\n{_queue_logs(repo)}")
            time.sleep(5)
    finally:
        _run(["dvc", "queue", "stop"], repo, check=False, timeout=120)  # workers exit once the queue is empty
    repo_status = _status(repo)
    if any(s != "Success" for s in repo_status.values()):
        logs = "\n".join(_run(["dvc", "queue", "logs", n], repo, check=False).stdout[-4000:] for n in EXPS)
        raise AssertionError(f"queued experiments did not all succeed: {repo_status}\n{logs}")
    return repo


def _exp_params(shown: object, name: str) -> dict | None:
    """params.yaml data of experiment ``name`` in `dvc exp show --json` output (searched, format-agnostic)."""
    if isinstance(shown, dict):
        if shown.get("name") == name and isinstance(shown.get("data"), dict):
            return shown["data"].get("params", {}).get("params.yaml", {}).get("data")
        items = shown.values()
    elif isinstance(shown, list):
        items = shown
    else:
        return None
    for v in items:
        found = _exp_params(v, name)
        if found is not None:
            return found
    return None


def test_both_queued_experiments_succeed_with_their_params(repo: Path) -> None:
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo).stdout)
    for name, tau in EXPS.items():
        p = _exp_params(shown, name)
        assert p is not None, f"experiment {name} missing from `dvc exp show --json`"
        assert p["csc"]["temperature"] == float(tau)


def test_every_queued_stage_run_lands_in_the_one_store(repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    assert not list((repo / ".dvc").rglob("mlflow.db")), "a queued experiment wrote its own MLflow store"
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("xmkd")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    by_id = {r.info.run_id: r for r in runs}
    parents_seen = set()
    for name in EXPS:
        parents = [r for r in runs if r.data.tags.get("xmkd.kind") == "pipeline" and r.data.tags.get("dvc.exp_name") == name]
        assert len(parents) == 1, f"{name}: expected one parent run, got {len(parents)}"
        parent = parents[0]
        assert parent.info.status == "FINISHED"
        assert float(json.loads(parent.data.params["csc.temperature"])) == float(EXPS[name])
        stages = [r for r in runs if r.data.tags.get("xmkd.kind") == "stage" and r.data.tags.get("dvc.exp_name") == name]
        names = {r.data.tags["dvc.stage"] for r in stages}
        assert "report" in names, f"{name}: no report stage run; stage runs: {sorted(names)}"
        assert any(s.startswith("distill@mnf_csc") for s in names), f"{name}: no mnf_csc distill run: {sorted(names)}"
        assert not any(s.startswith("distill@none") for s in names), "csc.temperature must not re-run `none`"
        for r in stages:
            assert r.info.status == "FINISHED", (name, r.data.tags["dvc.stage"])
            assert r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        parents_seen.add(parent.info.run_id)
    assert len(parents_seen) == len(EXPS)
    assert all(by_id[p].info.experiment_id == exp.experiment_id for p in parents_seen)


def test_each_queued_repro_registers_its_best_student(repo: Path) -> None:
    """Both experiments' reports register a version of `xmkd-student` at once (under the store's lock): two new
    versions, one per experiment, each naming the pipeline run of its experiment and a seed run with a model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    versions = client.search_model_versions("name = 'xmkd-student'")
    by_exp = {v.tags.get("dvc.exp_name"): v for v in versions}
    assert set(EXPS) <= set(by_exp) and len(versions) == len(EXPS) + 1  # + the repro of the fixture
    for name, v in by_exp.items():
        if name in EXPS:
            parent = client.get_run(v.tags["pipeline_run"])
            assert parent.data.tags["dvc.exp_name"] == name and parent.data.tags["xmkd.kind"] == "pipeline"
            seed_run = client.get_run(v.run_id)
            assert seed_run.data.tags["xmkd.model_id"] and seed_run.data.tags["seed"] == "0"
