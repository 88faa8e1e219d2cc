"""No process outlives its stage: seed workers and fork servers end when the stage (or its `dvc`) is killed.

Tried on a fresh clone before this was built: `kill -9` of `dvc repro` and of the `distill@kd` stage left the fork
server and 3 seed workers training for minutes. Here the same kills, on a pool of real seed workers and on the real
training stage of the tiny pipeline, must leave nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import needs_mirror, repo_env

from xmkd.workers import dvc_ancestor, is_dvc_command, process_gone

ROOT = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _assert_all_end(procs: list[psutil.Process], timeout: float, log: Path | None = None) -> None:
    start = time.time()
    while _alive(procs) and time.time() < start + timeout:
        time.sleep(0.2)
    left = _alive(procs)
    print(f"stage killed: its {len(procs)} processes ended within {time.time() - start:.1f} s")
    for p in procs:  # never leave them running, whatever the verdict
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    assert not left, f"processes still running {timeout} s after their stage was killed: {left}\n{tail}"


def test_process_gone_tells_running_zombie_and_reaped_apart() -> None:
    assert not process_gone(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "the child to exit")
    assert process_gone(child.pid)  # exited, not yet reaped: a zombie does not run
    child.wait()
    assert process_gone(child.pid)
    with pytest.raises(ValueError, match="positive"):
        process_gone(0)


def test_dvc_command_lines_are_recognised() -> None:
    assert is_dvc_command(["/venv/bin/dvc", "repro"])
    assert is_dvc_command(["/usr/bin/python3", "/venv/bin/dvc", "exp", "run"])
    assert is_dvc_command(["python", "-m", "dvc", "queue", "start"])
    assert not is_dvc_command(["python", "stages/distill.py", "--run", "kd"])
    assert not is_dvc_command([])
    assert dvc_ancestor() is None  # pytest does not run under DVC


POOL_STAGE = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from xmkd.workers import forkserver_context, seed_worker_init

    def seed(i):
        time.sleep(120)  # a long seed

    if __name__ == "__main__":
        init = seed_worker_init if sys.argv[1] == "watched" else None
        args = (os.getpid(),) if init else ()
        with ProcessPoolExecutor(2, mp_context=forkserver_context([]), initializer=init, initargs=args) as pool:
            futures = [pool.submit(seed, i) for i in range(2)]
            print("started", flush=True)
            for f in futures:
                f.result()
""")


def _pool_stage(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    script = tmp_path / "stage.py"
    script.write_text(POOL_STAGE)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, str(script), mode], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # the fork server and its 2 workers
    _wait_for(lambda: len(_descendants(proc.pid)) >= 3, 60, "the fork server and 2 seed workers")
    return proc, _descendants(proc.pid)


def test_seed_workers_end_when_their_stage_is_killed(tmp_path: Path) -> None:
    proc, children = _pool_stage(tmp_path, "watched")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _assert_all_end(children, timeout=10)


def test_without_the_watch_a_killed_stage_leaves_its_workers(tmp_path: Path) -> None:
    """The control: the same pool without :func:`seed_worker_init` keeps its workers (so the test above can fail)."""
    proc, children = _pool_stage(tmp_path, "unwatched")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    try:
        assert _alive(children), "the unwatched workers ended by themselves: the watched test proves nothing"
    finally:
        for p in children:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_terminate_workers_stops_running_seeds_without_waiting() -> None:
    from concurrent.futures import ProcessPoolExecutor

    from xmkd.workers import forkserver_context, terminate_workers

    pool = ProcessPoolExecutor(2, mp_context=forkserver_context([]))
    [pool.submit(_sleep, 120) for _ in range(3)]
    _wait_for(lambda: len(pool._processes or {}) == 2 and all(p.is_alive() for p in pool._processes.values()),
              60, "2 workers")
    procs = list(pool._processes.values())
    t0 = time.time()
    terminate_workers(pool)
    assert time.time() - t0 < 15
    assert not any(p.is_alive() for p in procs)
    terminate_workers(pool)  # again, on a pool already shut down: no error


# ------------------------------------------------------------------ the real training stage of the tiny pipeline


@pytest.fixture(scope="module")
def long_repo(tiny_repo_copy: Callable[[str], Path]) -> Path:
    """A tiny-pipeline copy whose kd stage trains for long enough to be killed mid-training (2 seed workers)."""
    repo = tiny_repo_copy("workers")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 400
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = json.loads((repo / "data/configs/kd.json").read_text())
    cfg["train"]["epochs"] = 400
    (repo / "data/configs/kd.json").write_text(json.dumps(cfg))
    return repo


def _training(root_pid: int) -> bool:
    """True once the seed workers (children of the fork server) exist under ``root_pid``."""
    procs = _descendants(root_pid)
    servers = [p for p in procs if "forkserver" in " ".join(p.cmdline())]
    return any(len(s.children()) >= 2 for s in servers)


@needs_mirror
@pytest.mark.slow
@pytest.mark.parametrize("victim", ["stage", "dvc"])
def test_killing_the_stage_or_dvc_ends_every_process(long_repo: Path, victim: str, tmp_path: Path) -> None:
    if victim == "stage":
        cmd = [sys.executable, "stages/distill.py", "--run", "kd"]
    else:
        cmd = ["dvc", "repro", "--single-item", "--force", "distill@kd"]
    log = tmp_path / "stage.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=long_repo, env=repo_env(long_repo), text=True,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _training(proc.pid), 180, "the kd stage's seed workers to start")
        procs = _descendants(proc.pid)
        assert len(procs) >= 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _assert_all_end(procs, timeout=10, log=log)  # issue 13: none alive 10 s after the kill
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
