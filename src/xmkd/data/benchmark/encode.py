"""Encoding: one clip to an MP4 (H.264 + FLAC or AAC, :mod:`xmkd.data.codec`), and the pool of encoder processes
that writes every clip."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from xmkd.data import codec
from xmkd.data.benchmark.config import AAC_BIT_RATE, MAX_IN_FLIGHT
from xmkd.errors import DataError


def encode_clip(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    audio: np.ndarray,
    fps: int,
    sample_rate: int,
    crf: int,
    audio_codec: str = "flac",
) -> None:
    """Write one MP4: H.264 (libx264, yuv420p, ``crf``, ``fps``) video + mono sound (FLAC or AAC).

    The bytes depend only on the inputs (not on the process, the worker count or the x86-64 CPU):
    see :mod:`xmkd.data.codec` for the encoder settings that make it so.

    Args:
        path: output file (``.mp4``).
        frames: (T, H, W) uint8 gray (replicated to RGB) or (T, H, W, 3) uint8 RGB; H, W even.
        audio: (S,) float32 in [-1, 1] at ``sample_rate`` Hz.
        audio_codec: ``flac`` (lossless 16-bit) or ``aac`` (:data:`AAC_BIT_RATE`).

    Raises:
        DataError: if PyAV/ffmpeg cannot encode (e.g. libx264 missing from the PyAV build).
    """
    import av

    rgb = np.repeat(frames[..., None], 3, axis=-1) if frames.ndim == 3 else frames
    try:
        codec.write_av(
            path,
            rgb,
            fps,
            audio,
            sample_rate,
            video_options={"crf": str(crf)},
            audio_codec=audio_codec,
            audio_bit_rate=AAC_BIT_RATE if audio_codec == "aac" else None,
            container_format="mp4",
        )
    except (av.FFmpegError, ValueError) as e:
        raise DataError(
            f"cannot encode {path} with PyAV ({e}); check that PyAV was built with libx264 and {audio_codec}."
        ) from e


def _encode_task(task: tuple[str, np.ndarray, np.ndarray, int, int, int, str]) -> str:
    encode_clip(*task)
    return task[0]


def _run_encoders(
    tasks: Iterator[tuple[Any, ...]], total: int, workers: int, progress: Callable[[int, int], None] | None
) -> None:
    """Encode every task, in ``workers`` spawned processes (or in-process when ``workers == 0``).

    At most :data:`MAX_IN_FLIGHT` rendered clips wait in memory at a time. With ``workers > 0`` the
    caller's main module must be import-safe (``if __name__ == "__main__":`` guard): workers are
    *spawned*, not forked, because the parent has torch's thread pools running.
    """
    done = 0
    if workers <= 0:
        for task in tasks:
            _encode_task(task)
            done += 1
            if progress:
                progress(done, total)
        return
    slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def bounded() -> Iterator[tuple[Any, ...]]:
        for task in tasks:
            slots.acquire()
            yield task

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_encode_task, bounded(), chunksize=8):
            slots.release()
            done += 1
            if progress:
                progress(done, total)
