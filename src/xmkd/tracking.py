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

What a training stage logs beyond params and metrics (docs/pipeline.md, "Tracking"): tags ``method``, ``run``,
``kind`` (and ``seed`` on seed runs, ``seeds`` on stage runs) that ``mlflow ui``'s search filters on; a description
(``mlflow.note.content``); its datasets with their DVC digests (:meth:`StageRun.log_datasets`); system metrics while
it runs (``system_metrics=True``); a student as an MLflow model (:meth:`StageRun.log_pytorch_model`), the best one
of a ``dvc repro`` registered by the report (:func:`register_model`). A tracking error after a stage has computed
its results is reported and does not fail the stage (:func:`tolerant`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from xmkd.config import flatten, repo_root
from xmkd.dvclock import DvcOutput
from xmkd.owners import HOST_TAG, PID_START_TAG, PID_TAG, git_commit, invocation, owner_gone, owner_tags

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

EXPERIMENT = os.environ.get("XMKD_MLFLOW_EXPERIMENT", "xmkd")
INVOCATION_TAG = "xmkd.invocation"
KILLED_TAG = "xmkd.killed"
NOTE_TAG = "mlflow.note.content"  # the run's description in mlflow ui
#: tags a seed run takes from its stage run (besides DVC's): what ``mlflow ui``'s search filters on
RUN_TAGS = ("method", "run", "kind", "dvc.stage", "dvc.exp_name", "mlflow.source.git.commit")
CHECKPOINT_TAG, MODEL_TAG = "xmkd.checkpoint_md5", "xmkd.model_id"


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


_reported: set[str] = set()


@contextlib.contextmanager
def tolerant(what: str) -> Iterator[None]:
    """Run MLflow logging that must not fail a stage whose results are computed: an error becomes one warning on
    stderr per ``what`` (``warning: MLflow: could not <what>: <error>; ...``) and the body is abandoned."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - any tracking failure (store locked, disk full, a bad value)
        if what not in _reported:
            _reported.add(what)
            print(f"warning: MLflow: could not {what}: {type(e).__name__}: {e}; the stage's outputs are not "
                  "affected (they are DVC's).", file=sys.stderr, flush=True)


class StageRun:
    """Handle of one stage's MLflow run (see :func:`stage_run`)."""

    def __init__(self, client: Any, run_id: str, uri: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri or client.tracking_uri
        self.name = ""  # the stage's name (stage runs)
        self.note: str | None = None
        self.final: dict[str, float] = {}  # metrics logged without a step (for the default description)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log scalar metrics (non-finite values are logged as NaN by MLflow)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(metric_key(k), float(v), ts, step or 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(ms), 200):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 200])
        if step is None:
            self.final.update(metrics)

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
        """Set run tags (one batch)."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_note(self, text: str) -> None:
        """The run's description (markdown; ``mlflow.note.content``, shown on the run's page in ``mlflow ui``)."""
        self.note = text
        self.client.set_tag(self.run_id, NOTE_TAG, text)

    def child(
        self, name: str, params: dict[str, Any] | None = None, start: float | None = None, tags: dict[str, str] | None = None
    ) -> StageRun:
        """A nested run under this one (e.g. one seed of a run trained in a worker process).

        Args:
            name: run name; params: logged flattened; start: its start time (unix s), default now.
            tags: its own tags (e.g. ``seed``), besides those it takes from this run (:data:`RUN_TAGS`).
        """
        parent = self.client.get_run(self.run_id)
        run_tags = {k: v for k, v in parent.data.tags.items() if k in RUN_TAGS}
        run_tags |= {"mlflow.runName": name, "mlflow.parentRunId": self.run_id, "xmkd.kind": "seed", **owner_tags()}
        run = self.client.create_run(parent.info.experiment_id, start_time=int((start or time.time()) * 1000),
                                     tags=run_tags | (tags or {}), run_name=name)
        handle = StageRun(self.client, run.info.run_id, self.uri)
        if params:
            handle.log_params(params)
        return handle

    def log_datasets(self, outputs: Sequence[tuple[DvcOutput, str]]) -> None:
        """``log_input`` of pipeline outputs this run reads, each as an MLflow dataset named by its path, its digest
        the DVC one (``md5``, ``<md5>.dir`` for a folder: :mod:`xmkd.dvclock`), source type ``dvc``.

        Args:
            outputs: (the output as dvc.lock records it, its role: the input tag ``mlflow.data.context``,
                e.g. ``student_input`` or ``teacher_outputs``).
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(out.path, out.md5, "dvc", json.dumps({"path": out.path, "md5": out.md5, "stage": out.stage}),
                        profile=json.dumps({"size": out.size, "nfiles": out.nfiles})),
                [InputTag("mlflow.data.context", context)],
            )
            for out, context in outputs
        ]
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_pytorch_model(self, model: Any, example: Any, tags: dict[str, str] | None = None) -> str:
        """Log ``model`` (an ``nn.Module``, eval mode) to this run as an MLflow model named ``student``: PyTorch
        flavour, ``pt2`` (``torch.export``, loads without this code), a signature inferred from ``example``.

        Args:
            model: maps a batch of ``example``'s shape to one tensor (e.g. logits (B, C)).
            example: (B >= 2, ...) numpy array, a real input batch (B = 1 would fix the batch size in the export).
            tags: tags of the logged model.

        Returns:
            The logged model's id (``models:/<id>`` loads it).
        """
        import importlib.metadata

        import mlflow
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            out = model(torch.from_numpy(example)).numpy()
        mlflow.set_tracking_uri(self.uri)
        # the logged model's experiment (and artifact location) is the fluent API's active one, not its run's
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        info = mlflow.pytorch.log_model(  # pip_requirements given: inferring them starts a subprocess
            model, name="student", input_example=example, signature=infer_signature(example, out),
            serialization_format="pt2", pip_requirements=[f"torch=={importlib.metadata.version('torch')}"],
            tags=tags, run_id=self.run_id, validate_serving_input=False,
        )
        self.set_tags({MODEL_TAG: info.model_id})
        return info.model_id

    def finish(self, status: str = "FINISHED", end: float | None = None) -> None:
        """Mark this run terminated (``end``: unix s, default now)."""
        self.client.set_terminated(self.run_id, status, end_time=int((end or time.time()) * 1000))


