"""Entry-point helper for stage scripts: user errors become one clear message, not a traceback."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from xmkd.errors import XmkdError
from xmkd.workers import end_with_dvc


class StageTerminated(SystemExit):
    """Raised in a stage's main thread on SIGTERM (a killed ``dvc``, ``dvc queue kill``, ``kill <pid>``), so that
    its ``finally`` blocks and context managers run: its MLflow run is closed as failed, its seed workers are
    stopped, and no partial output replaces a previous one (outputs are written to a temporary file, then moved)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise StageTerminated(128 + signum)


def run_main(fn: Callable[[], None]) -> None:
    """Run a stage's ``main``; on :class:`XmkdError` print ``error: <message>`` to stderr and exit 1.

    Set ``XMKD_TRACEBACK=1`` to get the full traceback instead. SIGTERM becomes :class:`StageTerminated` (exit
    status 143) in the main thread, and a stage run by DVC gets SIGTERM when that ``dvc`` process dies
    (:func:`xmkd.workers.end_with_dvc`): no stage outlives its pipeline. After ``fn`` the collector is frozen
    (``gc.freeze``): the interpreter's final garbage collection over torch's, torchvision's and MLflow's
    objects otherwise takes 1-4 s at the exit of every stage.
    """
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    signal.signal(signal.SIGTERM, _terminate)
    end_with_dvc()
    try:
        fn()
    except StageTerminated:
        print("error: the stage was terminated (SIGTERM, or its dvc process ended); nothing of this stage was "
              "recorded, earlier outputs are untouched. Run `dvc repro` again to redo it.", file=sys.stderr)
        raise
    except XmkdError as e:
        if os.environ.get("XMKD_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        gc.freeze()
