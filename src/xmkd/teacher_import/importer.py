"""The import: :func:`import_teacher` aligns the embeddings, trains the head on the training subset and scores every
subset; :func:`main` is the command line that scores the head alone (``python -m xmkd.teacher_import``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from xmkd.errors import ConfigError, DataError, TrainingError
from xmkd.teacher_import.config import TeacherImportConfig
from xmkd.teacher_import.embeddings import load_embeddings
from xmkd.teacher_import.head import EmbeddingHead, head_logits, topk_accuracy, train_head

#: Short names of the reference subsets in metric keys (``val_top1``); other subsets keep their name.
SUBSET_SHORT: dict[str, str] = {"training": "train", "validation": "val", "testing": "test"}


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