def system_metrics_enabled() -> bool:
    """System metrics of a long stage: on unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is false (``0``/``false``)."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower() not in ("0", "false", "no")


def _default_note(run: StageRun, stage: str) -> str:
    lines = [f"DVC stage `{stage}`: `{' '.join(sys.argv)}`."]
    if run.final:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(run.final.items())[:40]]
    return "\n".join(lines)


@contextlib.contextmanager
def stage_run(
    stage: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None, system_metrics: bool = False
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution, as a child of the invocation's parent run.

    Args:
        stage: stage name used when ``DVC_STAGE`` is not set (running a stage script by hand).
        params: the params this stage depends on (logged flattened).
        tags: more tags (e.g. ``method``, ``run``, ``kind`` of a training stage).
        system_metrics: log MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network,
            GPU when there is one; every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` s, default 10) while the run is
            open, unless turned off (:func:`system_metrics_enabled`).

    Yields:
        A :class:`StageRun`. On exit the run (and its parent) is marked FINISHED, or FAILED when the
        body raised (the exception propagates); a run the body gave no description gets one (its command and
        final metrics). Before it starts, runs left RUNNING by dead processes of this
        host are marked KILLED (:func:`mark_dead_runs_killed`).
    """
    root = repo_root().resolve()
    uri = tracking_uri(root)
    client, exp_id = ensure_store(root)
    mark_dead_runs_killed(client, exp_id)
    dvc_stage = os.environ.get("DVC_STAGE", stage)
    inv = invocation()
    parent = _parent_run(client, exp_id, uri, root, inv) if inv else None
    run_tags = {
        "mlflow.runName": dvc_stage,
        "dvc.stage": dvc_stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "mlflow.source.git.commit": git_commit(root),
        "xmkd.kind": "stage",
        **owner_tags(),
        **(tags or {}),
    }
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=run_tags, run_name=dvc_stage)
    handle = StageRun(client, run.info.run_id, uri)
    handle.name = dvc_stage
    if params:
        handle.log_params(params)
    monitor = None
    if system_metrics and system_metrics_enabled():
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not its INFO lines in every stage log
        monitor = SystemMetricsMonitor(run.info.run_id, tracking_uri=uri)
        monitor.start()
    try:
        yield handle
    except BaseException:
        if monitor:
            monitor.finish()
        client.set_terminated(run.info.run_id, "FAILED")
        if parent:
            client.set_terminated(parent, "FAILED")
        raise
    if monitor:
        monitor.finish()
    if handle.note is None:
        with tolerant("describe the stage run"):
            handle.set_note(_default_note(handle, dvc_stage))
    client.set_terminated(run.info.run_id, "FINISHED")
    if parent:
        client.set_terminated(parent, "FINISHED")


def parent_run_id(run: StageRun) -> str | None:
    """The pipeline run (``dvc repro`` / ``dvc exp run``) a stage run belongs to, or None (a stage run by hand)."""
    return run.client.get_run(run.run_id).data.tags.get("mlflow.parentRunId")


def register_model(name: str, checkpoint_md5: str, tags: dict[str, str], description: str) -> tuple[str, str] | None:
    """Register, as a new version of ``name``, the MLflow model logged for the checkpoint whose md5 is given.

    The model is found by the tags its seed run got when it was logged (:data:`CHECKPOINT_TAG`, :data:`MODEL_TAG`;
    the newest such run), so a run DVC did not re-run in this ``dvc repro`` is found in the earlier invocation
    that trained it. Under the store's file lock (two queued experiments may register at once).

    Args:
        name: registered model name (created when absent); checkpoint_md5: md5 of the checkpoint file.
        tags: the version's tags (e.g. ``method``, ``run``); description: the version's description.

    Returns:
        (version, the seed run id), or None when no logged model has that checkpoint (models turned off with
        ``XMKD_MLFLOW_MODELS=none``, or its logging failed).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client, exp_id = ensure_store()
    # create_model_version resolves the `models:/<id>` source through the fluent API's store, which defaults to
    # ./mlflow.db of the working directory: right for `dvc repro` by chance, a fresh empty store in a queued
    # experiment's temporary workspace (the model is then "not found")
    mlflow.set_tracking_uri(client.tracking_uri)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{CHECKPOINT_TAG}` = '{checkpoint_md5}'", order_by=["start_time DESC"],
        max_results=50,
    )
    found = [r for r in found if r.data.tags.get(MODEL_TAG)]
    if not found:
        return None
    run = found[0]
    with _locked(client.tracking_uri):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="The best student of each `dvc repro` (xmkd report).")
        version = client.create_model_version(
            name, f"models:/{run.data.tags[MODEL_TAG]}", run_id=run.info.run_id, tags=tags, description=description,
            model_id=run.data.tags[MODEL_TAG],
        )
    return version.version, run.info.run_id


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
