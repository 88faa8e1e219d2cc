"""MLflow runs left RUNNING by a dead process are marked KILLED when the next stage starts (src/xmkd/tracking.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmkd import tracking


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, str]:
    """A fresh store in a folder that looks like the repo root (it holds dvc.yaml)."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tracking.ensure_store(tmp_path)


def test_a_stage_start_marks_runs_of_dead_processes_killed(store: tuple[object, str]) -> None:
    client, exp_id = store
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live_tags = tracking.owner_tags(alive.pid)
        tags = {
            "dead": {**live_tags, tracking.PID_TAG: str(dead.pid)},
            "alive": live_tags,
            "pid_reused": {**live_tags, tracking.PID_START_TAG: "12.345"},  # the pid now runs another process
            "other_host": {**live_tags, tracking.HOST_TAG: "elsewhere.example.org", tracking.PID_TAG: str(dead.pid)},
            "no_owner": {},  # e.g. a run written before the owner tags existed: nothing to judge it by
        }
        ids = {k: client.create_run(exp_id, tags=t, run_name=k).info.run_id for k, t in tags.items()}
        done = client.create_run(exp_id, tags=tags["dead"], run_name="finished").info.run_id
        client.set_terminated(done, "FINISHED")

        with tracking.stage_run("probe") as run:  # the start of a stage is where dead runs are found
            own = client.get_run(run.run_id).data.tags
        status = {k: client.get_run(i).info.status for k, i in ids.items()}
        assert status == {"dead": "KILLED", "alive": "RUNNING", "pid_reused": "KILLED", "other_host": "RUNNING",
                          "no_owner": "RUNNING"}
        killed = client.get_run(ids["dead"])
        assert killed.info.end_time >= killed.info.start_time
        assert f"process {dead.pid} on" in killed.data.tags[tracking.KILLED_TAG]
        assert client.get_run(done).info.status == "FINISHED"
        assert client.get_run(run.run_id).info.status == "FINISHED"
        assert own[tracking.PID_TAG] == str(os.getpid()) and not tracking.owner_gone(own)
    finally:
        alive.kill()
        alive.wait()
    # the owner is gone now: the next stage marks that run too
    assert tracking.mark_dead_runs_killed(client, exp_id) == [ids["alive"]]


def test_owner_tags_name_this_process_and_survive_pid_checks() -> None:
    tags = tracking.owner_tags()
    assert not tracking.owner_gone(tags)
    assert tracking.owner_gone({**tags, tracking.PID_START_TAG: "1.000"})
    assert not tracking.owner_gone({**tags, tracking.HOST_TAG: "elsewhere"})
    assert not tracking.owner_gone({tracking.HOST_TAG: tags[tracking.HOST_TAG], tracking.PID_TAG: "n/a"})
