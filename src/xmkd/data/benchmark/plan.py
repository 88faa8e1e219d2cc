"""Planning: every random choice of every clip (labels, digits, sounds, offsets, SNR, motion) as a
:class:`ClipPlan`, one provenance row; nothing is rendered here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xmkd.data.benchmark.config import BACKGROUND_RMS_FLOOR, BACKGROUND_TRIES, NUM_CLASSES, SPLITS, BenchmarkConfig
from xmkd.data.benchmark.raw import RawData, esc50_pool, fsdd_pool
from xmkd.errors import ConfigError


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
