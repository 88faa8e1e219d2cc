"""Entry-point helper for stage scripts: user errors become one clear message, not a traceback."""

from __future__ import annotations

import gc
import os
import sys
from typing import Callable

from xmkd.errors import XmkdError


def run_main(fn: Callable[[], None]) -> None:
    """Run a stage's ``main``; on :class:`XmkdError` print ``error: <message>`` to stderr and exit 1.

    Set ``XMKD_TRACEBACK=1`` to get the full traceback instead. After ``fn`` the collector is frozen
    (``gc.freeze``): the interpreter's final garbage collection over torch's, torchvision's and MLflow's
    objects otherwise takes 1-4 s at the exit of every stage.
    """
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        fn()
    except XmkdError as e:
        if os.environ.get("XMKD_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        gc.freeze()
