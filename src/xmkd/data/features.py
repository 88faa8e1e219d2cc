"""Feature extraction (stage ``extract_features``): a folder of videos + an annotation -> a feature cache.

Input: any folder of video files and an annotation in the reference implementation's format::

    {"labels": ["ClassA", ...], "database": {"<id>": {"subset": "training", "label": "ClassA"}, ...}}

Each id is looked up as ``<video_dir>/<label>/<id>.<ext>`` (UCF101 layout; the benchmark's layout too), or as
``<id>.<ext>`` anywhere under ``video_dir`` if that is unique. Output (``data/features/``):

- ``frames.npy``: uint8 (N, T, size, size, 3) RGB, written row by row through a memory map.
- ``logmel.npy``: float32 (N, n_mels, n_frames), :func:`xmkd.data.audio.logmel` of each sound track.
- ``manifest.parquet``: row i describes sample i (see :data:`MANIFEST_COLUMNS`).
- ``labels.json``: the annotation's class names; ``label_index`` indexes this list.
- ``report.json``: counts, skipped files by reason, the config used.
- only with ``features.eval_clips = K > 1``: ``eval_frames.npy``, uint8 (M, K, T, size, size, 3), ``K``
  evaluation clips (:func:`xmkd.data.video.clip_indices`) of each of the M rows of an evaluation subset
  (every subset except :data:`TRAINING_SUBSETS`), and ``eval_rows.npy``, int64 (M,), the ascending cache
  rows they belong to. Training rows get no extra clips: they are trained on, and serve as the retrieval
  gallery, with their single clip. With K = 1 neither file is written and the cache is byte-identical to
  one written before the option existed.

:class:`FeatureCache` reads it back (memory-mapped) for training.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap

from xmkd.data.audio import LogMelConfig, logmel
from xmkd.data.video import MISSING, REASONS, VIDEO_EXTENSIONS, VideoDecodeError, decode_clip
from xmkd.errors import ConfigError, DataError
from xmkd.workers import forkserver_context

#: Subsets sort in this order (others after them, alphabetically); ids sort as strings within a subset.
SUBSET_ORDER: tuple[str, ...] = ("training", "train", "validation", "val", "valid", "testing", "test")

#: Columns of ``manifest.parquet``, in order, with their dtypes.
MANIFEST_COLUMNS: dict[str, str] = {
    "id": "string",
    "subset": "string",
    "label": "string",
    "label_index": "int64",
    "path": "string",  # relative to video_dir, POSIX separators
    "duration_s": "float64",  # s, video stream
    "fps": "float64",  # frames/s, video stream
    "n_video_frames_decoded": "int64",
    "width_in": "int64",  # px, source video
    "height_in": "int64",  # px, source video
    "video_codec": "string",
    "audio_codec": "string",
    "audio_sample_rate_in": "int64",  # Hz, source sound track
    "audio_channels_in": "int64",
    "audio_seconds_in": "float64",  # s, decoded source sound track
    "audio_padded_s": "float64",  # s of zeros appended to reach features.audio_seconds
}

FILES = ("frames.npy", "logmel.npy", "manifest.parquet", "labels.json", "report.json")
#: Files of the multi-clip evaluation input (only with ``features.eval_clips > 1``).
EVAL_FILES = ("eval_frames.npy", "eval_rows.npy")
#: Subsets whose rows get no evaluation clips; the rows of every other subset do.
TRAINING_SUBSETS: tuple[str, ...] = ("training", "train")

_SKIP_FIX = (
    "Fix or remove the file (or its annotation entry), or set features.on_error: skip in params.yaml to leave "
    "such files out; skipped files are counted and listed in data/features/report.json."
)


@dataclass(frozen=True)
class FeatureConfig:
    """The ``features`` section of params.yaml.

    Attributes:
        video_dir: folder of video files (relative paths resolve against the working directory).
        annotation: annotation JSON (reference format, see module docstring).
        frames: T, frames per clip, the centre frames of T equal segments of the video.
        size: px; frames are resized (short side, antialiased) and centre-cropped to size x size.
        sample_rate: Hz; sound is resampled to mono at this rate.
        audio_seconds: s; sound is cropped from t=0 or zero-padded to this length.
        n_fft: FFT size (samples) of the log-mel.
        hop_length: hop (samples) of the log-mel.
        n_mels: mel bands.
        top_db: dB, per-clip dynamic range floor of the log-mel.
        on_error: ``"error"``: a file that is missing, will not decode or has no sound track stops the
            extraction with a :class:`~xmkd.errors.DecodeError`; ``"skip"``: it is left out and listed in
            report.json.
        workers: decoding processes (1 = decode in the calling process). Results do not depend on it.
        eval_clips: K, clips per evaluation video (rows not in :data:`TRAINING_SUBSETS`), averaged at test
            time (the paper: 3). K > 1 also writes ``eval_frames.npy`` / ``eval_rows.npy``; K = 1 writes
            neither and changes nothing.
    """

    video_dir: str = "data/benchmark/videos"
    annotation: str = "data/benchmark/annotation.json"
    frames: int = 8
    size: int = 32
    sample_rate: int = 8000
    audio_seconds: float = 1.0
    n_fft: int = 256
    hop_length: int = 80
    n_mels: int = 40
    top_db: float = 80.0
    on_error: Literal["error", "skip"] = "error"
    workers: int = 2
    eval_clips: int = 1

    def __post_init__(self) -> None:
        for name in ("frames", "size", "sample_rate", "n_fft", "hop_length", "n_mels", "workers", "eval_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"features.{name} must be >= 1, got {getattr(self, name)}")
        if self.audio_seconds <= 0:
            raise ValueError(f"features.audio_seconds must be > 0, got {self.audio_seconds}")
        if self.top_db <= 0:
            raise ValueError(f"features.top_db must be > 0, got {self.top_db}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"features.hop_length ({self.hop_length}) must be <= features.n_fft ({self.n_fft})")
        if self.on_error not in ("error", "skip"):
            raise ValueError(f"features.on_error must be 'error' or 'skip', got {self.on_error!r}")

    def logmel_config(self) -> LogMelConfig:
        """The :class:`~xmkd.data.audio.LogMelConfig` these parameters describe."""
        return LogMelConfig(
            sample_rate=self.sample_rate, audio_seconds=self.audio_seconds, n_fft=self.n_fft,
            hop_length=self.hop_length, n_mels=self.n_mels, top_db=self.top_db,
        )


@dataclass(frozen=True)
class AnnotatedVideo:
    """One annotation entry, resolved to a file (``path`` is None if no file was found)."""

    id: str
    subset: str
    label: str
    label_index: int
    path: str | None  # relative to video_dir, POSIX separators


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


# ----------------------------------------------------------------------------------------------- annotation


def _subset_key(subset: str) -> tuple[int, str]:
    return (SUBSET_ORDER.index(subset) if subset in SUBSET_ORDER else len(SUBSET_ORDER), subset)


def load_annotation(path: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, str, str, int]]]:
    """Read an annotation file in the reference format.

    Returns:
        ``(labels, entries)``: the class names, and ``(id, subset, label, label_index)`` tuples sorted by
        subset (:data:`SUBSET_ORDER`) then id.

    Raises:
        DataError: if the file is missing, not JSON, lacks ``labels``/``database``, or an entry lacks
            ``subset``/``label`` or names a label not in ``labels``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"annotation file {p} not found: set features.annotation in params.yaml to the annotation JSON "
            "(or run the stage that writes it, e.g. `dvc repro` for the benchmark)."
        )
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {p} is not valid JSON ({e}): regenerate it.") from e
    fmt = '{"labels": [...], "database": {id: {"subset": ..., "label": ...}}}'
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or not isinstance(
        data.get("database"), dict
    ):
        raise DataError(f"annotation file {p} must be a JSON object {fmt}: fix the file.")
    labels = [str(x) for x in data["labels"]]
    if len(set(labels)) != len(labels):
        raise DataError(f"annotation file {p}: 'labels' has duplicate names: make them unique.")
    index = {name: i for i, name in enumerate(labels)}
    entries = []
    for vid, meta in data["database"].items():
        if not isinstance(meta, dict) or "subset" not in meta or "label" not in meta:
            raise DataError(f"annotation file {p}: entry {vid!r} must have 'subset' and 'label' ({fmt}): fix it.")
        label = str(meta["label"])
        if label not in index:
            raise DataError(
                f"annotation file {p}: entry {vid!r} has label {label!r}, which is not in 'labels': "
                "add it to 'labels' or fix the entry."
            )
        entries.append((str(vid), str(meta["subset"]), label, index[label]))
    entries.sort(key=lambda e: (*_subset_key(e[1]), e[0]))
    return labels, entries


