"""Precomputed feature sequences as a data layout: one ``.npy`` of shape (T, D) per clip and view.

Used by the CORSMAL dataset (:mod:`xmkd.data.corsmal`): VGGish audio sequences (T x 128) and R(2+1)D RGB
sequences of 4 cameras (T x 512 each), T varying from clip to clip. This module reads and checks the files
(shape, dtype, finiteness; every error names the file) and pads them into one array the training loop can
batch, with the validity mask as an extra last channel so that one tensor carries both:

    packed[n, v, t, :D] = features of clip n, view v, step t   (0 at padded steps)
    packed[n, v, t,  D] = 1.0 for a real step, 0.0 for padding

The sequence student (:mod:`xmkd.models.sequence`) splits the two again and masks the padded steps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xmkd.errors import DataError


def load_sequence(path: str | os.PathLike[str], dim: int, max_len: int | None = None) -> np.ndarray:
    """Read one feature sequence and check it.

    Args:
        path: a ``.npy`` file holding a (T, D) array.
        dim: the expected D (128 for VGGish, 512 for R(2+1)D).
        max_len: if given, T must not exceed it.

    Returns:
        (T, D) float32, T >= 1.

    Raises:
        DataError: the file is missing or unreadable (corrupt), not 2-D, of the wrong D, not floating point,
            empty (T = 0), longer than ``max_len``, or holds a NaN or infinite value; the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"feature file {p} is missing: restore it from the source, or drop the clip from the layout.")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # corrupt header, truncated data, pickled object
        raise DataError(f"feature file {p} cannot be read as a .npy array ({type(exc).__name__}: {exc}): "
                        "it is corrupt; restore it from the source.") from None
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DataError(f"feature file {p} has shape {arr.shape}, expected (T, {dim}): one row of {dim} "
                        "features per time step. Check that it is the right modality's file.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"feature file {p} has dtype {arr.dtype}, expected float32 features.")
    if arr.shape[0] == 0:
        raise DataError(f"feature file {p} has no time step (shape {arr.shape}): re-extract it or drop the clip.")
    if max_len is not None and arr.shape[0] > max_len:
        raise DataError(f"feature file {p} has T = {arr.shape[0]} steps, more than the limit {max_len}.")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"feature file {p} holds {bad} NaN or infinite values: re-extract it or drop the clip.")
    return arr.astype(np.float32, copy=False)


def pack_sequences(seqs: Sequence[Sequence[np.ndarray]], max_len: int | None = None) -> np.ndarray:
    """Pad clips of V views of (T, D) sequences into one array with the mask as the last channel.

    Args:
        seqs: N clips, each a list of V arrays (T_nv, D) (same V and D for all; T varies).
        max_len: padded length; default the longest T. Longer sequences are an error, never cut.

    Returns:
        (N, V, T_max, D + 1) float32: features at ``[..., :D]`` (0 at padded steps), mask at ``[..., D]``.

    Raises:
        ValueError: no clip, clips with different numbers of views or different D, or T > ``max_len``.
    """
    if not seqs:
        raise ValueError("pack_sequences needs at least one clip")
    n_views, dim = len(seqs[0]), seqs[0][0].shape[1]
    longest = max(s.shape[0] for clip in seqs for s in clip)
    t_max = longest if max_len is None else max_len
    if longest > t_max:
        raise ValueError(f"a sequence has {longest} steps, more than max_len = {t_max}")
    out = np.zeros((len(seqs), n_views, t_max, dim + 1), np.float32)
    for n, clip in enumerate(seqs):
        if len(clip) != n_views or any(s.shape[1] != dim for s in clip):
            raise ValueError(f"clip {n} has {len(clip)} views / feature sizes {[s.shape[1] for s in clip]}, "
                             f"expected {n_views} views of D = {dim}")
        for v, s in enumerate(clip):
            out[n, v, : s.shape[0], :dim] = s
            out[n, v, : s.shape[0], dim] = 1.0
    return out


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of the packing: ``(features (..., T, D), mask (..., T) bool)``."""
    return packed[..., :-1], packed[..., -1] > 0.5
