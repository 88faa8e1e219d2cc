"""The stage: :func:`build_benchmark` plans, renders and encodes every clip into a temporary folder, writes
``annotation.json``, ``provenance.parquet`` and ``recipe.json``, and moves it over ``data/benchmark``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmkd.data import codec
from xmkd.data.benchmark.config import (
    AAC_BIT_RATE,
    BACKGROUND_RMS_FLOOR,
    BACKGROUND_TRIES,
    CONDITIONS,
    NUM_CLASSES,
    SPLITS,
    TARGET_RMS,
    BenchmarkConfig,
)
from xmkd.data.benchmark.encode import _run_encoders
from xmkd.data.benchmark.plan import ClipPlan, plan_split
from xmkd.data.benchmark.provenance import annotation, write_provenance
from xmkd.data.benchmark.raw import RawData, load_raw
from xmkd.data.benchmark.render import prepare_digits, render_audio, render_video
from xmkd.data.sources import replace_dir


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
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BenchmarkResult(counts=counts, seconds=time.perf_counter() - t0, recipe=recipe)
