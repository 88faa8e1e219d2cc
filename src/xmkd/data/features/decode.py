"""Decoding one video into the cache's arrays (frames, log-mel, evaluation clips) and the ordered process pool
that decodes many: results in input order, bounded memory, the same numbers for any number of workers."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch

from xmkd.data.audio import LogMelConfig, logmel
from xmkd.data.features.config import MANIFEST_COLUMNS
from xmkd.data.video import VideoDecodeError, decode_clip
from xmkd.workers import forkserver_context

_Job = tuple[str, int, int, float, LogMelConfig, int]
_Result = tuple[str, Any, Any]


def _process_one(job: _Job) -> _Result:
    """Decode one file: ``("ok", (frames, logmel, eval_frames or None), meta)`` or ``("skip", reason, message)``."""
    path, frames, size, audio_seconds, lm_cfg, eval_clips = job
    try:
        clip = decode_clip(
            path, frames=frames, size=size, sample_rate=lm_cfg.sample_rate, audio_seconds=audio_seconds,
            eval_clips=eval_clips,
        )
    except VideoDecodeError as e:
        return ("skip", e.reason, e.detail)
    with torch.no_grad():
        mel = logmel(torch.from_numpy(clip.wave), lm_cfg).numpy().astype(np.float32, copy=False)
    meta = {k: getattr(clip, k) for k in MANIFEST_COLUMNS if hasattr(clip, k)}
    return ("ok", (clip.frames, mel, clip.eval_frames), meta)


def _init_worker() -> None:
    torch.set_num_threads(1)


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


A = TypeVar("A")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[A], R], items: Iterable[A], workers: int, window: int | None = None
) -> Generator[R, None, None]:
    """Apply ``fn`` to ``items`` over ``workers`` processes, yielding results in input order.

    At most ``window`` (default ``4 * workers``) items are in flight, so memory stays bounded however many
    items there are. ``workers == 1`` runs in the calling process. ``fn`` must be a picklable top-level
    function; worker processes come from a ``forkserver`` context (safe with torch loaded) and run torch
    single-threaded, as does the ``workers == 1`` path, so results do not depend on ``workers``.
    Exceptions raised by ``fn`` propagate; pending work is cancelled.
    """
    if workers <= 1:
        with _single_torch_thread():
            for item in items:
                yield fn(item)
        return
    window = window or 4 * workers
    ctx = forkserver_context([__name__])  # the fork server imports torch/av once; workers fork from it
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    pending: deque[Future[R]] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(executor.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(executor.submit(fn, item))
                break
            yield result
    finally:
        for f in pending:
            f.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
