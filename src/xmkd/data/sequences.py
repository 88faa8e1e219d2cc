"""Precomputed feature sequences as a data layout: one ``.npy`` of shape (T, D) per clip and view.

Used by the CORSMAL dataset (:mod:`xmkd.data.corsmal`): VGGish audio sequences (T x 128) and R(2+1)D RGB
sequences of 4 cameras (T x 512 each), T varying from clip to clip. This module reads and checks the files
(shape, dtype, finiteness; every error names the file) and pads them into one array the training loop can
batch, with the validity mask as an extra last channel so that one tensor carries both:

    packed[n, v, t, :D] = features of clip n, view v, step t   (0 at padded steps)
    packed[n, v, t,  D] = 1.0 for a real step, 0.0 for padding

The sequence student (:mod:`xmkd.models.sequence`) splits the two again and masks the padded steps.
:class:`SequenceClips` keeps the clips ragged and :func:`pad_collate` pads each batch to its own longest clip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

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


def pad_views(views: Sequence[np.ndarray], t_max: int | None = None) -> np.ndarray:
    """One clip's V views of (T_v, D) as (V, T, D + 1) float32, T = ``t_max`` or the longest T_v, mask last."""
    return pack_sequences([views], t_max)[0]


class SequenceClips(torch.utils.data.Dataset):
    """Clips of one subset as ragged feature sequences, with their frozen teacher outputs (the batches of
    :func:`xmkd.train.train`: student input, label, teacher embedding, teacher logits, position in the subset).

    Unlike :class:`xmkd.train.ClipDataset` the clips are not padded to the longest clip of the data set: an item
    is its own (V, T_i, D + 1) array and :func:`pad_collate` pads a batch to its longest clip, so a batch of
    short clips costs little (CORSMAL: mean T 14, longest 67).

    Args:
        seqs: (N_all) clips, each V arrays (T, D) float32 (:func:`load_sequence`).
        labels: (N_all,) int64. teacher_embedding: (N_all, D_t) float32. teacher_logits: (N_all, C) float32.
        indices: rows of this subset.

    Raises:
        ValueError: arrays of different lengths, or an index out of range.
    """

    def __init__(self, seqs: Sequence[Sequence[np.ndarray]], labels: np.ndarray, teacher_embedding: np.ndarray,
                 teacher_logits: np.ndarray, indices: np.ndarray) -> None:
        n = len(seqs)
        if not len(labels) == len(teacher_embedding) == len(teacher_logits) == n:
            raise ValueError(f"{n} clips but {len(labels)} labels, {len(teacher_embedding)} teacher embeddings and "
                             f"{len(teacher_logits)} teacher logits")
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and not 0 <= self.indices.min() <= self.indices.max() < n:
            raise ValueError(f"indices must lie in [0, {n}), got {self.indices.min()}..{self.indices.max()}")
        self.clips = [pad_views(seqs[i]) for i in self.indices]
        self.labels = torch.as_tensor(np.asarray(labels)[self.indices], dtype=torch.long)
        self.emb = torch.as_tensor(np.asarray(teacher_embedding)[self.indices], dtype=torch.float32)
        self.logits = torch.as_tensor(np.asarray(teacher_logits)[self.indices], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def lengths(self) -> np.ndarray:
        """(n,) padded length T_i of every clip of the subset (its longest view)."""
        return np.array([c.shape[1] for c in self.clips], dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(clip (V, T_i, D + 1) float32, label, teacher embedding (D_t,), teacher logits (C,), position i)."""
        return torch.from_numpy(self.clips[i]), self.labels[i], self.emb[i], self.logits[i], i


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, ...]:
    """Stack :class:`SequenceClips` items, padding the clips to the batch's longest (zero features, mask 0).

    Returns:
        (clips (B, V, T_max, D + 1), labels (B,), embeddings (B, D_t), logits (B, C), positions (B,) int64).
    """
    clips, labels, emb, logits, pos = zip(*batch, strict=True)
    t_max = max(c.shape[1] for c in clips)
    x = clips[0].new_zeros(len(clips), clips[0].shape[0], t_max, clips[0].shape[2])
    for k, c in enumerate(clips):
        x[k, :, : c.shape[1]] = c
    return x, torch.stack(labels), torch.stack(emb), torch.stack(logits), torch.as_tensor(pos, dtype=torch.long)
