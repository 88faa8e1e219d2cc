"""Shared test fixtures: the tiny pipeline repo, built once per session and copied per module.

The end-to-end tests (tests/test_pipeline.py, tests/test_queue.py, tests/test_workers.py, ...) each need a git + DVC
repository of the real pipeline on tiny params after `dvc repro`. Building one takes minutes on the 2-core machine,
so :func:`built_tiny_repo` builds it once per session and every module works on its own copy
(:func:`tiny_repo_copy`): a module may run experiments, change files or kill stages without affecting another.

The stages of a copy import the copy's own ``src/`` (``PYTHONPATH``), never the checkout's editable install, which
may be mid-edit while the tests run. A copy's MLflow store is a copy of the built one (its runs' artifact URIs
still name the built repo, which lives for the whole session).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", ROOT.parent / "shared" / "datasets"))

#: The tiny pipeline's params (merged over params.yaml): every stage kind runs, in a few minutes.
TINY: dict[str, Any] = {
    "methods": ["none", "kd", "mnf_csc"],
    "seeds": [0, 1],
    "benchmark": {"n_train": 60, "n_val": 20, "n_test": 40},
    "teacher": {"epochs": 1},
    "student": {"width": 4},
    "train": {"epochs": 1, "batch_size": 16, "milestones": []},
    "robustness": {"methods": ["kd", "mnf_csc"], "rates": [0.0]},
    "reverse": {"methods": ["none", "mnf_csc"], "audio_channels": [4, 8]},
}
TINY_ABLATIONS: dict[str, Any] = {"no_mnf": {"mnf": {"enabled": False}}, "tau0_0.2": {"csc": {"temperature": 0.2}}}

needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no data mirror at {MIRROR} (set XMKD_DATA_MIRROR)")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in recursively (dicts merged, everything else replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) else v
    return out


def repo_env(repo: Path) -> dict[str, str]:
    """Environment for commands in ``repo``: its own src/ on PYTHONPATH, the mirror, no telemetry, a git identity."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    env.update(
        PYTHONPATH=str(repo / "src"),
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        XMKD_DATA_MIRROR=str(MIRROR),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
    )
    return env


def run_in(repo: Path, args: list[str], check: bool = True, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``repo``; with ``check``, a non-zero exit raises AssertionError with the output's tail."""
    proc = subprocess.run(args, cwd=repo, env=repo_env(repo), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_tiny_repo(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """A git + DVC repo at ``dest`` with this checkout's pipeline code, plot templates and ``params`` (default: the
    tiny ones), committed, nothing run yet."""
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for d in ("stages", "src"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if params is None:
        params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
        params["ablations"] = TINY_ABLATIONS
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=False))
    run_in(dest, ["git", "init", "-q"])
    run_in(dest, ["dvc", "init", "-q"])
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # the templates of dvc.yaml's `plots:`
    run_in(dest, ["git", "add", "-A"])
    run_in(dest, ["git", "commit", "-qm", "tiny pipeline"])
    return dest


@pytest.fixture(scope="session")
def built_tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline after `dvc repro`, committed (params :data:`TINY`, ablations :data:`TINY_ABLATIONS`).

    Read-only for tests: take a :func:`tiny_repo_copy` to change anything.
    """
    if not MIRROR.is_dir():
        pytest.skip(f"no data mirror at {MIRROR} (set XMKD_DATA_MIRROR)")
    repo = make_tiny_repo(tmp_path_factory.mktemp("tiny-built"))
    run_in(repo, ["dvc", "repro"])
    run_in(repo, ["git", "add", "-A"])
    run_in(repo, ["git", "commit", "-qm", "repro"])
    return repo


@pytest.fixture(scope="session")
def tiny_repo_copy(built_tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``tiny_repo_copy(name)`` -> a private copy of :func:`built_tiny_repo` (git, DVC cache, outputs, MLflow
    store), in which nothing needs re-running."""

    def copy(name: str) -> Path:
        dest = tmp_path_factory.mktemp(name) / "repo"
        shutil.copytree(built_tiny_repo, dest, symlinks=True)
        return dest

    return copy


class MlflowApi:
    """The REST API (``/api/2.0/mlflow``) of a running ``mlflow ui``: ``get(path, **query)``, ``post(path, body)``."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        """GET ``<base>/<path>?<query>`` -> the JSON answer."""
        from urllib.parse import urlencode

        with urllib.request.urlopen(f"{self.base}/{path}?{urlencode(query)}", timeout=30) as r:
            return json.load(r)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body to ``<base>/<path>`` -> the JSON answer."""
        req = urllib.request.Request(f"{self.base}/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)


@contextlib.contextmanager
def mlflow_ui(repo: Path) -> Iterator[MlflowApi]:
    """``mlflow ui`` on ``repo``'s store (sqlite:///<repo>/mlflow.db) on a free local port, as a user starts it;
    yields its REST API once it answers (at most 90 s), and stops it and its children on exit.

    Lighter than its default for a shared test machine: one web worker, no job runner (MLflow's background jobs,
    for GenAI evaluation; ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``); the REST API is the same.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{repo}/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo, env=repo_env(repo) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        api = MlflowApi(f"http://127.0.0.1:{port}/api/2.0/mlflow")
        deadline = time.time() + 90
        while True:
            try:
                api.get("experiments/get-by-name", experiment_name="xmkd")
                break
            except OSError:
                if time.time() > deadline or ui.poll() is not None:
                    raise
                time.sleep(1)
        yield api
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGTERM)  # the server and its web worker
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=30)
