"""The stage's writer: :func:`extract_features` decodes every annotated video into a temporary folder (memory-
mapped arrays, manifest, labels, report) and moves it over the cache only when complete."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from xmkd.data.features.annotation import (
    AnnotatedVideo,
    _subset_key,
    index_video_dir,
    load_annotation,
    resolve_videos,
)
from xmkd.data.features.config import MANIFEST_COLUMNS, TRAINING_SUBSETS, FeatureConfig
from xmkd.data.features.decode import _process_one, ordered_map
from xmkd.data.video import MISSING, REASONS, VIDEO_EXTENSIONS, VideoDecodeError
from xmkd.errors import DataError

_SKIP_FIX = (
    "Fix or remove the file (or its annotation entry), or set features.on_error: skip in params.yaml to leave "
    "such files out; skipped files are counted and listed in data/features/report.json."
)


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the cache (``on_error: skip``): its id, path, reason (see video.REASONS), message."""

    id: str
    path: str
    reason: str
    message: str


@dataclass
class ExtractionResult:
    """What :func:`extract_features` did.

    Attributes:
        out_dir: the cache folder written.
        n_annotated: entries in the annotation.
        n_decoded: samples in the cache (rows of the arrays and the manifest).
        skipped: files left out, in manifest order.
        seconds: wall-clock time of the extraction, s.
        report: the content of report.json.
    """

    out_dir: Path
    n_annotated: int
    n_decoded: int
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    def skipped_counts(self) -> dict[str, int]:
        """Number of skipped files per reason (only reasons that occurred)."""
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s.reason] = out.get(s.reason, 0) + 1
        return out


def _resolve_against(p: str, base: Path) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def _shrink_rows(src: Path, dst: Path, n: int, chunk: int = 256) -> None:
    """Copy the first ``n`` rows of the .npy at ``src`` into a new .npy at ``dst`` (chunked, memory-mapped)."""
    a = np.load(src, mmap_mode="r")
    b = open_memmap(dst, mode="w+", dtype=a.dtype, shape=(n, *a.shape[1:]))
    for i in range(0, n, chunk):
        b[i : i + chunk] = a[i : min(i + chunk, n)]
    b.flush()
    del a, b


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``, replacing an existing ``out_dir`` only once ``tmp`` is complete."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)