def index_video_dir(video_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Map each file stem under ``video_dir`` (recursively) to its paths relative to ``video_dir``.

    Only files with an extension in :data:`xmkd.data.video.VIDEO_EXTENSIONS` count. Paths use POSIX
    separators and are sorted.

    Raises:
        DataError: if ``video_dir`` is not a directory.
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise DataError(
            f"video folder {root} not found: set features.video_dir in params.yaml to the folder holding the "
            "videos (e.g. <root>/<Class>/<id>.avi), or run the stage that writes it."
        )
    out: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                rel = Path(dirpath, name).relative_to(root).as_posix()
                out.setdefault(stem, []).append(rel)
    return out


def resolve_videos(
    video_dir: str | os.PathLike[str],
    entries: Iterable[tuple[str, str, str, int]],
    files: dict[str, list[str]] | None = None,
) -> list[AnnotatedVideo]:
    """Find the file of each annotation entry: ``<label>/<id>.*`` first, else a unique ``<id>.*`` anywhere.

    Args:
        video_dir: the video folder.
        entries: ``(id, subset, label, label_index)`` tuples (see :func:`load_annotation`).
        files: the output of :func:`index_video_dir` for ``video_dir`` (computed if None).

    Returns:
        One :class:`AnnotatedVideo` per entry, in the given order; ``path`` is None when no file matches.

    Raises:
        DataError: if ``video_dir`` is missing, or an id matches several files ambiguously.
    """
    if files is None:
        files = index_video_dir(video_dir)
    out = []
    for vid, subset, label, label_index in entries:
        candidates = files.get(vid, [])
        in_label = [c for c in candidates if Path(c).parent.name == label]
        pick = in_label if in_label else candidates
        if len(pick) > 1:
            raise DataError(
                f"video id {vid!r} matches several files under {video_dir}: {pick}; "
                "keep one file per id (remove or rename the others)."
            )
        out.append(AnnotatedVideo(vid, subset, label, label_index, pick[0] if pick else None))
    return out


# ----------------------------------------------------------------------------------------------- decoding

_Job = tuple[str, int, int, float, LogMelConfig, int]
_Result = tuple[str, Any, Any]


def _process_one(job: _Job) -> _Result:
    """Decode one file: ``("ok", (frames, logmel, eval_frames or None), meta)`` or ``("skip", reason, message)``."""
    path, frames, size, audio_seconds, lm_cfg, eval_clips = job
    try:
        clip = decode_clip(
            path, frames=frames, size=size, sample_rate=lm_cfg.sample_rate, audio_seconds=audio_seconds,
            eval_clips=eval_clips,
        )
    except VideoDecodeError as e:
        return ("skip", e.reason, e.detail)
    with torch.no_grad():
        mel = logmel(torch.from_numpy(clip.wave), lm_cfg).numpy().astype(np.float32, copy=False)
    meta = {k: getattr(clip, k) for k in MANIFEST_COLUMNS if hasattr(clip, k)}
    return ("ok", (clip.frames, mel, clip.eval_frames), meta)


def _init_worker() -> None:
    torch.set_num_threads(1)


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


A = TypeVar("A")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[A], R], items: Iterable[A], workers: int, window: int | None = None
) -> Generator[R, None, None]:
    """Apply ``fn`` to ``items`` over ``workers`` processes, yielding results in input order.

    At most ``window`` (default ``4 * workers``) items are in flight, so memory stays bounded however many
    items there are. ``workers == 1`` runs in the calling process. ``fn`` must be a picklable top-level
    function; worker processes come from a ``forkserver`` context (safe with torch loaded) and run torch
    single-threaded, as does the ``workers == 1`` path, so results do not depend on ``workers``.
    Exceptions raised by ``fn`` propagate; pending work is cancelled.
    """
    if workers <= 1:
        with _single_torch_thread():
            for item in items:
                yield fn(item)
        return
    window = window or 4 * workers
    ctx = forkserver_context([__name__])  # the fork server imports torch/av once; workers fork from it
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    pending: deque[Future[R]] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(executor.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(executor.submit(fn, item))
                break
            yield result
    finally:
        for f in pending:
            f.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- driver


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
        for p, e in zip(paths, is_eval)
    )
    rows: list[dict[str, Any]] = []
    results = ordered_map(_process_one, jobs, cfg.workers)
    try:
        for done, (v, path, (status, a, b)) in enumerate(zip(videos, paths, results), start=1):
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


# ----------------------------------------------------------------------------------------------- reader


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


def config_from_params(params: dict[str, Any]) -> FeatureConfig:
    """Parse the ``features`` section of a params dict into a :class:`FeatureConfig`.

    Raises:
        ConfigError: on unknown keys, wrong types or invalid values.
    """
    from xmkd.config import parse_section

    section = params.get("features")
    if section is not None and not isinstance(section, dict):
        raise ConfigError("params.yaml section 'features' must be a mapping of keys to values.")
    return parse_section(FeatureConfig, section, "features")
