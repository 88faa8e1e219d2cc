"""Precomputed teacher embeddings: import them, align them to the clips, train only a classification head.

The paper's teacher (Xia et al., arXiv 2304.07775, following CCL, Chen et al. CVPR 2021) is a PANNs CNN14 audio
network pretrained on AudioSet whose 512-d embedding of each video's sound track is precomputed, one ``.npy`` per
video::

    <source>/<Class>/<video_id>.npy          e.g. audiocnn14embed512_features/Archery/v_Archery_g01_c01.npy

``<source>`` is a directory or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive holding that tree (any number of leading
folders). A video is found **by its id** (the file stem), not by its class folder: UCF101's own files disagree on
case (folder ``HandstandPushups``, files ``v_HandStandPushups_*``), so ids are the only reliable key; folder names
that differ from the annotation's label (case-insensitively) are counted, not trusted. macOS ``._*`` resource
files and ``__MACOSX/`` entries are ignored.

Archives are read in one sequential pass with :mod:`tarfile`, without extracting to disk: a gzip stream cannot be
seeked cheaply, 6,837 small members (~15 MB) would cost more to write and clean up than to hold in memory, and a
failure leaves nothing behind.

Methods such as KD need teacher *logits*; the imported teacher has none, so a classification head (linear or a
one-hidden-layer MLP) is trained on the embeddings of the ``training`` subset (Adam, seeded, the last epoch's head
is used: no model selection on validation data) and gives logits for every clip. The embeddings are stored as they
are (raw, as the reference implementation feeds them to MNF); ``normalize`` only shapes the head's input.

The stage is ``stages/import_teacher.py``; to score the head alone on an annotation (nothing written)::

    python -m xmkd.teacher_import --annotation ../shared/datasets/ucf51/annotation.json \\
        --source ../shared/datasets/ucf51/audiocnn14embed512_features.tar.gz [--head mlp --epochs 50 ...]
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmkd.errors import ConfigError, DataError, TrainingError

#: Archive suffixes read with :mod:`tarfile` (anything else must be a directory).
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

#: Short names of the reference subsets in metric keys (``val_top1``); other subsets keep their name.
SUBSET_SHORT: dict[str, str] = {"training": "train", "validation": "val", "testing": "test"}


@dataclass(frozen=True)
class TeacherImportConfig:
    """``teacher_import`` section of params.yaml.

    Attributes:
        source: directory or ``.tar(.gz)`` archive of ``<Class>/<video_id>.npy`` embeddings (a relative path resolves
            against the working directory: the project root when DVC runs the stage). Required.
        on_missing: ``"error"``: an annotated clip without an embedding stops the import (count + first ids);
            ``"skip"``: such clips are left out and counted (only usable when no feature cache needs every row).
        head: ``"linear"`` (D -> C) or ``"mlp"`` (D -> hidden_dim -> ReLU -> dropout -> C).
        hidden_dim: width of the MLP's hidden layer (ignored for ``linear``).
        dropout: dropout before the MLP's last layer (ignored for ``linear``).
        normalize: head input: ``"none"`` (raw), ``"l2"`` (unit L2 norm per clip), ``"standardize"`` (per dimension,
            mean/std of the training rows). The stored embeddings are always raw.
        epochs: passes over the training rows.
        batch_size: rows per Adam step.
        lr: Adam learning rate (cosine-annealed to 0 over ``epochs``).
        weight_decay: Adam weight decay (L2, as ``torch.optim.Adam``).
        seed: seed of initialisation, shuffling and dropout.

    The defaults (linear head on raw embeddings, Adam lr 1e-3, weight decay 1e-3, 100 epochs of batch 256) were
    chosen on UCF51 *training* clips only: fit on UCF101 groups 12-25, scored on groups 8-11 (1,124 clips; never
    on the validation split). Top-1 there (seeds 0/1): linear raw 49.3% (wd 1e-3; 48.8% wd 0, 48.3% wd 1e-2, 48.0%
    at 50 epochs, 49.2% at 200); linear standardized 45-48%; linear L2-normalised 41-49% (depends on lr); MLP
    (512 hidden, dropout 0.5) 47.6-49.7%; scikit-learn's exact logistic regression (LBFGS) at most 49.0%. The
    linear head is as good as the MLP and trains in seconds.
    """

    source: str = ""
    on_missing: Literal["error", "skip"] = "error"
    head: Literal["linear", "mlp"] = "linear"
    hidden_dim: int = 512
    dropout: float = 0.5
    normalize: Literal["none", "l2", "standardize"] = "none"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError(
                "teacher_import.source is empty: set it to the directory or .tar.gz of <Class>/<video_id>.npy "
                "embeddings (e.g. ../shared/datasets/ucf51/audiocnn14embed512_features.tar.gz)"
            )
        for name in ("hidden_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"teacher_import.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"teacher_import.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"teacher_import.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"teacher_import.dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (
            ("on_missing", ("error", "skip")), ("head", ("linear", "mlp")), ("normalize", ("none", "l2", "standardize"))
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"teacher_import.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class LoadedEmbeddings:
    """Embeddings read from a source, aligned to requested ids.

    Attributes:
        ids: ids of the rows, in the requested order (requested ids without an embedding left out).
        embeddings: (N, D) float32, row i = ``ids[i]``.
        missing: requested ids without an embedding in the source (empty unless ``on_missing="skip"``).
        folders: class folder of each row's file (``""`` when the file lies at the top level).
        n_unused: embeddings in the source that were not requested.
    """

    ids: list[str]
    embeddings: np.ndarray
    missing: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    n_unused: int = 0


def _is_junk(parts: Sequence[str]) -> bool:
    """macOS resource forks (``._x``) and ``__MACOSX`` folders, hidden files."""
    return any(p == "__MACOSX" for p in parts) or parts[-1].startswith(".")


def _entries(source: Path) -> Iterator[tuple[str, str, str, Any]]:
    """Yield ``(id, class folder, path shown in messages, reader)`` for every ``.npy`` in ``source``.

    ``reader()`` returns the file's bytes; for archives it must be called before the next entry is requested
    (one sequential pass).
    """
    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                rel = Path(dirpath, name).relative_to(source)
                if not name.endswith(".npy") or _is_junk(rel.parts):
                    continue
                path = Path(dirpath, name)
                folder = rel.parts[-2] if len(rel.parts) > 1 else ""
                yield name[: -len(".npy")], folder, str(path), path.read_bytes
        return
    try:
        tf = tarfile.open(source, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"teacher embeddings {source}: not a readable tar archive ({e}): re-download or unpack it.") from e
    with tf:
        try:
            for m in tf:
                parts = m.name.split("/")
                if not m.isfile() or not m.name.endswith(".npy") or _is_junk(parts):
                    continue
                folder = parts[-2] if len(parts) > 1 else ""

                def read(m: tarfile.TarInfo = m) -> bytes:
                    fh = tf.extractfile(m)
                    if fh is None:
                        raise DataError(f"teacher embeddings {source}: member {m.name} cannot be read.")
                    return fh.read()

                yield parts[-1][: -len(".npy")], folder, f"{source}:{m.name}", read
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(
                f"teacher embeddings {source}: the archive is corrupt or truncated ({e}): re-download it."
            ) from e


def _parse_npy(data: bytes, where: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"teacher embedding {where} is not a valid .npy file ({e}): regenerate it.") from e
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DataError(f"teacher embedding {where} holds {getattr(arr, 'dtype', type(arr))}, not real numbers.")
    if arr.ndim == 2 and arr.shape[0] == 1:  # (1, D) -> (D,)
        arr = arr[0]
    return arr


def _first(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f" (and {len(items) - k} more)" if len(items) > k else "")


def load_embeddings(
    source: str | os.PathLike[str], ids: Sequence[str], on_missing: Literal["error", "skip"] = "error"
) -> LoadedEmbeddings:
    """Read the embedding of every id in ``ids`` from ``source`` (directory or tar archive), in that order.

    Each file must hold one vector: shape (D,) or (1, D), a real dtype (converted to float32), finite values, and
    the same D for every file.

    Args:
        source: directory or ``.tar``/``.tar.gz``/``.tgz`` of ``<Class>/<video_id>.npy`` (see module docstring).
        ids: the clip ids, in the row order wanted (e.g. the feature cache's manifest order); unique.
        on_missing: ``"error"`` or ``"skip"`` (see :class:`TeacherImportConfig`).

    Returns:
        A :class:`LoadedEmbeddings` whose ``embeddings`` is (N, D) float32 aligned to its ``ids``.

    Raises:
        DataError: ``source`` missing or unreadable; ``ids`` has duplicates; an id occurs twice in the source; a
            file is not a valid .npy, is not one vector, has a different D than the others or holds NaN/inf;
            an id has no file (``on_missing="error"``: the count and the first ids are named); nothing is left.
    """
    src = Path(source)
    if not src.exists():
        raise DataError(
            f"teacher embeddings {src} not found: set teacher_import.source to the directory or .tar.gz of "
            "<Class>/<video_id>.npy files (a relative path resolves against the working directory: the project root"
            " when DVC runs the stage)."
        )
    if not src.is_dir() and not src.name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"teacher embeddings {src}: expected a directory or one of {list(ARCHIVE_SUFFIXES)}.")
    wanted = {vid: i for i, vid in enumerate(ids)}
    if len(wanted) != len(ids):
        dup = sorted(v for v, n in Counter(ids).items() if n > 1)
        raise DataError(f"clip ids to align must be unique; duplicated: {_first(dup)}. Fix the annotation.")
    found: dict[str, tuple[str, str, np.ndarray]] = {}  # id -> (path, folder, vector)
    seen: dict[str, str] = {}
    n_files = 0
    for vid, folder, where, read in _entries(src):
        n_files += 1
        if vid in seen:
            if vid in wanted:
                raise DataError(
                    f"teacher embeddings: id {vid!r} occurs twice in {src}: {seen[vid]} and {where}; keep one file "
                    "per video id."
                )
            continue
        seen[vid] = where
        if vid in wanted:
            found[vid] = (where, folder, _parse_npy(read(), where))
    if n_files == 0:
        raise DataError(f"teacher embeddings {src} contain no .npy file: expected <Class>/<video_id>.npy files.")
    missing = [v for v in ids if v not in found]
    if missing and on_missing == "error":
        raise DataError(
            f"{len(missing)} of {len(ids)} clips have no teacher embedding in {src}: {_first(missing)}. Provide "
            "<Class>/<id>.npy for them, drop them from the annotation, or set teacher_import.on_missing: skip."
        )
    kept = [v for v in ids if v in found]
    if not kept:
        raise DataError(
            f"none of the {len(ids)} clip ids has an embedding in {src} (it holds {n_files} .npy files, e.g. "
            f"{next(iter(seen))}): the source does not belong to this annotation."
        )
    shapes: dict[tuple[int, ...], list[str]] = {}
    for v in kept:
        shapes.setdefault(found[v][2].shape, []).append(v)
    common = max(shapes, key=lambda s: len(shapes[s]))
    if len(common) != 1:
        v = shapes[common][0]
        raise DataError(
            f"teacher embeddings must be one vector per video (shape (D,) or (1, D)); {len(shapes[common])} file(s) "
            f"have shape {common}, e.g. {found[v][0]}. Pool or regenerate them to one D-vector per video."
        )
    if len(shapes) > 1:
        odd = [v for s, vs in shapes.items() if s != common for v in vs]
        raise DataError(
            f"{len(odd)} teacher embedding(s) differ from the shape {common} of the other {len(shapes[common])}, "
            f"e.g. {found[odd[0]][0]} has shape {found[odd[0]][2].shape}: every video needs a vector of the same D. "
            "Regenerate them."
        )
    emb = np.stack([found[v][2] for v in kept]).astype(np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        names = [found[kept[i]][0] for i in np.flatnonzero(bad)]
        raise DataError(f"{int(bad.sum())} teacher embedding(s) hold NaN or inf values: {_first(names, 3)}. Regenerate them.")
    return LoadedEmbeddings(
        ids=kept, embeddings=emb, missing=missing, folders=[found[v][1] for v in kept], n_unused=len(seen) - len(kept)
    )


# ----------------------------------------------------------------------------------------------- head


class EmbeddingHead(nn.Module):
    """Classification head on frozen embeddings: (B, D) -> logits (B, C).

    The input normalisation (``normalize``) is part of the module (buffers ``mean``/``std`` for ``standardize``),
    so ``head(raw_embeddings)`` gives the logits.
    """

    def __init__(
        self, dim: int, num_classes: int, kind: str = "linear", hidden_dim: int = 512, dropout: float = 0.0,
        normalize: str = "none",
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim, num_classes)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
            )
        else:
            raise ConfigError(f"teacher_import.head = {kind!r}: choose 'linear' or 'mlp'.")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) raw embeddings -> (B, D) head input."""
        if self.normalize == "l2":
            return F.normalize(x, dim=1)
        if self.normalize == "standardize":
            return (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 raw embeddings -> (B, C) logits."""
        return self.net(self.prepare(x))


def train_head(
    embeddings: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, num_classes: int, cfg: TeacherImportConfig
) -> tuple[EmbeddingHead, list[dict[str, float]]]:
    """Train a classification head on the rows ``train_idx`` (CPU, seeded: same inputs -> same head).

    Runs torch single-threaded (restored afterwards): the steps are too small for threads to pay off.

    Args:
        embeddings: (N, D) float32 raw embeddings.
        labels: (N,) int64 class indices in [0, num_classes).
        train_idx: (n,) rows to train on.
        num_classes: C.
        cfg: head, normalisation and optimiser settings.

    Returns:
        (head in eval mode, per-epoch {"loss", "train_top1"} measured on the fly over the epoch).

    Raises:
        DataError: no training row, or a label outside [0, num_classes).
        TrainingError: the loss becomes NaN/inf.
    """
    if len(train_idx) == 0:
        raise DataError("no clip in the 'training' subset has a teacher embedding: nothing to train the head on.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}].")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (B, 512) x (512, C) steps: extra threads only add sync cost (measured 3-12x slower)
    try:
        return _train_head(embeddings, labels, train_idx, num_classes, cfg)
    finally:
        torch.set_num_threads(threads)


def _train_head(
    embeddings: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, num_classes: int, cfg: TeacherImportConfig
) -> tuple[EmbeddingHead, list[dict[str, float]]]:
    torch.manual_seed(cfg.seed)
    x = torch.as_tensor(embeddings[train_idx], dtype=torch.float32)
    y = torch.as_tensor(labels[train_idx], dtype=torch.long)
    head = EmbeddingHead(x.shape[1], num_classes, cfg.head, cfg.hidden_dim, cfg.dropout, cfg.normalize)
    if cfg.normalize == "standardize":
        head.mean.copy_(x.mean(0))
        head.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(len(y), generator=gen)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"teacher head loss is {loss.item()} at epoch {epoch}: lower teacher_import.lr or set "
                    "teacher_import.normalize: standardize."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        sched.step()
        history.append({"loss": loss_sum / len(y), "train_top1": correct / len(y)})
    return head.eval(), history


@torch.no_grad()
def head_logits(head: EmbeddingHead, embeddings: np.ndarray, batch: int = 4096) -> np.ndarray:
    """(N, D) raw embeddings -> (N, C) float32 logits of the head in eval mode."""
    head.eval()
    out = [head(torch.as_tensor(embeddings[i : i + batch], dtype=torch.float32)) for i in range(0, len(embeddings), batch)]
    return torch.cat(out).numpy().astype(np.float32)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits; (N, C), (N,) -> float in [0, 1]."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


# ----------------------------------------------------------------------------------------------- driver


@dataclass
class ImportedTeacher:
    """What :func:`import_teacher` produced.

    Attributes:
        ids: clip id of each row (the requested order, skipped clips left out).
        embeddings: (N, D) float32 raw embeddings.
        logits: (N, C) float32 logits of the trained head, columns in the label order given.
        labels: (N,) int64 class index of each row.
        subsets: (N,) subset of each row.
        metrics: head top-1 per subset (``train_top1``, ``val_top1``, ...), top-5, counts, timing.
        history: per-epoch head training metrics.
        missing: requested ids without an embedding (skipped).
        head: the trained head (eval mode, CPU).
    """

    ids: list[str]
    embeddings: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    subsets: np.ndarray
    metrics: dict[str, float]
    history: list[dict[str, float]]
    missing: list[str]
    head: EmbeddingHead


def _short(subset: str) -> str:
    return SUBSET_SHORT.get(subset, subset)


def import_teacher(
    cfg: TeacherImportConfig,
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    subsets: Sequence[str] | np.ndarray,
    num_classes: int,
    label_names: Sequence[str] | None = None,
    train_subset: str = "training",
) -> ImportedTeacher:
    """Import precomputed embeddings for ``ids``, train a head on ``train_subset``, compute every clip's logits.

    Args:
        cfg: the ``teacher_import`` parameters.
        ids: (N,) clip ids in the row order wanted (feature-cache manifest order, or the annotation's).
        labels: (N,) class index of each clip, in [0, num_classes).
        subsets: (N,) subset of each clip (``training``, ``validation``, ``testing``, ...).
        num_classes: C (the annotation's number of labels; logits have C columns in that order).
        label_names: the C class names; when given, embedding files whose class folder differs from the clip's
            label (case-insensitively) are counted in ``metrics["n_folder_label_mismatch"]``.
        train_subset: the subset the head is trained on.

    Returns:
        An :class:`ImportedTeacher`. ``metrics`` holds ``<s>_top1`` (and ``<s>_top5`` when C >= 5) for every
        subset ``s`` present (``train``, ``val``, ``test`` for the reference names), ``n_<s>``, ``n_clips``,
        ``n_missing``, ``n_unused_embeddings``, ``dim``, ``num_classes``, ``n_folder_label_mismatch``,
        ``head_seconds``, ``final_loss``.

    Raises:
        DataError: see :func:`load_embeddings`; ``ids``/``labels``/``subsets`` of different lengths; no
            training clip.
        TrainingError: the head's loss diverges.
    """
    labels_arr = np.asarray(labels, dtype=np.int64)
    subsets_arr = np.asarray(subsets, dtype=object)
    if not len(ids) == len(labels_arr) == len(subsets_arr):
        raise DataError(f"ids ({len(ids)}), labels ({len(labels_arr)}) and subsets ({len(subsets_arr)}) differ in length.")
    loaded = load_embeddings(cfg.source, ids, cfg.on_missing)
    pos = {v: i for i, v in enumerate(ids)}
    rows = np.array([pos[v] for v in loaded.ids], dtype=np.int64)
    y, sub = labels_arr[rows], subsets_arr[rows]
    train_idx = np.flatnonzero(sub == train_subset)
    if train_idx.size == 0:
        present = sorted(set(subsets_arr.tolist()))
        raise DataError(
            f"no clip with a teacher embedding is in subset {train_subset!r} (subsets: {present}): the head needs "
            "training clips; check the annotation's 'subset' values."
        )
    t0 = time.perf_counter()
    head, history = train_head(loaded.embeddings, y, train_idx, num_classes, cfg)
    logits = head_logits(head, loaded.embeddings)
    metrics: dict[str, float] = {}
    for s in sorted(set(sub.tolist()), key=lambda s: (s != train_subset, s)):
        idx = np.flatnonzero(sub == s)
        metrics[f"{_short(s)}_top1"] = topk_accuracy(logits[idx], y[idx], 1)
        if num_classes >= 5:
            metrics[f"{_short(s)}_top5"] = topk_accuracy(logits[idx], y[idx], 5)
        metrics[f"n_{_short(s)}"] = float(idx.size)
    mismatch = 0
    if label_names is not None:
        names = [str(n).lower() for n in label_names]
        mismatch = sum(bool(f) and f.lower() != names[c] for f, c in zip(loaded.folders, y, strict=True))
    metrics |= {
        "n_clips": float(len(loaded.ids)),
        "n_missing": float(len(loaded.missing)),
        "n_unused_embeddings": float(loaded.n_unused),
        "n_folder_label_mismatch": float(mismatch),
        "dim": float(loaded.embeddings.shape[1]),
        "num_classes": float(num_classes),
        "final_loss": history[-1]["loss"],
        "head_seconds": time.perf_counter() - t0,
    }
    if not all(math.isfinite(v) for k, v in metrics.items() if not k.endswith(("top1", "top5"))):
        raise TrainingError(f"teacher head metrics are not finite: {metrics}")
    return ImportedTeacher(
        ids=list(loaded.ids), embeddings=loaded.embeddings, logits=logits, labels=y, subsets=sub, metrics=metrics,
        history=history, missing=loaded.missing, head=head,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m xmkd.teacher_import --annotation A --source S [--head mlp ...]``: score the head alone.

    Aligns the embeddings to the annotation's clips (no feature cache, nothing written) and prints the metrics of
    :func:`import_teacher` as JSON. Every :class:`TeacherImportConfig` field is a flag (``--weight-decay 0.01``).
    """
    import argparse
    import dataclasses
    import json
    import typing

    from xmkd.cli import run_main
    from xmkd.data.features import load_annotation

    ap = argparse.ArgumentParser(prog="python -m xmkd.teacher_import", description=main.__doc__)
    ap.add_argument("--annotation", required=True, help="annotation JSON (reference format)")
    hints = typing.get_type_hints(TeacherImportConfig)
    for f in dataclasses.fields(TeacherImportConfig):
        tp = hints[f.name]
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=f.default, choices=choices,
                        type=str if choices else tp, required=f.name == "source")
    args = vars(ap.parse_args(argv))

    def run() -> None:
        labels, entries = load_annotation(args.pop("annotation"))
        try:
            cfg = TeacherImportConfig(**args)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        out = import_teacher(cfg, [e[0] for e in entries], [e[3] for e in entries], [e[1] for e in entries],
                             len(labels), label_names=labels)
        print(json.dumps({k: round(v, 6) for k, v in out.metrics.items()}, indent=1))

    run_main(run)


if __name__ == "__main__":
    main()
