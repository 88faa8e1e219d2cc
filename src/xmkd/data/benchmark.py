"""Stage 2: build the default audio-visual digit-video benchmark (``data/benchmark/``).

Each clip is a real MP4 (H.264 video + AAC sound) of ``frames / fps`` seconds:

* **Video** - a real MNIST digit moving inside a black ``size x size`` frame (Moving MNIST,
  Srivastava et al. 2015), degraded AV-MNIST style by keeping only ``pca_keep`` principal
  components (Vielzeuf et al. 2018). Training-origin digits (``mnist_5k.csv.gz``, 500 per class)
  make the training and validation clips, test-origin digits (first 8,000 of t10k) the test clips;
  every clip of a split uses a distinct image.
* **Audio** - ``sample_rate`` Hz mono. A *clean* clip has a spoken FSDD recording of the same digit
  (official split: takes 0-4 for test clips, 5-49 for training/validation clips) mixed with ESC-50
  background (per class, the first 6 of its 8 fold-4 clips by name for training/validation, the
  last 2 for test) at a seeded SNR. For an exact, seeded fraction ``irrelevant_rate`` of the clips the
  sound is *irrelevant*: either *mismatched* (another digit is spoken) or *background* (ESC-50 only).

Recipe details (the exact algorithm; recorded in ``recipe.json``):

* Seeding: every random choice comes from ``numpy.random.SeedSequence(seed, spawn_key=...)``:
  ``(split, 0, i)`` for clip ``i`` of a split (split codes train 0, val 1, test 2), ``(split, 1, b)``
  for block ``b`` (clips ``10b .. 10b+9``) and ``(3, origin, digit)`` for the order in which a
  class's MNIST images are used (origin 0 = train, 1 = test). Nothing depends on how many clips
  are built, so a subset (smaller ``n_*``) reproduces the first clips of a full
  build exactly - except the *pixels* of the videos, which depend on the PCA fitted on the
  training split's digits (see below).
* Labels: each block of 10 consecutive clips holds every digit once, in a seeded order, so the
  splits are exactly balanced (``n_*`` must be multiples of 10).
* Digits: the k-th clip of digit ``d`` in a split takes image ``k`` of the seeded permutation of the
  class-``d`` images of its origin (validation clips take the permutation from its end, so train
  and validation images never overlap).
* Irrelevant clips: block ``b`` has ``R(10 r (b+1)) - R(10 r b)`` of them (``r`` = irrelevant_rate,
  ``R`` = round half up), so every split has exactly ``R(r n)``; of the block's irrelevant clips
  ``R(s I') - R(s I)`` (``I``, ``I'`` = irrelevant clips before/after the block, ``s`` =
  mismatch_share) are mismatched, so exactly ``R(s R(r n))`` per split. They go to the digits with
  the fewest irrelevant clips so far and, among those, the ones furthest below their mismatched
  share (ties broken by seeded draws), so every digit gets the same share to within a clip.
* Video: PCA (scikit-learn, ``svd_solver="full"``) fitted on the training split's digits (28x28,
  0-255), every digit reconstructed from ``pca_keep`` components (0 = no PCA) and clipped to
  [0, 255], resized to ``digit_size`` (antialiased bilinear, torchvision, float64), snapped to a
  1/1024 grey-level grid (so that no CPU's last-bit differences change a pixel), then moved: start
  position uniform in ``[0, size - digit_size]^2``, direction uniform in [0, 2 pi), speed uniform in
  ``speed`` px/frame, reflected at the walls (positions rounded to whole px); composited on black
  (max), plus optional Gaussian pixel noise (std ``pixel_noise``), uint8 gray replicated to RGB.
* Audio: window of ``S = round(sample_rate * frames / fps)`` samples. Speech longer than the window
  is cut to its window-length segment of maximum energy, shorter speech is placed at a seeded
  offset. Background: a seeded ESC-50 clip of the split's pool; up to 5 seeded window-length
  segments are tried and the first whose RMS exceeds ``BACKGROUND_RMS_FLOOR`` is kept (else the
  clip's loudest window). It is scaled so that speech power (over the speech's own samples) /
  background power = ``snr_db`` (uniform in the range). The mixture (or the background alone) is
  normalised to RMS ``TARGET_RMS`` and clipped to [-1, 1].
* Encoding: PyAV, libx264 (yuv420p, crf ``video_crf``, ``fps``, one thread, ``cpu-independent=1``,
  frames converted to YUV bit-exactly) and FLAC (lossless 16-bit mono; ``audio_codec: aac`` for
  ffmpeg's AAC at ``AAC_BIT_RATE``), in a pool of worker processes; each file depends only on its
  clip, not on the worker count, the process or the x86-64 CPU (:mod:`xmkd.data.codec`).

Outputs: ``videos/<label>/<id>.mp4``, ``annotation.json`` (the reference implementation's format),
``provenance.parquet`` (one row per clip, see :data:`PROVENANCE_SCHEMA`), ``recipe.json``.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmkd.config import parse_section
from xmkd.data import codec
from xmkd.data import sources as src
from xmkd.data.mnist import read_idx_digits, read_mnist_csv
from xmkd.errors import ConfigError, DataError

TARGET_RMS = 0.05  #: RMS of every clip's sound track (full scale = 1)
BACKGROUND_RMS_FLOOR = 1e-3  #: RMS below which a background segment counts as silent (-60 dBFS)
BACKGROUND_TRIES = 5  #: seeded background offsets tried before falling back to the loudest window
AAC_BIT_RATE = 32_000  #: bit/s of the AAC sound track
DIGIT_GRID = 1024  #: prepared digits are multiples of 1/DIGIT_GRID grey level (see prepare_digits)
MAX_IN_FLIGHT = 256  #: rendered clips queued for the encoder pool at most
NUM_CLASSES = 10

#: split name -> (seed code, annotation subset, MNIST origin, FSDD takes, ESC-50 pool)
SPLITS: dict[str, tuple[int, str, str, range, str]] = {
    "train": (0, "training", "train", range(5, 50), "trainval"),
    "val": (1, "validation", "train", range(5, 50), "trainval"),
    "test": (2, "testing", "test", range(0, 5), "test"),
}
CONDITIONS = ("clean", "mismatched", "background")

_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class BenchmarkConfig:
    """The ``benchmark`` section of params.yaml.

    Attributes:
        seed: root seed of every random choice.
        n_train / n_val / n_test: clips per split, multiples of 10 (balanced over the digits).
        frames: video frames per clip.
        size: px, frame height = width.
        fps: frames per second; a clip lasts ``frames / fps`` s.
        digit_size: px, side of the resized MNIST digit (<= size).
        speed: [low, high] px/frame, range of the digit's speed.
        pca_keep: PCA components kept (0 = no PCA degradation).
        pixel_noise: std of additive Gaussian pixel noise (0-255 scale), 0 = none.
        snr_db: [low, high] dB, range of the speech-to-background SNR.
        irrelevant_rate: fraction of each split's clips whose sound is irrelevant.
        mismatch_share: share of the irrelevant clips that are 'mismatched' (others 'background').
        sample_rate: Hz of the sound track.
        video_crf: libx264 constant rate factor (0-51, lower = better).
        audio_codec: ``flac`` (lossless 16-bit: the samples decode bit-exactly on every CPU) or
            ``aac`` (lossy, :data:`AAC_BIT_RATE`; its floating-point decoder differs by ~1 ulp between CPUs).
    """

    seed: int = 0
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    frames: int = 8
    size: int = 32
    fps: int = 8
    digit_size: int = 24
    speed: tuple[float, float] = (1.0, 2.5)
    pca_keep: int = 16
    pixel_noise: float = 0.0
    snr_db: tuple[float, float] = (0.0, 10.0)
    irrelevant_rate: float = 0.3
    mismatch_share: float = 0.5
    sample_rate: int = 8000
    video_crf: int = 18
    audio_codec: str = "flac"

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            n = getattr(self, name)
            if n <= 0 or n % NUM_CLASSES:
                raise ValueError(f"benchmark.{name} must be a positive multiple of 10 (balanced digits), got {n}")
        for name in ("speed", "snr_db"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"benchmark.{name} must be [low, high] with low <= high, got {list(lo_hi)}")
        if self.speed[0] < 0:
            raise ValueError(f"benchmark.speed must be >= 0 px/frame, got {list(self.speed)}")
        if not 1 <= self.digit_size <= self.size:
            raise ValueError(f"benchmark.digit_size must be in [1, size={self.size}] px, got {self.digit_size}")
        if self.size % 2:
            raise ValueError(f"benchmark.size must be even (H.264 yuv420p), got {self.size}")
        if self.frames < 1 or self.fps < 1 or self.sample_rate < 1000:
            raise ValueError("benchmark.frames and fps must be >= 1 and sample_rate >= 1000 Hz")
        if not 0 <= self.pca_keep <= 784:
            raise ValueError(f"benchmark.pca_keep must be in [0, 784], got {self.pca_keep}")
        if self.pca_keep > self.n_train:
            raise ValueError(
                f"benchmark.pca_keep={self.pca_keep} exceeds the {self.n_train} training digits it is fit on"
            )
        if not (0 <= self.irrelevant_rate <= 1 and 0 <= self.mismatch_share <= 1):
            raise ValueError("benchmark.irrelevant_rate and mismatch_share must be in [0, 1]")
        if self.pixel_noise < 0:
            raise ValueError(f"benchmark.pixel_noise must be >= 0, got {self.pixel_noise}")
        if not 0 <= self.video_crf <= 51:
            raise ValueError(f"benchmark.video_crf must be in [0, 51], got {self.video_crf}")
        if self.audio_codec not in ("flac", "aac"):
            raise ValueError(f"benchmark.audio_codec must be 'flac' (lossless) or 'aac', got {self.audio_codec!r}")

    @property
    def n_samples(self) -> int:
        """Samples per sound track: ``round(sample_rate * frames / fps)``."""
        return int(round(self.sample_rate * self.frames / self.fps))

    def n_clips(self, split: str) -> int:
        """Number of clips of ``split`` (``train``, ``val`` or ``test``)."""
        return int(getattr(self, f"n_{split}"))


def config_from_params(params: dict[str, Any]) -> BenchmarkConfig:
    """Parse the ``benchmark`` section of the params dict.

    Raises:
        ConfigError: unknown/mistyped key or invalid value.
    """
    return parse_section(BenchmarkConfig, params.get("benchmark"), "benchmark")


# --- raw data --------------------------------------------------------------------------------


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
    x, file_rate = src.read_wav(path, str(path))
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
    src.check_raw(root)
    manifest = src.load_manifest()  # only the verified files: stray extra files never enter the pools
    mnist = {
        "train": read_mnist_csv(root / src.MNIST_5K),
        "test": read_idx_digits(root / src.MNIST_IMAGES, root / src.MNIST_LABELS),
    }
    fsdd = {Path(rel).name: _load_wave(root / rel, sample_rate) for rel in manifest.group(src.FSDD_DIR + "/")}
    meta: dict[str, tuple[int, str]] = {}
    with open(root / src.ESC50_META, newline="") as fh:
        for row in csv.DictReader(fh):
            if f"{src.ESC50_AUDIO_DIR}/{row['filename']}" in manifest.files:
                meta[row["filename"]] = (int(row["target"]), row["category"])
    esc50 = {name: _load_wave(root / src.ESC50_AUDIO_DIR / name, sample_rate) for name in sorted(meta)}
    sha = None
    if (root / src.SOURCES_FILE).is_file():
        sha = src.sha256_file(root / src.SOURCES_FILE)
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


# --- planning ----------------------------------------------------------------------------------


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (``R`` in the recipe); robust to float noise."""
    return int(math.floor(x + 0.5 + 1e-9))


