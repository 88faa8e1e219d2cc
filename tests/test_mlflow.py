"""MLflow the way its users expect (src/xmkd/run_tracking.py, src/xmkd/tracking.py): per-epoch metrics that arrive
while a seed trains, system metrics, datasets with their DVC digests, tags that `mlflow ui`'s search filters on,
descriptions, the students as MLflow models and the best one of a `dvc repro` registered.

The first tests use a fresh store in a temporary folder (fast); the others the tiny pipeline of tests/conftest.py
through the REST API of a started `mlflow ui` (slow).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MlflowApi, mlflow_ui, needs_mirror, repo_env

from xmkd import tracking
from xmkd.dvclock import DvcOutput, dvc_output, file_md5
from xmkd.methods import method_config
from xmkd.models.student import StudentConfig
from xmkd.run_tracking import RunRecord, models_to_log, run_tags
from xmkd.runs import RunConfig
from xmkd.train import TrainConfig


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A fresh store in a folder that looks like the repo root (dvc.yaml, and a dvc.lock naming the data)."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  extract_features:\n    cmd: x\n    outs:\n    - path: data/features\n"
        "      hash: md5\n      md5: 0123456789abcdef0123456789abcdef.dir\n      size: 42\n      nfiles: 3\n"
    )
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    return tracking.ensure_store(tmp_path)


def _rc(epochs: int = 3) -> RunConfig:
    return RunConfig("none", method_config("none", {}), TrainConfig(epochs=epochs, milestones=[]), StudentConfig(width=4),
                     seeds=(0, 1), name="none", kind="main", label="none")


def test_each_epoch_is_in_the_seed_run_when_it_ends(store: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook-level view of live metrics: between two epochs the store already holds the epochs so far (step =
    epoch), in a RUNNING seed run tagged method/run/seed/kind; a stage that fails closes its open seed runs as
    FAILED. The epoch bar is drawn on a terminal."""
    client, exp_id = store
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    rc = _rc()
    with tracking.stage_run("distill@none", tags=run_tags(rc)) as stage, RunRecord(stage, rc) as record:
        for epoch in (1, 2):
            record.on_epoch(0, epoch, {"loss/ce": 2.0 / epoch, "loss/total": 2.0 / epoch, "val_top1": 0.1 * epoch,
                                       "seconds": 0.5})
            run_id = record.seed_runs[0].run_id
            history = client.get_metric_history(run_id, "val_top1")
            assert [(m.step, m.value) for m in history] == [(e, pytest.approx(0.1 * e)) for e in range(1, epoch + 1)]
            assert client.get_run(run_id).info.status == "RUNNING"
        seed_tags = client.get_run(run_id).data.tags
        stage_tags = client.get_run(stage.run_id).data.tags
    assert {k: seed_tags.get(k) for k in ("method", "run", "seed", "kind", "xmkd.kind")} == {
        "method": "none", "run": "none", "seed": "0", "kind": "main", "xmkd.kind": "seed"}  # fmt: skip
    assert stage_tags["seeds"] == "0,1" and "Run `none` (main table)" in stage_tags[tracking.NOTE_TAG]
    assert client.get_run(run_id).info.status == "FAILED"  # no result came: the seed did not end
    assert client.get_run(stage.run_id).info.status == "FINISHED"
    seed_inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest, d.dataset.source_type) for d in seed_inputs] == [
        ("data/features", "0123456789abcdef0123456789abcdef.dir", "dvc")]  # data/teacher: not in dvc.lock
    assert "distill@none" in term.getvalue() and "2/6" in term.getvalue()  # 2 seeds x 3 epochs, 2 done
    assert "epoch" in term.getvalue()


