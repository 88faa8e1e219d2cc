"""Worker processes that start at once: a ``forkserver`` that has imported the heavy modules.

A *spawned* worker re-imports torch, torchvision, scikit-learn and the project before it does any work:
about 7 s of CPU per process on the 2-core machine, so three seed workers cost about 10 s of wall time at
the start of every training stage. Workers *forked* from a fork server that has already imported those
modules start in milliseconds. The fork server is a fresh, single-threaded process started for the purpose
(Python's ``forkserver`` start method), so forking it is safe with torch, unlike forking a stage process
that has run torch's thread pools or holds MLflow's database connections.

Start the server early (:func:`start_forkserver`, before the caller's own heavy imports) and its imports
run on the other core while the caller imports and opens its MLflow run.

This module imports only the standard library, so that a stage script can call it first.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.context import BaseContext

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
