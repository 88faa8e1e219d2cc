"""Worker processes that start at once: a ``forkserver`` that has imported the heavy modules.

A *spawned* worker re-imports torch, torchvision, scikit-learn and the project before it does any work:
about 7 s of CPU per process on the 2-core machine, so three seed workers cost about 10 s of wall time at
the start of every training stage. Workers *forked* from a fork server that has already imported those
modules start in milliseconds. The fork server is a fresh, single-threaded process started for the purpose
(Python's ``forkserver`` start method), so forking it is safe with torch, unlike forking a stage process
that has run torch's thread pools or holds MLflow's database connections.

Start the server early (:func:`start_forkserver`, before the caller's own heavy imports) and its imports
run on the other core while the caller imports and opens its MLflow run.

**No orphans.** A process killed with SIGKILL runs no cleanup, so its children must notice by themselves:

- every seed worker watches its stage process (:func:`seed_worker_init`) and exits at once when it is gone;
  Python's fork server exits by itself when its parent's end of its "alive" pipe closes;
- a stage run by DVC watches the ``dvc`` process it runs under (:func:`end_with_dvc`): when ``dvc repro`` dies
  (even by SIGKILL), the stage gets SIGTERM, which :func:`xmkd.cli.run_main` turns into a clean exit
  (its MLflow run is closed, its seed workers are terminated, :func:`terminate_workers`);
- a seed that fails ends the other seeds' workers instead of waiting for them (:func:`xmkd.experiment.run_all`).

Processes are checked every :data:`WATCH_INTERVAL_S` seconds (Linux ``/proc``; elsewhere ``os.kill(pid, 0)``).

This module imports only the standard library, so that a stage script can call it first.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

#: What the fork server of the seed workers (:func:`xmkd.experiment.run_all`) imports: the training and
#: evaluation code with torch and torchvision, and scikit-learn's metrics (imported lazily by xmkd.evaluate).
SEED_WORKER_MODULES: tuple[str, ...] = ("xmkd.experiment", "sklearn.metrics")


def forkserver_context(preload: Sequence[str]) -> BaseContext:
    """The multiprocessing context for worker pools: ``forkserver`` importing ``preload``, else ``spawn``.

    Args:
        preload: importable module names the fork server imports once (e.g. ``["xmkd.experiment"]``). The
            preload list is process-wide and only takes effect before the server starts; a later call with
            another list still gets the running server (its modules are then imported per worker, on demand).

    Returns:
        A context for ``ProcessPoolExecutor(mp_context=...)``. ``spawn`` where the platform has no fork
        server (Windows); results never depend on which.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def start_forkserver(preload: Sequence[str]) -> None:
    """Start the fork server now; it imports ``preload`` in the background.

    Returns without waiting for the imports. Call it from the main process only (never at import time of a
    module a worker also imports), before the caller's own slow imports, so the two overlap. A no-op where
    there is no fork server, or when it is already running.
    """
    ctx = forkserver_context(preload)
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


#: Seconds between two checks of a watched process.
WATCH_INTERVAL_S = 0.5