def test_a_tracking_error_is_a_warning_not_a_failed_stage(
    store: tuple[Any, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "_reported", set())  # each kind of error is reported once per process
    rc = _rc()
    with tracking.stage_run("distill@none") as stage, RunRecord(stage, rc) as record:
        record.on_epoch(0, 1, {"loss/total": 1.0, "seconds": 0.1})
        record.seed_runs[0].run_id = "no-such-run"  # the store refuses every later write of this seed
        record.on_epoch(0, 2, {"loss/total": 0.5, "seconds": 0.1})
        record.on_epoch(0, 3, {"loss/total": 0.4, "seconds": 0.1})
    err = capsys.readouterr().err
    assert err.count("warning: MLflow: could not log the epochs as they end") == 1  # once, not per epoch
    assert "outputs are not affected" in err
    assert record.logged[0] == {1}  # what reached the store; the seed's result would log epochs 2-3 then


def test_system_metrics_and_the_switch_that_turns_them_off(store: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = store
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    runs = {}
    for setting in ("true", "false"):
        monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", setting)
        with tracking.stage_run(f"sys-{setting}", system_metrics=True) as run:
            time.sleep(1.5)
        runs[setting] = client.get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in runs["true"] and "system/system_memory_usage_megabytes" in runs["true"]
    assert not [k for k in runs["false"] if k.startswith("system/")]


def test_which_students_become_mlflow_models(monkeypatch: pytest.MonkeyPatch) -> None:
    assert models_to_log((3, 4, 5)) == [3]
    monkeypatch.setenv("XMKD_MLFLOW_MODELS", "all")
    assert models_to_log((3, 4, 5)) == [3, 4, 5]
    monkeypatch.setenv("XMKD_MLFLOW_MODELS", "none")
    assert models_to_log((3, 4, 5)) == []
    monkeypatch.setenv("XMKD_MLFLOW_MODELS", "best")
    with pytest.raises(ValueError, match="first .*all or none"):
        models_to_log((3,))


def test_dvc_lock_digests(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    assert dvc_output("data/features", lock) is None  # no lock yet (a stage run by hand)
    lock.write_text("schema: '2.0'\nstages:\n  a:\n    outs:\n    - path: data/x/\n      md5: abc.dir\n      size: 5\n"
                    "      nfiles: 2\n  b:\n    outs:\n    - path: f.json\n      md5: def\n")
    assert dvc_output("data/x", lock) == DvcOutput("data/x", "abc.dir", "a", 5, 2)
    assert dvc_output("f.json", lock).stage == "b" and dvc_output("nope", lock) is None
    lock.write_text("- a list\n")
    with pytest.raises(ValueError, match="not a DVC 3 lock file"):
        dvc_output("data/x", lock)
    (tmp_path / "f").write_bytes(b"xmkd")
    assert file_md5(tmp_path / "f") == "4d40690c9d593c7caad87752b7d6402a"  # md5 of the bytes, as DVC 3


# ------------------------------------------------------------------------- the tiny pipeline, through mlflow ui


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _search(api: MlflowApi, exp_id: str, flt: str) -> list[dict[str, Any]]:
    return api.post("runs/search", {"experiment_ids": [exp_id], "filter": flt, "max_results": 1000}).get("runs", [])


@pytest.fixture(scope="module")
def repo(tiny_repo_copy: Callable[[str], Path]) -> Path:
    """A private copy of the session's tiny pipeline after `dvc repro` (tests/conftest.py)."""
    return tiny_repo_copy("mlflow")


@pytest.mark.slow
@needs_mirror
def test_tags_filter_runs_in_mlflow_ui_search(repo: Path) -> None:
    with mlflow_ui(repo) as api:
        exp_id = api.get("experiments/get-by-name", experiment_name="xmkd")["experiment"]["experiment_id"]
        kd = _search(api, exp_id, "tags.method = 'kd'")
        seeds = _search(api, exp_id, "tags.method = 'kd' and tags.kind = 'main' and tags.seed = '1'")
        ablations = _search(api, exp_id, "tags.kind = 'ablation'")
    found = {(t["run"], t["xmkd.kind"], t.get("seed")) for t in map(_tags, kd)}
    assert found == {("kd", "stage", None), ("kd", "seed", "0"), ("kd", "seed", "1"),
                     ("robust-kd-0.0", "stage", None), ("robust-kd-0.0", "seed", "0"), ("robust-kd-0.0", "seed", "1")}
    assert [(_tags(r)["run"], _tags(r)["seed"]) for r in seeds] == [("kd", "1")]
    assert {_tags(r)["run"] for r in ablations} == {"ablate-no_mnf", "ablate-tau0_0.2"}
    stage = next(r for r in kd if _tags(r)["xmkd.kind"] == "stage" and _tags(r)["run"] == "kd")
    note = _tags(stage)["mlflow.note.content"]
    assert "Run `kd` (main table)" in note and "test top-1" in note and "| seed |" in note
    inputs = {d["dataset"]["name"]: d["dataset"] for d in stage["inputs"]["dataset_inputs"]}
    for path in ("data/features", "data/teacher"):
        assert inputs[path]["digest"] == dvc_output(path, repo / "dvc.lock").md5  # the DVC digest of that data


@pytest.mark.slow
@needs_mirror
def test_the_best_student_of_the_repro_is_registered(repo: Path) -> None:
    """The report registered the best main run's first seed as `xmkd-student` version 1; the version names the seed
    run, which names its checkpoint; the model loads and gives the checkpoint's logits."""
    import mlflow

    runs = json.loads((repo / "metrics/runs.json").read_text())
    best = max(["none", "kd", "mnf_csc"], key=lambda r: (runs[r]["top1"], runs[r]["mAP"]))
    with mlflow_ui(repo) as api:
        model = api.get("registered-models/get", name="xmkd-student")["registered_model"]
        versions = api.get("model-versions/search", filter="name = 'xmkd-student'")["model_versions"]
        (v1,) = [v for v in versions if v["version"] == "1"]
        seed_run = api.get("runs/get", run_id=v1["run_id"])["run"]
    assert model["name"] == "xmkd-student"
    vtags = {t["key"]: t["value"] for t in v1["tags"]}
    assert vtags["run"] == best and vtags["seed"] == "0" and float(vtags["top1_mean"]) == pytest.approx(runs[best]["top1"])
    stags = _tags(seed_run)
    ckpt = repo / f"models/students/{best}/seed-0.pt"
    assert (stags["run"], stags["seed"], stags["xmkd.kind"]) == (best, "0", "seed")
    assert stags[tracking.CHECKPOINT_TAG] == file_md5(ckpt) and v1["source"] == f"models:/{stags[tracking.MODEL_TAG]}"

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    served = mlflow.pytorch.load_model("models:/xmkd-student/1")
    from xmkd.data.features import FeatureCache
    from xmkd.distill import load_checkpoint
    from xmkd.runs import load_run_config

    rc = load_run_config(repo / f"data/configs/{best}.json")
    student, _, _ = load_checkpoint(ckpt, rc)
    frames = np.array(FeatureCache(repo / "data/features").frames[:3])  # a batch size the export never saw
    with torch.no_grad():
        want = student(torch.from_numpy(frames)).logits
        got = served(torch.from_numpy(frames))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_mirror
def test_a_seeds_epochs_arrive_while_it_trains(repo: Path) -> None:
    """`mlflow ui` watched while distill@kd trains 6 epochs: a seed run shows some but not all of its epochs
    before the stage ends; afterwards one point per epoch (steps 1..6, in time order, before the test metrics),
    and the stage run has system metrics."""
    epochs = 6
    config = repo / "data/configs/kd.json"
    cfg = json.loads(config.read_text())
    cfg["train"]["epochs"] = epochs
    config.write_text(json.dumps(cfg, indent=1, sort_keys=True))
    env = repo_env(repo) | {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5", "XMKD_MLFLOW_MODELS": "none"}
    seen: list[int] = []  # points per seed run, while the stage ran
    with mlflow_ui(repo) as api:
        exp_id = api.get("experiments/get-by-name", experiment_name="xmkd")["experiment"]["experiment_id"]
        t0 = int(time.time() * 1000)
        live = f"tags.run = 'kd' and tags.`xmkd.kind` = 'seed' and attributes.start_time > {t0 - 60_000}"
        before = {r["info"]["run_id"] for r in _search(api, exp_id, live)}
        stage = subprocess.Popen([sys.executable, "stages/distill.py", "--run", "kd"], cwd=repo, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            while stage.poll() is None:
                for run in _search(api, exp_id, live):
                    if run["info"]["run_id"] not in before and run["info"]["status"] == "RUNNING":
                        hist = api.get("metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_top1")
                        if stage.poll() is None:
                            seen.append(len(hist.get("metrics", [])))
                time.sleep(0.2)
        finally:
            out = stage.communicate(timeout=600)[0]
        assert stage.returncode == 0, out
        runs = [r for r in _search(api, exp_id, live) if r["info"]["run_id"] not in before]
        histories = {_tags(r)["seed"]: api.get("metrics/get-history", run_id=r["info"]["run_id"],
                                               metric_key="val_top1")["metrics"] for r in runs}
        finals = {_tags(r)["seed"]: api.get("metrics/get-history", run_id=r["info"]["run_id"], metric_key="top1")["metrics"]
                  for r in runs}
        stage_run = _search(api, exp_id, f"tags.run = 'kd' and tags.`xmkd.kind` = 'stage' and attributes.start_time > {t0}")
        cpu = api.get("metrics/get-history", run_id=stage_run[0]["info"]["run_id"],
                      metric_key="system/cpu_utilization_percentage")["metrics"]
    assert any(0 < n < epochs for n in seen), f"no partial history seen while the stage ran: {seen}"
    assert sorted(histories) == ["0", "1"]
    for seed, hist in histories.items():
        assert [m["step"] for m in sorted(hist, key=lambda m: m["step"])] == list(range(1, epochs + 1))
        stamps = [int(m["timestamp"]) for m in sorted(hist, key=lambda m: m["step"])]
        assert stamps == sorted(stamps) and stamps[-1] <= int(finals[seed][0]["timestamp"])
        assert stamps[0] < stamps[-1]  # logged as the epochs ended, not all at once at the end
    assert cpu, "no system metrics on the training stage's run"
    assert "kd: test top-1" in out and "epochs in" in out
