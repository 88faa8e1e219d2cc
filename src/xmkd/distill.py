"""One distillation run (method x seed) and the loading of what it needs.

Used by ``stages/distill.py`` (training) and ``stages/evaluate.py`` (inference on saved weights).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmkd.data.features import FeatureCache
from xmkd.errors import DataError
from xmkd.methods import Dims, DistillMethod, build_method
from xmkd.methods.base import UNLABELLED
from xmkd.models.student import build_student
from xmkd.parallel import SingleProcess
from xmkd.runs import RunConfig
from xmkd.train import ClipDataset, make_loader, resolve_device, seed_everything, train


@dataclass
class TeacherOutputs:
    """Frozen teacher outputs for every row of the feature cache: embedding (N, D), logits (N, C)."""

    embedding: np.ndarray
    logits: np.ndarray

    @classmethod
    def load(cls, root: Path, cache: FeatureCache) -> TeacherOutputs:
        """Load ``embeddings.npy``/``logits.npy``/``ids.txt`` from ``root`` and check they match the cache.

        Raises:
            DataError: files missing, or rows that do not match the feature cache's clips.
        """
        files = [root / f for f in ("embeddings.npy", "logits.npy", "ids.txt")]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise DataError(
                f"teacher outputs missing: {missing}. Run the stage that writes {root} first "
                "(`dvc repro embed_teacher`, or `embed_video_teacher` for the reverse direction)."
            )
        ids = (root / "ids.txt").read_text().split("\n")[:-1]
        if ids != list(cache.manifest["id"]):
            raise DataError(
                f"teacher outputs in {root} do not match the clips of the feature cache {cache.root} "
                "(different ids or order): re-run the stage that writes it (`dvc repro`)."
            )
        return cls(np.load(files[0]), np.load(files[1]))


def build_models(
    rc: RunConfig, num_classes: int, teacher_dim: int, num_train: int = 0
) -> tuple[torch.nn.Module, DistillMethod]:
    """Student and method (with its heads) for a run config (random init; seed first)."""
    student = build_student(rc.student, num_classes)
    dims = Dims(rc.student.embed_dim, teacher_dim, num_classes, num_train)
    return student, build_method(rc.method, dims, rc.sections)


def few_labels(labels: np.ndarray, train_idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The labels the student trains with: ``labels`` with all but a per-class share of the training rows
    set to :data:`~xmkd.methods.base.UNLABELLED` (the few-labels regime, ``train.label_fraction``).

    Args:
        labels: (N,) int64 class of every cache row; train_idx: rows of the training subset.
        fraction: in (0, 1]; each class keeps ``max(1, round(fraction * n_c))`` labelled training clips.
        seed: seed of the (per-class, uniformly random) choice; the same for every run and seed.

    Returns:
        (N,) int64, a copy; rows outside ``train_idx`` keep their labels (validation and test are evaluated
        with their labels). ``fraction == 1`` returns the labels unchanged.
    """
    out = np.asarray(labels, dtype=np.int64).copy()
    if fraction >= 1:
        return out
    rng = np.random.default_rng(seed)
    train_idx = np.sort(np.asarray(train_idx))
    for c in np.unique(out[train_idx]):
        rows = train_idx[out[train_idx] == c]
        keep = max(1, int(np.floor(fraction * len(rows) + 0.5)))
        drop = rng.permutation(rows)[keep:]
        out[drop] = UNLABELLED
    return out


def run_distillation(
    rc: RunConfig,
    seed: int,
    cache: FeatureCache,
    teacher: TeacherOutputs,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    inputs: np.ndarray | None = None,
    strategy: SingleProcess | None = None,
) -> tuple[torch.nn.Module, DistillMethod, list[dict[str, float]]]:
    """Train one student with ``rc.method`` and ``seed`` on the cache's ``training`` subset.

    The ``validation`` subset (if present) is evaluated after every epoch; the test subset is not
    touched here. ``inputs`` (N, ...) are the student's inputs for every cache row (default: the
    cache's uint8 frames; the reverse direction passes log-mels). ``torch.set_num_threads`` is the
    caller's business. ``on_epoch_end``: the loop's per-epoch hook (:func:`xmkd.train.train`). ``strategy``: one
    process (default), or this process's place in a DDP job (:class:`xmkd.parallel.DataParallel`, group joined):
    the models are built from ``seed`` on every rank (equal initial weights), the training clips are split over the
    ranks (``strategy.train_loader``) and ranks > 0 then reseed (``strategy.reseed``).

    Returns:
        (student, method, per-epoch history).
    """
    seed_everything(seed)
    device = resolve_device(rc.train.device)
    labels = cache.targets()
    train_idx = cache.indices("training")
    student, method = build_models(rc, cache.num_classes, teacher.embedding.shape[1], len(train_idx))
    seen = few_labels(labels, train_idx, rc.train.label_fraction, rc.train.label_seed)  # = labels when all are kept

    def subset(name: str) -> ClipDataset:
        y = seen if name == "training" else labels
        return ClipDataset(cache.frames if inputs is None else inputs, y, teacher.embedding, teacher.logits, cache.indices(name))

    strategy = strategy or SingleProcess()
    train_loader = strategy.train_loader(subset("training"), rc.train.batch_size, rc.train.num_workers, seed, device)
    strategy.reseed(seed)  # after the models are built (equal on every rank): own RNG stream on DDP ranks > 0
    val_loader = (
        make_loader(subset("validation"), rc.train, shuffle=False, seed=seed, device=device)
        if "validation" in cache.subsets
        else None
    )
    history = train(student, method, train_loader, val_loader, rc.train, device, on_epoch_end, strategy,
                    where=f"run '{rc.name}' seed {seed}")
    return student.cpu(), method.cpu(), history


def save_checkpoint(path: Path, student: torch.nn.Module, method: DistillMethod, meta: dict[str, Any]) -> None:
    """Write {student, method state_dicts, meta} atomically (temp file + rename): no partial files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"student": student.state_dict(), "method": method.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, rc: RunConfig) -> tuple[torch.nn.Module, DistillMethod, dict[str, Any]]:
    """Rebuild student and method from :func:`save_checkpoint` output.

    Raises:
        DataError: the checkpoint is missing.
    """
    if not path.exists():
        raise DataError(f"checkpoint {path} not found: run the matching distill stage first (`dvc repro`).")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    student, method = build_models(rc, meta["num_classes"], meta["teacher_dim"], meta.get("num_train", 0))
    student.load_state_dict(ckpt["student"])
    method.load_state_dict(ckpt["method"])
    return student.eval(), method.eval(), meta