@dataclass(frozen=True)
class ClipPlan:
    """Everything that defines one clip (one provenance row).

    Positions in px (x = column, y = row of the digit's top-left corner), velocities in px/frame,
    offsets in samples at the benchmark's sample rate. ``-1`` / ``None`` / NaN mark "not used".
    """

    id: str
    split: str
    subset: str
    label: int
    mnist_origin: str
    mnist_index: int
    audio_condition: str
    spoken_digit: int
    fsdd_file: str | None
    fsdd_crop_start: int
    speech_offset: int
    esc50_file: str
    esc50_category: str
    esc50_offset: int
    snr_db: float
    start_x: float
    start_y: float
    velocity_x: float
    velocity_y: float
    noise_seed: int = field(repr=False, default=0)

    @property
    def path(self) -> str:
        """Video path relative to the benchmark folder: ``videos/<label>/<id>.mp4``."""
        return f"videos/{self.label}/{self.id}.mp4"


def _seq(cfg: BenchmarkConfig, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))


def _blocks(cfg: BenchmarkConfig, split: str) -> list[tuple[list[int], dict[int, str]]]:
    """Per block of 10 clips: (labels in clip order, digit -> audio condition).

    Block ``b`` has ``R(10 r (b+1)) - R(10 r b)`` irrelevant clips and, of those,
    ``R(s I') - R(s I)`` mismatched ones (``I``/``I'``: irrelevant clips before/after the block), so
    every split of ``n`` clips has exactly ``R(r n)`` irrelevant and ``R(s R(r n))`` mismatched clips.
    Which digits they go to is a greedy balance with seeded tie-breaks: the digits with the fewest
    irrelevant clips so far, then, among those, the digits furthest below their mismatched share.
    Per-digit counts therefore stay within about one clip of each other, with no periodic pattern
    tying a digit to a condition.
    """
    code = SPLITS[split][0]
    rate, share = cfg.irrelevant_rate, cfg.mismatch_share
    n_irr = np.zeros(NUM_CLASSES, dtype=np.int64)
    n_mis = np.zeros(NUM_CLASSES, dtype=np.int64)
    blocks = []
    for b in range(cfg.n_clips(split) // NUM_CLASSES):
        rng = _seq(cfg, code, 1, b)
        labels = [int(d) for d in rng.permutation(NUM_CLASSES)]
        tie_irr, tie_mis = rng.random(NUM_CLASSES), rng.random(NUM_CLASSES)
        before, after = round_half_up(rate * NUM_CLASSES * b), round_half_up(rate * NUM_CLASSES * (b + 1))
        k_mis = round_half_up(share * after) - round_half_up(share * before)
        irrelevant = sorted(range(NUM_CLASSES), key=lambda d: (n_irr[d], tie_irr[d]))[: after - before]
        n_irr[irrelevant] += 1
        mismatched = sorted(irrelevant, key=lambda d: (n_mis[d] - share * n_irr[d], tie_mis[d]))[:k_mis]
        n_mis[mismatched] += 1
        cond = {d: "clean" for d in range(NUM_CLASSES)}
        cond.update({d: ("mismatched" if d in mismatched else "background") for d in irrelevant})
        blocks.append((labels, cond))
    return blocks


def _max_energy_start(x: np.ndarray, win: int) -> int:
    """Start of the ``win``-sample window of maximum energy in ``x`` (first one on ties)."""
    c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    return int(np.argmax(c[win:] - c[:-win]))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _background_start(x: np.ndarray, win: int, tries: np.ndarray) -> int:
    if x.shape[0] <= win:
        return 0
    for u in tries:
        start = int(u * (x.shape[0] - win + 1))
        if _rms(x[start : start + win]) > BACKGROUND_RMS_FLOOR:
            return start
    return _max_energy_start(x, win)


def plan_split(cfg: BenchmarkConfig, split: str, raw: RawData) -> list[ClipPlan]:
    """Plan every clip of ``split`` (labels, images, sounds, offsets, motion) - no rendering.

    Raises:
        ConfigError: if the split needs more distinct MNIST images per class than exist.
    """
    code, subset, origin, takes, esc_which = SPLITS[split]
    _, mnist_labels = raw.mnist[origin]
    images_of = {}
    for d in range(NUM_CLASSES):
        idx = np.flatnonzero(mnist_labels == d)
        images_of[d] = _seq(cfg, 3, 0 if origin == "train" else 1, d).permutation(idx)
    per_class = cfg.n_clips(split) // NUM_CLASSES
    need = per_class + (
        cfg.n_val // NUM_CLASSES if split == "train" else cfg.n_train // NUM_CLASSES if split == "val" else 0
    )
    have = min(len(v) for v in images_of.values())
    if need > have:
        raise ConfigError(
            f"benchmark: {split} clips need {need} distinct MNIST images per class ({origin} origin"
            f"{', shared by train and val' if origin == 'train' else ''}) but only {have} exist; lower n_{split}."
        )
    speech_pool = fsdd_pool(raw, takes)
    background_pool = esc50_pool(raw, esc_which)
    win, lim = cfg.n_samples, cfg.size - cfg.digit_size
    plans = []
    for b, (labels, cond) in enumerate(_blocks(cfg, split)):
        for j, label in enumerate(labels):
            i = b * NUM_CLASSES + j
            rng = _seq(cfg, code, 0, i)
            # fixed draw order, whatever the condition, so one clip's choices never shift another's
            x0, y0 = rng.uniform(0.0, lim, size=2)
            angle = rng.uniform(0.0, 2.0 * math.pi)
            speed = rng.uniform(*cfg.speed)
            other = (label + int(rng.integers(1, NUM_CLASSES))) % NUM_CLASSES
            u_speech, u_offset, u_background = rng.random(3)
            tries = rng.random(BACKGROUND_TRIES)
            snr = float(rng.uniform(*cfg.snr_db))
            noise_seed = int(rng.integers(2**62))
            condition = cond[label]
            k = b if split != "val" else len(images_of[label]) - 1 - b
            esc = background_pool[int(u_background * len(background_pool))]
            spoken, fsdd_file, crop, offset = -1, None, -1, -1
            if condition != "background":
                spoken = label if condition == "clean" else other
                names = speech_pool[spoken]
                fsdd_file = names[int(u_speech * len(names))]
                rec = raw.fsdd[fsdd_file]
                if rec.shape[0] > win:
                    crop, offset = _max_energy_start(rec, win), 0
                else:
                    crop, offset = 0, int(u_offset * (win - rec.shape[0] + 1))
            plans.append(
                ClipPlan(
                    id=f"{split}_{i:05d}",
                    split=split,
                    subset=subset,
                    label=label,
                    mnist_origin=origin,
                    mnist_index=int(images_of[label][k]),
                    audio_condition=condition,
                    spoken_digit=spoken,
                    fsdd_file=fsdd_file,
                    fsdd_crop_start=crop,
                    speech_offset=offset,
                    esc50_file=esc,
                    esc50_category=raw.esc50_meta[esc][1],
                    esc50_offset=_background_start(raw.esc50[esc], win, tries),
                    snr_db=snr if condition != "background" else float("nan"),
                    start_x=float(x0),
                    start_y=float(y0),
                    velocity_x=float(speed * math.cos(angle)),
                    velocity_y=float(speed * math.sin(angle)),
                    noise_seed=noise_seed,
                )
            )
    return plans


# --- rendering -------------------------------------------------------------------------------


def render_audio(plan: ClipPlan, raw: RawData, n_samples: int) -> np.ndarray:
    """The clip's sound track, (n_samples,) float32 in [-1, 1] with RMS :data:`TARGET_RMS`."""
    bg = raw.esc50[plan.esc50_file].astype(np.float64)[plan.esc50_offset : plan.esc50_offset + n_samples]
    bg = np.pad(bg, (0, n_samples - bg.shape[0]))
    if plan.fsdd_file is None:
        mix = bg
    else:
        rec = raw.fsdd[plan.fsdd_file].astype(np.float64)
        seg = rec[plan.fsdd_crop_start : plan.fsdd_crop_start + n_samples]
        mix = np.zeros(n_samples)
        mix[plan.speech_offset : plan.speech_offset + seg.shape[0]] = seg
        p_speech, p_bg = _rms(seg) ** 2, _rms(bg) ** 2
        gain = math.sqrt(p_speech / (p_bg * 10.0 ** (plan.snr_db / 10.0))) if p_bg > 0 else 0.0
        mix = mix + gain * bg
    level = _rms(mix)
    if level > 0:
        mix = mix * (TARGET_RMS / level)
    return np.clip(mix, -1.0, 1.0).astype(np.float32)


def trajectory(plan: ClipPlan, cfg: BenchmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left positions (x, y), each (frames,), of the digit: linear motion reflected at the walls."""
    lim = cfg.size - cfg.digit_size
    t = np.arange(cfg.frames, dtype=np.float64)

    def reflect(p: np.ndarray) -> np.ndarray:
        if lim == 0:
            return np.zeros_like(p)
        return lim - np.abs(np.mod(p, 2 * lim) - lim)

    xs = reflect(plan.start_x + plan.velocity_x * t)
    ys = reflect(plan.start_y + plan.velocity_y * t)
    return np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)


def render_video(plan: ClipPlan, digit: np.ndarray, cfg: BenchmarkConfig) -> np.ndarray:
    """The clip's frames, (frames, size, size) uint8 gray, from the (digit_size, digit_size) float digit."""
    canvas = np.zeros((cfg.frames, cfg.size, cfg.size), dtype=np.float32)
    xs, ys = trajectory(plan, cfg)
    d = cfg.digit_size
    for t, (x, y) in enumerate(zip(xs, ys, strict=True)):
        canvas[t, y : y + d, x : x + d] = np.maximum(canvas[t, y : y + d, x : x + d], digit)
    if cfg.pixel_noise > 0:
        canvas += np.random.default_rng(plan.noise_seed).normal(0.0, cfg.pixel_noise, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def prepare_digits(
    cfg: BenchmarkConfig, raw: RawData, plans: list[ClipPlan]
) -> tuple[dict[tuple[str, int], np.ndarray], list[float]]:
    """PCA-degrade and resize every digit the plans use.

    The PCA is fitted on the training split's digits only (28x28 flattened, 0-255).

    Returns:
        ((origin, index) -> (digit_size, digit_size) float32 in [0, 255],
         explained-variance ratio of each kept component).
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    keys = sorted({(p.mnist_origin, p.mnist_index) for p in plans})
    x = np.stack([raw.mnist[o][0][i] for o, i in keys]).reshape(len(keys), -1).astype(np.float64)
    ratio: list[float] = []
    if cfg.pca_keep > 0:
        from sklearn.decomposition import PCA

        fit_rows = [p.mnist_index for p in plans if p.split == "train"]
        pca = PCA(n_components=cfg.pca_keep, svd_solver="full").fit(
            raw.mnist["train"][0][fit_rows].reshape(len(fit_rows), -1).astype(np.float64)
        )
        x = pca.inverse_transform(pca.transform(x))
        ratio = [float(r) for r in pca.explained_variance_ratio_]
    x = np.clip(x, 0.0, 255.0).reshape(-1, 1, 28, 28)
    small = TF.resize(
        torch.from_numpy(x),  # float64 throughout: kernel differences stay ~1e-12, far below the grid
        [cfg.digit_size, cfg.digit_size],
        interpolation=InterpolationMode.BILINEAR,
        antialias=True,
    )
    small = small.clamp(0.0, 255.0).numpy()[:, 0]
    # Snap to a 1/DIGIT_GRID grey-level grid, exactly representable in float32: the BLAS / ATen kernels
    # of another CPU change the float64 values in their last bits only, so that the frames rounded from
    # them (render_video) are the same integers on every machine (float32 throughout moved values by
    # up to 4.6e-5 between OpenBLAS/ATen's native and baseline kernels and changed rendered frames).
    small = (np.rint(small * DIGIT_GRID) / DIGIT_GRID).astype(np.float32)
    return {k: small[n] for n, k in enumerate(keys)}, ratio


# --- encoding --------------------------------------------------------------------------------


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


# --- the stage ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkResult:
    """What :func:`build_benchmark` built: ``counts[split][condition]``, wall time (s), recipe dict."""

    counts: dict[str, dict[str, int]]
    seconds: float
    recipe: dict[str, Any]

    @property
    def n_clips(self) -> int:
        """Total clips over all splits."""
        return sum(c["clips"] for c in self.counts.values())


PROVENANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "string"), ("subset", "string"), ("label", "int64"), ("path", "string"),
    ("mnist_origin", "string"), ("mnist_index", "int64"), ("audio_condition", "string"),
    ("spoken_digit", "int64"), ("fsdd_file", "string"), ("fsdd_crop_start", "int64"),
    ("speech_offset", "int64"), ("esc50_file", "string"), ("esc50_category", "string"),
    ("esc50_offset", "int64"), ("snr_db", "float64"), ("start_x", "float64"), ("start_y", "float64"),
    ("velocity_x", "float64"), ("velocity_y", "float64"),
)  # fmt: skip


def write_provenance(plans: list[ClipPlan], path: Path) -> None:
    """Write ``provenance.parquet``: one row per clip sorted by id, fixed schema (see PROVENANCE_COLUMNS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(plans, key=lambda p: p.id)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PROVENANCE_COLUMNS])
    columns = {name: [getattr(p, name) for p in rows] for name, _ in PROVENANCE_COLUMNS}
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, compression="zstd")


def annotation(plans: list[ClipPlan]) -> dict[str, Any]:
    """The reference implementation's annotation: ``{"labels": [...], "database": {id: {subset, label}}}``."""
    return {
        "labels": [str(d) for d in range(NUM_CLASSES)],
        "database": {p.id: {"subset": p.subset, "label": str(p.label)} for p in sorted(plans, key=lambda p: p.id)},
    }


def _counts(plans: list[ClipPlan]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        sel = [p for p in plans if p.split == split]
        out[split] = {"clips": len(sel), **{c: sum(p.audio_condition == c for p in sel) for c in CONDITIONS}}
    return out


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n")


def build_benchmark(
    cfg: BenchmarkConfig,
    raw: RawData | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkResult:
    """Build the whole benchmark into ``out_dir`` (replaced only when everything succeeded).

    Args:
        cfg: benchmark params.
        raw: decoded raw data, or the ``data/raw`` folder to load it from.
        out_dir: destination (``data/benchmark``).
        workers: encoder processes (0 = encode in this process); the output does not depend on it.
        progress: called as ``progress(done, total)`` while encoding.

    Returns:
        counts per split and audio condition, wall time, and the recipe written to recipe.json.

    Raises:
        DataError: missing/corrupt raw data or an encoding failure; ConfigError: impossible sizes.
    """
    t0 = time.perf_counter()
    if not isinstance(raw, RawData):
        raw = load_raw(raw, cfg.sample_rate)
    plans = [p for split in SPLITS for p in plan_split(cfg, split, raw)]
    digits, ratio = prepare_digits(cfg, raw, plans)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the output folder is shared like any other
    try:
        for d in range(NUM_CLASSES):
            (tmp / "videos" / str(d)).mkdir(parents=True)

        def tasks() -> Iterator[tuple[str, np.ndarray, np.ndarray, int, int, int, str]]:
            for p in plans:
                frames = render_video(p, digits[(p.mnist_origin, p.mnist_index)], cfg)
                yield (
                    str(tmp / p.path),
                    frames,
                    render_audio(p, raw, cfg.n_samples),
                    cfg.fps,
                    cfg.sample_rate,
                    cfg.video_crf,
                    cfg.audio_codec,
                )

        _run_encoders(tasks(), len(plans), workers, progress)
        _dump(annotation(plans), tmp / "annotation.json")
        write_provenance(plans, tmp / "provenance.parquet")
        counts = _counts(plans)
        recipe = {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "counts": counts,
            "pca": {
                "components": cfg.pca_keep,
                "fit_on_train_digits": cfg.n_train,
                "explained_variance_ratio": [round(r, 6) for r in ratio],
                "explained_variance_kept": round(sum(ratio), 6),
            },
            "audio": {
                "samples": cfg.n_samples,
                "target_rms": TARGET_RMS,
                "background_rms_floor": BACKGROUND_RMS_FLOOR,
                "background_tries": BACKGROUND_TRIES,
                "codec": cfg.audio_codec,
                "aac_bit_rate": AAC_BIT_RATE if cfg.audio_codec == "aac" else None,
            },
            "encoding": codec.encoding_recipe(),
            "sources_sha256": raw.sources_sha256,
        }
        _dump(recipe, tmp / "recipe.json")
        src.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BenchmarkResult(counts=counts, seconds=time.perf_counter() - t0, recipe=recipe)


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
