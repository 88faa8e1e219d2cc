"""Which process owns an MLflow run, and which ``dvc`` command a stage runs under (:mod:`xmkd.tracking`).

Every run records its owner: host, pid and the process's start time (so that a pid reused by a later process
is not mistaken for it); a stage finds the runs of dead owners by these tags and marks them KILLED. The parent run
of a ``dvc repro`` / ``dvc exp run`` is identified by the nearest ``dvc`` process above the stage (psutil).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import psutil

from xmkd.workers import is_dvc_command, process_gone

HOST_TAG, PID_TAG, PID_START_TAG = "xmkd.host", "xmkd.pid", "xmkd.pid_start"


def git_commit(root: Path) -> str:
    """HEAD commit of the repo at ``root``, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
            if is_dvc_command(cmd):
                key = f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.3f}:{exp}"
                return {"key": key, "command": joined[:500], "pid": str(proc.pid),
                        "start": f"{proc.create_time():.3f}"}
    except (psutil.Error, OSError):
        return None
    return None
