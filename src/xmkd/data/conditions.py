"""The irrelevant-sound condition of every clip, selectable per clip without rebuilding the videos.

In the default benchmark (:mod:`xmkd.data.benchmark`) a clip's video does not depend on
``benchmark.irrelevant_rate``: every clip draws its digit image, motion, spoken-digit files and
background in a fixed order whatever its sound condition, and ``irrelevant_rate`` only decides which
clips carry which sound (:func:`~xmkd.data.benchmark.plan._blocks`). So the benchmark at another rate has byte-identical videos and
differs only in the sound tracks. Since the student never hears the sound (it only sees the frozen
teacher's outputs), a run at rate r needs just the teacher's outputs of each clip under the condition
that clip has at rate r.

This module renders, for every clip, all three sound tracks (``clean``: the right digit spoken over
background; ``mismatched``: another digit spoken; ``background``: ESC-50 only) from the same plan
draws the builder uses, and assigns conditions for any rate exactly as the builder would. The
``embed_conditions`` stage embeds the three tracks with the frozen teacher once; robustness runs pick
per clip. With the default lossless sound (``benchmark.audio_codec: flac``) the tracks are quantised to
16 bit exactly as the MP4's FLAC stream stores them, so they are the samples a rebuild would decode; with
``aac`` they skip the lossy encoder. The stage measures the difference either way (teacher agreement with
the MP4 path on the as-built conditions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xmkd.data.benchmark.config import CONDITIONS, NUM_CLASSES, SPLITS, BenchmarkConfig
from xmkd.data.benchmark.plan import _blocks, plan_split
from xmkd.data.benchmark.raw import RawData
from xmkd.data.benchmark.render import render_audio
from xmkd.data.codec import pcm16

#: (irrelevant_rate, mismatch_share) whose plan gives every clip this condition
VARIANTS: dict[str, tuple[float, float]] = {"clean": (0.0, 0.5), "mismatched": (1.0, 1.0), "background": (1.0, 0.0)}


def assign_conditions(cfg: BenchmarkConfig, rate: float) -> dict[str, str]:
    """Clip id -> sound condition of the benchmark ``cfg`` built at ``irrelevant_rate = rate``.

    Exactly what :func:`xmkd.data.benchmark.build_benchmark` would write to the provenance
    (``audio_condition``), without rendering anything: per split, exactly ``round(rate n)`` irrelevant
    clips, of which ``round(mismatch_share · round(rate n))`` mismatched.

    Raises:
        ValueError: ``rate`` outside [0, 1].
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"irrelevant rate must be in [0, 1], got {rate}")
    at = dataclasses.replace(cfg, irrelevant_rate=float(rate))
    out = {}
    for split in SPLITS:
        for b, (labels, cond) in enumerate(_blocks(at, split)):
            for j, label in enumerate(labels):
                out[f"{split}_{b * NUM_CLASSES + j:05d}"] = cond[label]
    return out


def render_variants(cfg: BenchmarkConfig, raw: RawData) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every clip's three sound tracks.

    Returns:
        (clip ids in plan order, {condition: (N, n_samples) float32 waveforms at cfg.sample_rate}), each
        quantised to 16 bit as the MP4 stores it when ``cfg.audio_codec == "flac"``.
    """
    ids: list[str] = []
    waves: dict[str, list[np.ndarray]] = {c: [] for c in CONDITIONS}
    for cond, (rate, share) in VARIANTS.items():
        at = dataclasses.replace(cfg, irrelevant_rate=rate, mismatch_share=share)
        plans = [p for split in SPLITS for p in plan_split(at, split, raw)]
        if cond == "clean":
            ids = [p.id for p in plans]
        elif [p.id for p in plans] != ids:  # pragma: no cover - the plan order never depends on the rate
            raise AssertionError("clip order differs between condition variants")
        for p in plans:
            assert p.audio_condition == cond
            wave = render_audio(p, raw, cfg.n_samples)
            if cfg.audio_codec == "flac":  # what the MP4's lossless 16-bit track decodes to, sample for sample
                wave = (pcm16(wave)[0] / 32768.0).astype(np.float32)
            waves[cond].append(wave)
    return ids, {c: np.stack(w) for c, w in waves.items()}


def benchmark_config(keys: dict[str, Any]) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` with the given keys (those that decide the condition assignment)."""
    return BenchmarkConfig(**{k: v for k, v in keys.items() if v is not None})
