"""The one module that talks to MLflow.

Every stage run is an MLflow run (params, per-epoch metrics, final metrics, artifacts), a child of
one *parent* run per ``dvc repro`` / ``dvc exp run`` invocation. Stages are separate processes, so the
invocation is identified by the DVC process that launched them (found by walking up the process
tree with psutil: pid + start time), plus ``DVC_EXP_NAME`` (a queue worker runs several
experiments). The parent is found or created under a file lock; its status/end time follow its
children.

Store: ``sqlite:///<repo root>/mlflow.db`` (absolute, from ``DVC_ROOT`` when DVC sets it, so queued
experiments running in ``.dvc/tmp/exps/...`` write to the same store); ``MLFLOW_TRACKING_URI``
overrides. Artifacts go to ``<repo root>/mlartifacts``. The store is created once, under the lock,
before any run is written (parallel first writers to a fresh SQLite store crash).

Runs left RUNNING by a dead process: every run records the process that owns it (tags ``xmkd.host``,
``xmkd.pid`` and its start time ``xmkd.pid_start``: the stage process for stage and seed runs, the ``dvc``
process for the parent run). A stage killed with SIGKILL (or a ``dvc`` that died) cannot close its runs, so
every stage, when it starts, marks KILLED the RUNNING runs of this host whose process is gone or whose pid now
belongs to another process (:func:`mark_dead_runs_killed`), with the time they were found as their end time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from xmkd.config import flatten, repo_root
from xmkd.workers import is_dvc_command, process_gone

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

EXPERIMENT = os.environ.get("XMKD_MLFLOW_EXPERIMENT", "xmkd")
INVOCATION_TAG = "xmkd.invocation"
HOST_TAG, PID_TAG, PID_START_TAG = "xmkd.host", "xmkd.pid", "xmkd.pid_start"
KILLED_TAG = "xmkd.killed"


def tracking_uri(root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db`` (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or repo_root()).resolve()}/mlflow.db"


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :] + ".lock")
    return Path(tempfile.gettempdir()) / "xmkd-mlflow.lock"


@contextlib.contextmanager
def _locked(uri: str) -> Iterator[None]:
    path = _lock_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(uri: str):  # noqa: ANN202 - mlflow is imported lazily (1.7 s)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_store(root: Path | None = None) -> tuple[Any, str]:
    """Create (once, under a file lock) the store and the experiment; return (client, experiment_id)."""
    root = (root or repo_root()).resolve()
    uri = tracking_uri(root)
    with _locked(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
        else:
            exp_id = exp.experiment_id
    return client, exp_id


def git_commit(root: Path) -> str:
    """HEAD commit of the repo at ``root``, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_is_dvc = is_dvc_command  # one definition: xmkd.workers (stdlib only)


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that owns a run: host, pid and the process's start time (unix s, 3 decimals),
    so that a pid reused by a later process is not mistaken for the owner. Default: this process."""
    proc = psutil.Process(pid)
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(proc.pid), PID_START_TAG: f"{proc.create_time():.3f}"}


def owner_gone(tags: dict[str, str]) -> bool:
    """True when a run's owner (:func:`owner_tags`) on this host no longer runs: no such pid, a zombie, or the pid
    now belongs to a process started at another time. False when the tags name another host or no process."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    if pid <= 0 or process_gone(pid):
        return True
    try:
        return f"{psutil.Process(pid).create_time():.3f}" != tags.get(PID_START_TAG)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def mark_dead_runs_killed(client: Any, exp_id: str) -> list[str]:
    """Mark KILLED (end time: now) every RUNNING run of the experiment whose owner on this host is gone.

    Returns:
        The ids of the runs marked, each tagged ``xmkd.killed`` with the reason.
    """
    host = socket.gethostname()
    running = client.search_runs(
        [exp_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'", max_results=5000
    )
    now = time.time()
    killed = []
    for run in running:
        tags = run.data.tags
        if owner_gone(tags):
            client.set_tag(run.info.run_id, KILLED_TAG, f"process {tags[PID_TAG]} on {host} was gone at "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} (end time = then)")
            client.set_terminated(run.info.run_id, "KILLED", end_time=int(now * 1000))
            killed.append(run.info.run_id)
    return killed


def invocation() -> dict[str, str] | None:
    """Identify the ``dvc`` command this process runs under, or ``None`` when run by hand.

    Returns:
        {"key": unique id, "command": the dvc command line, "pid": ..., "start": its start time (unix s)} of
        the nearest ancestor process whose command line is a DVC invocation.
    """
    exp = os.environ.get("DVC_EXP_NAME", "")
    try:
        for proc in psutil.Process().parents():
            cmd = proc.cmdline()
            joined = " ".join(cmd)
            if _is_dvc(cmd):
                key = f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.3f}:{exp}"
                return {"key": key, "command": joined[:500], "pid": str(proc.pid),
                        "start": f"{proc.create_time():.3f}"}
    except (psutil.Error, OSError):
        return None
    return None