def process_gone(pid: int) -> bool:
    """True when process ``pid`` no longer runs (absent, or a zombie waiting to be reaped).

    Raises:
        ValueError: ``pid`` is not positive.
    """
    if pid <= 0:
        raise ValueError(f"pid must be positive, got {pid}")
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]  # field 3, after the "(comm)" field
        except (OSError, IndexError):
            return True
        return state in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def when_gone(pid: int, action: Callable[[], None], interval_s: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Start a daemon thread that calls ``action()`` once process ``pid`` is gone (:func:`process_gone`).

    Returns:
        The started thread (daemon: it never keeps this process alive).
    """

    def watch() -> None:
        while not process_gone(pid):
            time.sleep(interval_s)
        action()

    thread = threading.Thread(target=watch, name=f"xmkd-watch-{pid}", daemon=True)
    thread.start()
    return thread


#: The queue on which a seed worker sends its epochs to the stage process (set by :func:`seed_worker_init`).
_epoch_queue: Any = None


def seed_worker_init(stage_pid: int, epochs: Any = None) -> None:
    """``ProcessPoolExecutor`` initializer of a seed worker: exit at once (status 1) when ``stage_pid`` is gone.

    A seed worker whose stage died has no one to report to; its results would never be written. It ends without
    cleanup (``os._exit``): it holds nothing the next run needs (checkpoints are written by the stage process).

    Args:
        stage_pid: the stage process.
        epochs: a ``multiprocessing`` ``SimpleQueue`` of the pool's context on which :class:`EpochSender` hooks
            send each epoch's metrics (a queue can only reach a worker this way, when the process starts).
    """
    global _epoch_queue
    _epoch_queue = epochs
    when_gone(stage_pid, lambda: os._exit(1))


class EpochSender:
    """The per-epoch hook (``on_epoch_end``) of a seed trained in another process: it sends ``(seed, epoch,
    metrics)`` to the stage process, which logs it (MLflow) and moves its progress bar as the seed trains.

    Picklable: it holds the seed and, for a process started with it as an argument (a DDP rank, started by
    ``spawn``), the queue itself; a seed worker of a pool uses the queue :func:`seed_worker_init` stored.

    Args:
        seed: the seed it reports for.
        queue: a ``multiprocessing`` ``SimpleQueue``, or None for the worker's own (:func:`seed_worker_init`).
    """

    def __init__(self, seed: int, queue: Any = None) -> None:
        self.seed, self.queue = seed, queue

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        """Send one epoch (1-based) and its metrics; a no-op where no queue was given."""
        queue = self.queue if self.queue is not None else _epoch_queue
        if queue is not None:
            queue.put((self.seed, epoch, dict(metrics)))


def terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop every worker process of ``pool`` now (SIGTERM) and cancel its pending work; never waits for a seed.

    ``ProcessPoolExecutor.terminate_workers`` (Python 3.14) where it exists, else the same on the pool's process
    table. Safe to call on a pool that is already shut down.
    """
    stop = getattr(pool, "terminate_workers", None)
    if callable(stop):
        stop()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown(), which drops the table
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join(timeout=10)


def _parent_and_cmdline(pid: int) -> tuple[int, list[str]] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1]), [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_dvc_command(cmd: Sequence[str]) -> bool:
    """True for ``dvc ...``, ``python .../dvc ...`` and ``python -m dvc ...`` command lines."""
    if not cmd:
        return False
    if Path(cmd[0]).name == "dvc":
        return True
    if Path(cmd[0]).name.startswith("python") and len(cmd) > 1:
        return Path(cmd[1]).name == "dvc" or list(cmd[1:3]) == ["-m", "dvc"]
    return False


def dvc_ancestor() -> int | None:
    """pid of the nearest ancestor process running ``dvc`` (``dvc repro``, ``dvc exp run``, a queue worker), or
    ``None`` when this process does not run under DVC or there is no ``/proc`` to tell."""
    pid = os.getppid()
    while pid > 1:
        found = _parent_and_cmdline(pid)
        if found is None:
            return None
        parent, cmd = found
        if is_dvc_command(cmd):
            return pid
        pid = parent
    return None


def end_with_dvc() -> int | None:
    """When this process runs under DVC, send it SIGTERM as soon as that ``dvc`` process is gone.

    A stage whose ``dvc repro`` was killed would otherwise train on for minutes, and write outputs DVC never
    records. Run by hand (no DVC ancestor) nothing is watched: a stage started with ``nohup`` keeps running.

    Returns:
        The watched DVC pid, or ``None``.
    """
    dvc = dvc_ancestor()
    if dvc is not None:
        when_gone(dvc, lambda: os.kill(os.getpid(), signal.SIGTERM))
    return dvc
