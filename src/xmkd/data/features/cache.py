"""Reading the feature cache back: :class:`FeatureCache`, memory-mapped arrays checked against the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xmkd.data.features.annotation import _subset_key
from xmkd.data.features.config import EVAL_FILES, FILES, TRAINING_SUBSETS
from xmkd.errors import DataError


class FeatureCache:
    """Read-only access to a feature cache written by :func:`extract_features`.

    Attributes:
        root: the cache folder.
        frames: uint8 (N, T, H, W, 3) RGB, memory-mapped (read-only).
        logmel: float32 (N, n_mels, n_frames) dB, memory-mapped (read-only).
        manifest: DataFrame with N rows (:data:`MANIFEST_COLUMNS`); row i describes sample i.
        labels: class names; ``manifest.label_index`` indexes this list.
        report: the content of report.json (counts, skipped files, config used).
        eval_clips: K, evaluation clips per video of an evaluation subset (1: no ``eval_frames.npy``).
        eval_frames: uint8 (M, K, T, H, W, 3) RGB, memory-mapped (read-only), the K clips of each row in
            ``eval_rows`` (see :func:`xmkd.data.video.clip_indices`); None when K = 1.
        eval_rows: int64 (M,), ascending cache rows of ``eval_frames`` (the rows of the evaluation subsets);
            None when K = 1. :meth:`eval_positions` maps rows to positions in it.

    Raises:
        DataError: if a file is missing (or only one of ``eval_frames.npy`` / ``eval_rows.npy`` exists), or
            the arrays and manifest disagree in length or shape.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        lacking = [f for f in FILES if not (self.root / f).is_file()]
        if lacking:
            raise DataError(
                f"feature cache {self.root} lacks {lacking}: run the extraction stage "
                "(`dvc repro extract_features`) to (re)build it."
            )
        self.frames: np.ndarray = np.load(self.root / "frames.npy", mmap_mode="r")
        self.logmel: np.ndarray = np.load(self.root / "logmel.npy", mmap_mode="r")
        self.manifest: pd.DataFrame = pd.read_parquet(self.root / "manifest.parquet")
        self.labels: list[str] = json.loads((self.root / "labels.json").read_text())
        self.report: dict[str, Any] = json.loads((self.root / "report.json").read_text())
        n = len(self.manifest)
        if self.frames.shape[0] != n or self.logmel.shape[0] != n:
            raise DataError(
                f"feature cache {self.root} is inconsistent: frames {self.frames.shape}, logmel "
                f"{self.logmel.shape}, manifest {n} rows: rebuild it with `dvc repro -f extract_features`."
            )
        self.eval_frames: np.ndarray | None = None
        self.eval_rows: np.ndarray | None = None
        self.eval_clips = 1
        present = [f for f in EVAL_FILES if (self.root / f).is_file()]
        if present:
            rebuild = "rebuild it with `dvc repro -f extract_features`"
            if len(present) != len(EVAL_FILES):
                raise DataError(
                    f"feature cache {self.root} has {present} but not all of {list(EVAL_FILES)}: {rebuild}."
                )
            ef = np.load(self.root / "eval_frames.npy", mmap_mode="r")
            er = np.load(self.root / "eval_rows.npy")
            if (
                ef.ndim != 6 or ef.shape[0] != er.shape[0] or ef.shape[2:] != self.frames.shape[1:]
                or er.ndim != 1 or er.size == 0 or er.min() < 0 or er.max() >= n or np.any(np.diff(er) <= 0)
            ):
                raise DataError(
                    f"feature cache {self.root} is inconsistent: eval_frames {ef.shape}, eval_rows {er.shape}, "
                    f"frames {self.frames.shape}: {rebuild}."
                )
            self.eval_frames, self.eval_rows, self.eval_clips = ef, er.astype(np.int64), int(ef.shape[1])

    def __len__(self) -> int:
        """N, the number of samples."""
        return len(self.manifest)

    @property
    def num_classes(self) -> int:
        """Number of classes in the annotation (``len(labels)``), present in the cache or not."""
        return len(self.labels)

    @property
    def subsets(self) -> list[str]:
        """Subsets present, in :data:`SUBSET_ORDER`."""
        return sorted(set(self.manifest["subset"]), key=_subset_key)

    def indices(self, subset: str) -> np.ndarray:
        """(n,) int64 row indices of ``subset``, ascending.

        Raises:
            DataError: if no sample belongs to ``subset`` (the message lists the subsets present).
        """
        idx = np.flatnonzero((self.manifest["subset"] == subset).to_numpy()).astype(np.int64)
        if idx.size == 0:
            raise DataError(
                f"feature cache {self.root} has no sample in subset {subset!r}; subsets present: {self.subsets}. "
                "Use one of those (or fix the annotation's 'subset' values and re-extract)."
            )
        return idx

    def targets(self) -> np.ndarray:
        """(N,) int64 class indices (``manifest.label_index``)."""
        return self.manifest["label_index"].to_numpy(dtype=np.int64)

    def eval_positions(self, rows: np.ndarray) -> np.ndarray:
        """(n,) int64 positions in ``eval_frames`` / ``eval_rows`` of the cache ``rows`` (n,).

        Raises:
            DataError: if the cache has no evaluation clips (``eval_clips == 1``) or a row has none (a row of
                a training subset).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self.eval_rows is None:
            raise DataError(
                f"feature cache {self.root} has no evaluation clips: set features.eval_clips > 1 in params.yaml "
                "and re-run `dvc repro extract_features`."
            )
        pos = np.searchsorted(self.eval_rows, rows)
        ok = (pos < self.eval_rows.size) & (self.eval_rows[np.minimum(pos, self.eval_rows.size - 1)] == rows)
        if not ok.all():
            bad = rows[~ok][:5].tolist()
            raise DataError(
                f"feature cache {self.root}: rows {bad} have no evaluation clips (only rows outside "
                f"{list(TRAINING_SUBSETS)} have them): evaluate on an evaluation subset."
            )
        return pos.astype(np.int64)
