"""The decoded raw sources (:class:`RawData`, read from ``data/raw``) and the per-split pools of FSDD recordings
and ESC-50 backgrounds the clips draw from."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmkd.data.benchmark.config import NUM_CLASSES
from xmkd.data.mnist import read_idx_digits, read_mnist_csv
from xmkd.data.sources.layout import (
    ESC50_AUDIO_DIR,
    ESC50_META,
    FSDD_DIR,
    MNIST_5K,
    MNIST_IMAGES,
    MNIST_LABELS,
    SOURCES_FILE,
)
from xmkd.data.sources.manifest import load_manifest, sha256_file
from xmkd.data.sources.mirror import check_raw
from xmkd.data.sources.wav import read_wav
from xmkd.errors import DataError

_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass
class RawData:
    """The decoded raw sources.

    Attributes:
        mnist: origin ("train"/"test") -> (images (N, 28, 28) uint8, labels (N,) int64).
        fsdd: file name -> mono waveform (S,) float32 at ``sample_rate``.
        esc50: file name -> mono waveform (S,) float32 at ``sample_rate`` (5 s clips).
        esc50_meta: file name -> (ESC-50 class target, category name).
        sample_rate: Hz of the waveforms.
    """

    mnist: dict[str, tuple[np.ndarray, np.ndarray]]
    fsdd: dict[str, np.ndarray]
    esc50: dict[str, np.ndarray]
    esc50_meta: dict[str, tuple[int, str]]
    sample_rate: int
    sources_sha256: str | None = None


def _load_wave(path: Path, rate: int) -> np.ndarray:
    x, file_rate = read_wav(path, str(path))
    mono = x.mean(axis=0) if x.shape[0] > 1 else x[0]
    if file_rate != rate:
        import torch
        import torchaudio

        mono = torchaudio.functional.resample(torch.from_numpy(mono), file_rate, rate).numpy()
    return mono.astype(np.float32)


def load_raw(raw_dir: str | os.PathLike[str], sample_rate: int = 8000) -> RawData:
    """Read ``data/raw`` (or a mirror with the same layout) into memory (~0.1 GB, ~2 s).

    Args:
        raw_dir: folder with the layout described in :mod:`xmkd.data.sources`.
        sample_rate: Hz; audio at another rate is resampled (torchaudio) on load.

    Raises:
        DataError: missing files (run the sources stage), unreadable files, or an ESC-50 class
            without exactly 8 fold-4 clips.
    """
    root = Path(raw_dir)
    check_raw(root)
    manifest = load_manifest()  # only the verified files: stray extra files never enter the pools
    mnist = {
        "train": read_mnist_csv(root / MNIST_5K),
        "test": read_idx_digits(root / MNIST_IMAGES, root / MNIST_LABELS),
    }
    fsdd = {Path(rel).name: _load_wave(root / rel, sample_rate) for rel in manifest.group(FSDD_DIR + "/")}
    meta: dict[str, tuple[int, str]] = {}
    with open(root / ESC50_META, newline="") as fh:
        for row in csv.DictReader(fh):
            if f"{ESC50_AUDIO_DIR}/{row['filename']}" in manifest.files:
                meta[row["filename"]] = (int(row["target"]), row["category"])
    esc50 = {name: _load_wave(root / ESC50_AUDIO_DIR / name, sample_rate) for name in sorted(meta)}
    sha = None
    if (root / SOURCES_FILE).is_file():
        sha = sha256_file(root / SOURCES_FILE)
    return RawData(mnist=mnist, fsdd=fsdd, esc50=esc50, esc50_meta=meta, sample_rate=sample_rate, sources_sha256=sha)


def fsdd_pool(raw: RawData, takes: range) -> dict[int, list[str]]:
    """FSDD recordings per digit whose take number is in ``takes`` (sorted by file name).

    The official split: ``range(0, 5)`` = test, ``range(5, 50)`` = train.
    """
    pool: dict[int, list[str]] = {d: [] for d in range(NUM_CLASSES)}
    for name in sorted(raw.fsdd):
        m = _FSDD_NAME.match(name)
        if m and int(m.group(3)) in takes:
            pool[int(m.group(1))].append(name)
    for d, names in pool.items():
        if not names:
            raise DataError(
                f"no FSDD recording of digit {d} with take in {takes.start}-{takes.stop - 1}; "
                "data/raw/fsdd is incomplete, re-run the sources stage."
            )
    return pool


def esc50_pool(raw: RawData, which: str) -> list[str]:
    """ESC-50 background pool: per class, its 8 clips sorted by name; ``"trainval"`` = first 6, ``"test"`` = last 2.

    Raises:
        DataError: a class without exactly 8 clips.
    """
    by_class: dict[int, list[str]] = {}
    for name, (target, _) in raw.esc50_meta.items():
        by_class.setdefault(target, []).append(name)
    pool: list[str] = []
    for target in sorted(by_class):
        names = sorted(by_class[target])
        if len(names) != 8:
            raise DataError(
                f"ESC-50 class {target} has {len(names)} fold-4 clips, expected 8; re-run the sources stage."
            )
        pool += names[:6] if which == "trainval" else names[6:]
    return sorted(pool)
