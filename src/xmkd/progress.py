"""Progress bars for the long stages (tqdm), drawn on a terminal and silent otherwise.

Every bar is created with ``disable=None``: tqdm draws it only when stderr is a TTY, so `dvc repro` in a
terminal shows it and a log file, CI, a queued experiment (`dvc exp run --queue`) or a test sees nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, drawn only when stderr is a terminal (``disable=None``).

    Args:
        total: number of steps (None: unknown, the bar counts without a percentage).
        desc: the text before the bar, e.g. ``"extract_features"``.
        unit: what one step is, e.g. ``"clip"``.
        **kwargs: passed on to :class:`tqdm.tqdm` (e.g. ``leave=False`` for an inner bar).

    Returns:
        The bar; use it as a context manager (it closes on exit) or call ``close()``.
    """
    kwargs.setdefault("disable", None)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, **kwargs)


@contextmanager
def progress_callback(desc: str, unit: str = "it") -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback (the form :func:`xmkd.data.benchmark.build_benchmark` and
    :func:`xmkd.data.features.extract_features` call) that moves one bar, closed on exit.

    ``done`` is the number of steps finished so far (non-decreasing) and ``total`` the number of steps; the
    bar takes its total from the first call.
    """
    bar = progress_bar(None, desc, unit)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