def _parent_run(client: Any, exp_id: str, uri: str, root: Path, inv: dict[str, str]) -> str:
    with _locked(uri):
        found = client.search_runs(
            [exp_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{inv['key']}'", max_results=1
        )
        if found:
            return found[0].info.run_id
        exp_name = os.environ.get("DVC_EXP_NAME")
        name = exp_name or time.strftime("dvc-repro-%Y%m%d-%H%M%S")
        tags = {
            "mlflow.runName": name,
            INVOCATION_TAG: inv["key"],
            "xmkd.kind": "pipeline",
            "dvc.command": inv["command"],
            "dvc.exp_name": exp_name or "",
            "mlflow.source.git.commit": git_commit(root),
            HOST_TAG: socket.gethostname(),  # owned by the dvc process (see mark_dead_runs_killed)
            PID_TAG: inv["pid"],
            PID_START_TAG: inv["start"],
        }
        run = client.create_run(exp_id, tags=tags, run_name=name)
        params_file = root / "params.yaml"
        if Path("params.yaml").exists():
            params_file = Path("params.yaml")  # the experiment's own params, not the workspace's
        if params_file.exists():
            import yaml

            flat = flatten(yaml.safe_load(params_file.read_text()) or {})
            _log_params(client, run.info.run_id, flat)
            client.log_artifact(run.info.run_id, str(params_file))
        return run.info.run_id


def _log_params(client: Any, run_id: str, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    params = [Param(k[:250], json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])


def metric_key(name: str) -> str:
    """MLflow-safe metric name: ``R@1`` -> ``R_at_1``; other disallowed characters -> ``_``."""
    return re.sub(r"[^\w\-. /]", "_", name.replace("@", "_at_"))


class StageRun:
    """Handle of one stage's MLflow run (see :func:`stage_run`)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log scalar metrics (non-finite values are logged as NaN by MLflow)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(metric_key(k), float(v), ts, step or 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(ms), 200):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 200])

    def log_params(self, params: dict[str, Any]) -> None:
        """Log (flattened) params."""
        _log_params(self.client, self.run_id, flatten(params))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run's artifacts."""
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        """Store a JSON-serialisable object as artifact ``name``."""
        self.client.log_dict(self.run_id, obj, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def child(self, name: str, params: dict[str, Any] | None = None, start: float | None = None) -> StageRun:
        """A nested run under this one (e.g. one seed of a run trained in a worker process).

        Args:
            name: run name; params: logged flattened; start: its start time (unix s), default now.
        """
        parent = self.client.get_run(self.run_id)
        tags = {k: v for k, v in parent.data.tags.items() if k in ("dvc.stage", "dvc.exp_name", "mlflow.source.git.commit")}
        tags |= {"mlflow.runName": name, "mlflow.parentRunId": self.run_id, "xmkd.kind": "seed", **owner_tags()}
        run = self.client.create_run(
            parent.info.experiment_id, start_time=int((start or time.time()) * 1000), tags=tags, run_name=name
        )
        handle = StageRun(self.client, run.info.run_id)
        if params:
            handle.log_params(params)
        return handle

    def finish(self, status: str = "FINISHED", end: float | None = None) -> None:
        """Mark this run terminated (``end``: unix s, default now)."""
        self.client.set_terminated(self.run_id, status, end_time=int((end or time.time()) * 1000))


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any] | None = None) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution, as a child of the invocation's parent run.

    Args:
        stage: stage name used when ``DVC_STAGE`` is not set (running a stage script by hand).
        params: the params this stage depends on (logged flattened).

    Yields:
        A :class:`StageRun`. On exit the run (and its parent) is marked FINISHED, or FAILED when the
        body raised (the exception propagates). Before it starts, runs left RUNNING by dead processes of this
        host are marked KILLED (:func:`mark_dead_runs_killed`).
    """
    root = repo_root().resolve()
    uri = tracking_uri(root)
    client, exp_id = ensure_store(root)
    mark_dead_runs_killed(client, exp_id)
    dvc_stage = os.environ.get("DVC_STAGE", stage)
    inv = invocation()
    parent = _parent_run(client, exp_id, uri, root, inv) if inv else None
    tags = {
        "mlflow.runName": dvc_stage,
        "dvc.stage": dvc_stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "mlflow.source.git.commit": git_commit(root),
        "xmkd.kind": "stage",
        **owner_tags(),
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=tags, run_name=dvc_stage)
    handle = StageRun(client, run.info.run_id)
    if params:
        handle.log_params(params)
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        if parent:
            client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    if parent:
        client.set_terminated(parent, "FINISHED")


def stage_times(parent_run_id: str | None = None) -> tuple[str, list[tuple[str, float]]]:
    """Wall time (s) of every stage run under a parent run (default: the newest parent).

    Returns:
        (parent run name, [(stage, seconds), ...] in start order).

    Raises:
        LookupError: no pipeline run in the store.
    """
    client, exp_id = ensure_store()
    if parent_run_id is None:
        parents = client.search_runs(
            [exp_id], filter_string="tags.`xmkd.kind` = 'pipeline'", order_by=["start_time DESC"], max_results=1
        )
        if not parents:
            raise LookupError("no pipeline run in the MLflow store: run `dvc repro` first")
        parent_run_id = parents[0].info.run_id
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", order_by=["start_time ASC"],
        max_results=5000,
    )
    rows = [
        (r.data.tags.get("dvc.stage", r.info.run_name), ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1e3)
        for r in children
    ]
    return parent.info.run_name, rows


if __name__ == "__main__":  # python -m xmkd.tracking  -> stage wall times of the newest `dvc repro`
    name, rows = stage_times()
    print(f"| stage | wall time (s) |  <- MLflow parent run '{name}'\n|---|---|")
    for stage, secs in rows:
        print(f"| {stage} | {secs:.0f} |")
    print(f"| total (stage runs) | {sum(s for _, s in rows):.0f} |")
