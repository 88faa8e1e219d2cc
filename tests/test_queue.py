"""Parallel experiments: two `dvc exp run --queue` experiments run by `dvc queue start -j 2`, in a temporary git
repo on tiny params; both succeed and every stage run of both lands in the ONE MLflow store of the repo
(sqlite:///<repo>/mlflow.db), tagged with its experiment's name, although DVC runs queued experiments in copies of
the repo under .dvc/tmp/exps/.

Slow (a few minutes): `dvc repro` of the real pipeline on tiny params, then the two experiments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", ROOT.parent / "shared" / "datasets"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no data mirror at {MIRROR} (set XMKD_DATA_MIRROR)"),
]

TINY = {
    "methods": ["none", "mnf_csc"],
    "seeds": [0],
    "benchmark": {"n_train": 40, "n_val": 20, "n_test": 20},
    "teacher": {"epochs": 1, "net": {"channels": [8, 16, 32, 64]}},
    "student": {"width": 4},
    "train": {"epochs": 1, "batch_size": 16, "milestones": []},
}


def tiny_params(params: dict) -> dict:
    """params.yaml shrunk to TINY; the optional run lists (ablations, robustness, reverse) cut to one cheap entry."""
    out = _merge(params, TINY)
    if isinstance(out.get("ablations"), dict) and out["ablations"]:
        out["ablations"] = dict(list(out["ablations"].items())[:1])
    if isinstance(out.get("robustness"), dict):
        out["robustness"] = {**out["robustness"], "methods": ["mnf_csc"], "rates": out["robustness"]["rates"][:1]}
    if isinstance(out.get("reverse"), dict):
        out["reverse"] = {**out["reverse"], "methods": ["none"]}
    return out
EXPS = {"q-tau01": "0.1", "q-tau02": "0.2"}  # experiment name -> csc.temperature
QUEUE_TIMEOUT_S = 900


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    env.update(
        # the stages import the repo's own copy of xmkd, not the checkout's editable install (which may be
        # mid-edit while the test runs)
        PYTHONPATH=str(repo / "src"),
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        XMKD_DATA_MIRROR=str(MIRROR),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
    )
    return env


def _run(args: list[str], repo: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) else v
    return out


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
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny pipeline repo (as tests/test_pipeline.py builds it) after `dvc repro`, then the two queued experiments."""
    repo = tmp_path_factory.mktemp("queue")
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    for d in ("stages", "src"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(params), sort_keys=False, default_flow_style=False))
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny pipeline"], repo)
    _run(["dvc", "repro"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "repro"], repo)

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