def _missing_error(missing: list[AnnotatedVideo], n_total: int, video_dir: Path) -> VideoDecodeError:
    shown = ", ".join(f"{v.label}/{v.id}" for v in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return VideoDecodeError(
        video_dir, MISSING,
        f"{len(missing)} of {n_total} annotated videos have no file (looked for <label>/<id>.<ext>, then <id>.<ext> "
        f"anywhere, with ext in {list(VIDEO_EXTENSIONS)}): {shown}{more}",
        "Put the files there, fix features.video_dir / features.annotation, or set features.on_error: skip "
        "to leave them out (they are listed in data/features/report.json).",
    )


def _decode_into(
    tmp: Path,
    cfg: FeatureConfig,
    video_dir: Path,
    videos: list[AnnotatedVideo],
    skipped_by_id: dict[str, SkippedFile],
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """Decode ``videos`` (all with a path) into ``tmp/frames.npy`` + ``tmp/logmel.npy``; return manifest rows.

    With ``cfg.eval_clips > 1`` also ``tmp/eval_frames.npy`` + ``tmp/eval_rows.npy`` (module docstring), unless
    no row of an evaluation subset was decoded. Skipped files are added to ``skipped_by_id``
    (``on_error: skip``) or raise (``on_error: error``).
    """
    lm_cfg = cfg.logmel_config()
    n = len(videos)
    frames_mm = open_memmap(
        tmp / "frames.rows.npy", mode="w+", dtype=np.uint8, shape=(max(n, 1), cfg.frames, cfg.size, cfg.size, 3)
    )
    logmel_mm = open_memmap(
        tmp / "logmel.rows.npy", mode="w+", dtype=np.float32, shape=(max(n, 1), lm_cfg.n_mels, lm_cfg.n_frames)
    )
    multi = cfg.eval_clips > 1
    is_eval = [multi and v.subset not in TRAINING_SUBSETS for v in videos]
    n_eval = sum(is_eval)
    eval_mm = None
    if n_eval:
        eval_mm = open_memmap(
            tmp / "eval_frames.rows.npy", mode="w+", dtype=np.uint8,
            shape=(n_eval, cfg.eval_clips, cfg.frames, cfg.size, cfg.size, 3),
        )
    eval_rows: list[int] = []
    paths = [video_dir / str(v.path) for v in videos]
    jobs = (
        (str(p), cfg.frames, cfg.size, cfg.audio_seconds, lm_cfg, cfg.eval_clips if e else 1)
        for p, e in zip(paths, is_eval, strict=True)
    )
    rows: list[dict[str, Any]] = []
    results = ordered_map(_process_one, jobs, cfg.workers)
    try:
        for done, (v, path, (status, a, b)) in enumerate(zip(videos, paths, results, strict=True), start=1):
            if status == "skip":
                if cfg.on_error == "error":
                    raise VideoDecodeError(path, a, b, _SKIP_FIX)
                skipped_by_id[v.id] = SkippedFile(v.id, str(v.path), a, b)
            else:
                frames_mm[len(rows)] = a[0]
                logmel_mm[len(rows)] = a[1]
                if a[2] is not None:
                    assert eval_mm is not None
                    eval_mm[len(eval_rows)] = a[2]
                    eval_rows.append(len(rows))
                row = {"id": v.id, "subset": v.subset, "label": v.label, "label_index": v.label_index, "path": v.path}
                rows.append({**row, **b})
            if progress is not None:
                progress(done, n)
    finally:
        results.close()  # stops the worker processes, also when leaving early
    frames_mm.flush()
    logmel_mm.flush()
    del frames_mm, logmel_mm
    for name in ("frames", "logmel"):
        src = tmp / f"{name}.rows.npy"
        if len(rows) == n:
            os.replace(src, tmp / f"{name}.npy")
        else:  # some files were skipped: keep the first len(rows) rows
            if rows:
                _shrink_rows(src, tmp / f"{name}.npy", len(rows))
            src.unlink()
    if eval_mm is not None:
        eval_mm.flush()
        del eval_mm
        src = tmp / "eval_frames.rows.npy"
        if len(eval_rows) == n_eval:
            os.replace(src, tmp / "eval_frames.npy")
        else:
            if eval_rows:
                _shrink_rows(src, tmp / "eval_frames.npy", len(eval_rows))
            src.unlink()
        if eval_rows:
            np.save(tmp / "eval_rows.npy", np.asarray(eval_rows, dtype=np.int64))
    return rows


def extract_features(
    cfg: FeatureConfig,
    out_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Decode every annotated video into the feature cache at ``out_dir`` (see the module docstring).

    Rows are in annotation order sorted by subset (:data:`SUBSET_ORDER`) then id; arrays, manifest and
    report are byte-identical for the same inputs and config, and arrays and manifest do not depend on
    ``cfg.workers``. Outputs are written to a temporary sibling folder and moved over ``out_dir`` only when
    complete, so a failure leaves an existing cache untouched.

    Args:
        cfg: the ``features`` parameters.
        out_dir: cache folder to (re)write, e.g. ``data/features``.
        base_dir: folder that relative ``cfg.video_dir`` / ``cfg.annotation`` resolve against (default: cwd).
        progress: optional callback ``(done, total)`` called after each decoded (or skipped) file.

    Returns:
        An :class:`ExtractionResult` (counts, skipped files, timing, report).

    Raises:
        DataError: the annotation or video folder is missing or malformed; an id matches several files;
            every file was skipped.
        DecodeError: (``on_error: error``) a file is missing, will not decode, or has no sound track; the
            message names the file, the problem and the fix.
    """
    t0 = time.perf_counter()
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    video_dir = _resolve_against(cfg.video_dir, base)
    labels, entries = load_annotation(_resolve_against(cfg.annotation, base))
    if not entries:
        raise DataError(f"annotation {cfg.annotation} lists no video: add entries to its 'database'.")
    files = index_video_dir(video_dir)
    videos = resolve_videos(video_dir, entries, files)
    unannotated = sum(len(v) for v in files.values()) - sum(v.path is not None for v in videos)
    missing = [v for v in videos if v.path is None]
    if missing and cfg.on_error == "error":
        raise _missing_error(missing, len(videos), video_dir)
    skipped_by_id = {
        v.id: SkippedFile(v.id, f"{v.label}/{v.id}.*", MISSING, "no file <label>/<id>.<ext> (or <id>.<ext>) found")
        for v in missing
    }

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        rows = _decode_into(tmp, cfg, video_dir, [v for v in videos if v.path is not None], skipped_by_id, progress)
        if not rows:
            first = next(iter(skipped_by_id.values()))
            raise DataError(
                f"no video could be used: all {len(videos)} annotated files were skipped "
                f"({_count(skipped_by_id.values())}), e.g. {first.path}: {first.message}. Check "
                "features.video_dir and features.annotation in params.yaml, and the files themselves."
            )
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype(MANIFEST_COLUMNS)
        manifest.to_parquet(tmp / "manifest.parquet", index=False, engine="pyarrow")
        (tmp / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
        skipped = [skipped_by_id[v.id] for v in videos if v.id in skipped_by_id]
        report = _report(cfg, labels, videos, manifest, skipped, unannotated)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExtractionResult(
        out_dir=out, n_annotated=len(videos), n_decoded=len(rows), skipped=skipped,
        seconds=time.perf_counter() - t0, report=report,
    )


def _count(skipped: Iterable[SkippedFile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return {r: counts[r] for r in REASONS if r in counts}


def _report(
    cfg: FeatureConfig, labels: list[str], videos: list[AnnotatedVideo], manifest: pd.DataFrame,
    skipped: list[SkippedFile], unannotated: int,
) -> dict[str, Any]:
    """Content of report.json (deterministic: no timings, no absolute paths).

    With ``eval_clips == 1`` it holds neither ``eval_clips`` nor an ``eval_frames`` shape, so that the cache
    stays byte-identical to one written before the option existed (DVC then sees an unchanged
    ``data/features`` and re-runs nothing downstream).
    """
    config = asdict(cfg)
    shapes = {
        "frames": [int(len(manifest)), cfg.frames, cfg.size, cfg.size, 3],
        "logmel": [int(len(manifest)), cfg.n_mels, cfg.logmel_config().n_frames],
    }
    if cfg.eval_clips == 1:
        del config["eval_clips"]
    else:
        n_eval = int((~manifest["subset"].isin(TRAINING_SUBSETS)).sum())
        shapes["eval_frames"] = [n_eval, cfg.eval_clips, cfg.frames, cfg.size, cfg.size, 3]
    by_reason: dict[str, list[dict[str, str]]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append({"id": s.id, "path": s.path, "message": s.message})
    subsets = sorted(set(manifest["subset"]), key=_subset_key)
    return {
        "n_annotated": len(videos),
        "n_decoded": int(len(manifest)),
        "n_skipped": len(skipped),
        "skipped_counts": _count(skipped),
        "skipped": {r: by_reason[r] for r in REASONS if r in by_reason},
        "per_subset": {s: int((manifest["subset"] == s).sum()) for s in subsets},
        "n_classes": len(labels),
        "n_unannotated_files_in_video_dir": int(unannotated),
        "audio_padded_clips": int((manifest["audio_padded_s"] > 0).sum()),
        "shapes": shapes,
        "config": config,
    }
