"""Decoding of one video file (PyAV) into a fixed-size clip: sampled RGB frames + a mono sound track.

:func:`decode_clip` is the single entry point used by feature extraction. It reads any container FFmpeg
reads (AVI, MP4, MKV, WebM, ...), samples ``T`` frames uniformly over the video (the centre frame of ``T``
equal segments), resizes them (short side to ``size`` px, antialiased, then a centre crop) and resamples the
sound track to mono at ``sample_rate`` Hz, cropped from t=0 or zero-padded to a fixed length. With
``eval_clips=K > 1`` it also returns ``K`` further clips of ``T`` frames for multi-clip evaluation
(:func:`clip_indices`).

Only the sampled frames are kept in memory: their indices are computed up front from the frame count the
container declares (or from its duration x frame rate); a container that declares neither is decoded twice
(once to count, once to keep), never by holding every frame.

Every failure is a :class:`VideoDecodeError` (a :class:`xmkd.errors.DecodeError`) carrying a machine-readable
``reason`` (one of :data:`REASONS`) so that callers can count and list skipped files per reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from xmkd.data.codec import to_rgb24, write_av
from xmkd.errors import DecodeError

#: File name extensions treated as video files when indexing a folder (lower case, with the dot).
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp", ".ts",
)

# Reasons a file is rejected (keys of report.json's "skipped" section).
MISSING = "missing_file"
UNREADABLE = "unreadable_container"
NO_VIDEO_STREAM = "no_video_stream"
NO_VIDEO_FRAMES = "no_video_frames"
TRUNCATED = "truncated"
CORRUPT = "corrupt_stream"
NO_AUDIO_STREAM = "no_audio_stream"
NO_AUDIO_SAMPLES = "no_audio_samples"
#: All failure reasons, in the order they are reported.
REASONS: tuple[str, ...] = (
    MISSING, UNREADABLE, NO_VIDEO_STREAM, NO_VIDEO_FRAMES, TRUNCATED, CORRUPT, NO_AUDIO_STREAM, NO_AUDIO_SAMPLES,
)


class VideoDecodeError(DecodeError):
    """A video file cannot be used: missing, undecodable, truncated, or without a sound track.

    Attributes:
        path: the file concerned.
        reason: one of :data:`REASONS`.
        detail: what is wrong, in words (without the file name or the fix).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str, fix: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        self.fix = fix
        super().__init__(f"{self.path}: {detail} [{reason}]. {fix}".strip())

    def __reduce__(self) -> tuple[type[VideoDecodeError], tuple[str, str, str, str]]:  # picklable across processes
        return (VideoDecodeError, (self.path, self.reason, self.detail, self.fix))


@dataclass(frozen=True)
class DecodedClip:
    """One decoded video file.

    Attributes:
        frames: (T, size, size, 3) uint8 RGB, the sampled frames in time order.
        wave: (n_samples,) float32 mono waveform at the requested sample rate, cropped from t=0 or
            zero-padded at the end to ``round(sample_rate * audio_seconds)`` samples. Full scale is 1, but
            FFmpeg's down-mix (stereo: 0.707 (L + R); 5.1: 0.707 (FL + FR) + FC + 0.5 (BL + BR)) is not
            clipped, so peaks may exceed 1 (the per-clip-referenced log-mel does not depend on the scale).
        duration_s: duration of the video stream in s (container metadata; decoded count / fps if absent).
        fps: average frame rate of the video stream in frames/s (NaN if the container gives none).
        n_video_frames_decoded: number of video frames the decoder produced.
        frame_indices: (T,) int64 indices (in decoding order) of the sampled frames.
        width_in: px, width of the source video.
        height_in: px, height of the source video.
        video_codec: FFmpeg name of the video codec (e.g. ``"h264"``).
        audio_codec: FFmpeg name of the audio codec (e.g. ``"aac"``).
        audio_sample_rate_in: Hz, sample rate of the source sound track.
        audio_channels_in: number of channels of the source sound track.
        audio_seconds_in: s, length of the decoded source sound track.
        audio_padded_s: s of zeros appended to reach the requested length (0 if the track was long enough).
        eval_frames: (K, T, size, size, 3) uint8 RGB, the ``K`` evaluation clips (:func:`clip_indices`), or
            None when ``eval_clips == 1`` (then ``frames`` is the only clip).
        eval_frame_indices: (K, T) int64 indices (in decoding order) of ``eval_frames``, or None.
    """

    frames: np.ndarray
    wave: np.ndarray
    duration_s: float
    fps: float
    n_video_frames_decoded: int
    frame_indices: np.ndarray
    width_in: int
    height_in: int
    video_codec: str
    audio_codec: str
    audio_sample_rate_in: int
    audio_channels_in: int
    audio_seconds_in: float
    audio_padded_s: float
    eval_frames: np.ndarray | None = None
    eval_frame_indices: np.ndarray | None = None


def uniform_indices(n_frames: int, t: int) -> np.ndarray:
    """Indices of the centre frames of ``t`` equal segments of a ``n_frames``-frame video.

    ``index_k = floor((k + 0.5) * n_frames / t)`` for ``k = 0 .. t-1`` (exact integer arithmetic). With fewer
    frames than ``t`` some frames are repeated.

    Returns:
        (t,) int64, non-decreasing, each in ``[0, n_frames)``.

    Raises:
        ValueError: if ``n_frames < 1`` or ``t < 1``.
    """
    if n_frames < 1 or t < 1:
        raise ValueError(f"need n_frames >= 1 and t >= 1, got n_frames={n_frames}, t={t}")
    k = np.arange(t, dtype=np.int64)
    return ((2 * k + 1) * n_frames) // (2 * t)


def clip_indices(n_frames: int, t: int, k: int) -> np.ndarray:
    """Frame indices of ``k`` evaluation clips of ``t`` frames each, spread evenly over the whole video.

    Clip ``c`` samples the video with the same spacing ``n_frames / t`` as the single clip of
    :func:`uniform_indices` (the clip a student trains on), shifted by ``(c + 0.5) / k`` of a spacing:
    ``index_{c,j} = floor((j + (c + 0.5) / k) * n_frames / t) = floor((2 (j k + c) + 1) n_frames / (2 k t))``.
    Equivalently: the ``k * t`` indices of ``uniform_indices(n_frames, k * t)`` dealt out to the ``k`` clips
    in turn. ``k = 1`` gives :func:`uniform_indices` exactly; for odd ``k`` the middle clip ``c = (k - 1) / 2``
    is that single clip. Each clip spans the whole video at the training clip's frame rate (not a ``k`` times
    denser sub-window), so evaluation clips differ from the training clip only in temporal phase. The clips
    are in temporal order (``index_{c,j}`` is non-decreasing in ``c``, and in ``j``); they share frames only
    when ``n_frames < k * t``.

    Returns:
        (k, t) int64, each in ``[0, n_frames)``.

    Raises:
        ValueError: if ``n_frames < 1``, ``t < 1`` or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"need k >= 1 clips, got k={k}")
    return np.ascontiguousarray(uniform_indices(n_frames, k * t).reshape(t, k).T)


def resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image so its short side is ``size`` px (bilinear, antialiased), then centre-crop.

    Args:
        frame: (H, W, 3) uint8 RGB.
        size: output side in px.

    Returns:
        (size, size, 3) uint8 RGB (a new contiguous array).
    """
    img = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)  # (3, H, W)
    img = tvf.resize(img, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    img = tvf.center_crop(img, [size, size])
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


def _fraction(x: object) -> Fraction | None:
    if x is None:
        return None
    f = Fraction(x)  # type: ignore[arg-type]
    return f if f > 0 else None


def _video_duration(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> Fraction | None:
    """Duration in s of the video stream from the container's metadata, or None if it gives none."""
    if stream.duration and stream.time_base:
        return Fraction(stream.duration) * Fraction(stream.time_base)
    if container.duration:
        return Fraction(container.duration, av.time_base)
    return None


def _planned_frame_count(
    stream: av.video.stream.VideoStream, container: av.container.InputContainer
) -> tuple[int | None, bool]:
    """Frame count to plan the sampling with, and whether the container declared it (vs. estimated it).

    Returns ``(None, False)`` if neither a frame count nor a duration and frame rate are known.
    """
    if stream.frames and stream.frames > 0:
        return int(stream.frames), True
    duration = _video_duration(stream, container)
    rate = _fraction(stream.average_rate) or _fraction(stream.guessed_rate)
    if duration is not None and rate is not None:
        n = round(duration * rate)
        if n >= 1:
            return int(n), False
    return None, False


class _VideoSampler:
    """Keeps (resized) only the decoded frames whose index is in ``targets`` (any shape; None keeps none)."""

    def __init__(self, targets: np.ndarray | None, size: int) -> None:
        self.targets = targets
        self.wanted = set(int(i) for i in targets.reshape(-1)) if targets is not None else set()
        self.size = size
        self.kept: dict[int, np.ndarray] = {}
        self.count = 0
        self.width = 0
        self.height = 0

    def add(self, frame: av.VideoFrame) -> None:
        if self.count == 0:
            self.width, self.height = frame.width, frame.height
        if self.count in self.wanted:
            # threads=1: swscale's automatic threading costs more than it saves on small frames and
            # competes with the worker processes.
            # bit-exact conversion: the same pixels on every CPU (xmkd.data.codec)
            self.kept[self.count] = resize_crop(to_rgb24(frame), self.size)
        self.count += 1

    def satisfied(self, indices: np.ndarray | None = None) -> bool:
        """Whether every frame of ``indices`` (default: the targets) was kept."""
        idx = self.targets if indices is None else indices
        return idx is not None and all(int(i) in self.kept for i in idx.reshape(-1))

    def stack(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(*indices.shape, size, size, 3) uint8: the kept frames of ``indices`` (default: the targets)."""
        idx = self.targets if indices is None else indices
        assert idx is not None
        return np.stack([self.kept[int(i)] for i in idx.reshape(-1)]).reshape(*idx.shape, self.size, self.size, 3)


def _union(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Sorted distinct indices of ``a`` and ``b`` (None if ``a`` is None; ``b`` None adds nothing)."""
    if a is None or b is None:
        return a
    return np.union1d(a.reshape(-1), b.reshape(-1))


class _AudioCollector:
    """Resamples a sound track to mono float32 and keeps only its first ``n_samples`` output samples."""

    def __init__(self, sample_rate: int, n_samples: int) -> None:
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.n_samples = n_samples
        self.chunks: list[np.ndarray] = []
        self.n_out = 0
        self.n_in = 0
        self.rate_in = 0
        self.channels_in = 0

    def _take(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            if self.n_out >= self.n_samples:
                return
            arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(arr)
            self.n_out += arr.shape[0]

    def add(self, frame: av.AudioFrame) -> None:
        if self.n_in == 0:
            self.rate_in = int(frame.sample_rate)
            self.channels_in = int(frame.layout.nb_channels)
        self.n_in += int(frame.samples)
        if self.n_out < self.n_samples:
            self._take(self.resampler.resample(frame))

    def flush(self) -> None:
        """Drain the resampler's delay line at the end of the stream."""
        if self.n_out < self.n_samples and self.n_in > 0:
            self._take(self.resampler.resample(None))

    def wave(self) -> np.ndarray:
        """(n_samples,) float32: the collected samples, cropped or zero-padded at the end."""
        wave = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        wave = wave[: self.n_samples]
        return np.pad(wave, (0, self.n_samples - wave.shape[0])).astype(np.float32, copy=False)


def _why(e: BaseException) -> str:
    """FFmpeg's reason without the file name (so that messages and reports hold no absolute path)."""
    return str(getattr(e, "strerror", None) or e)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(path, UNREADABLE, f"FFmpeg cannot open it as a media container: {_why(e)}") from e


def _decode_pass(
    path: Path,
    container: av.container.InputContainer,
    targets: np.ndarray | None,
    size: int,
    audio: _AudioCollector | None,
) -> _VideoSampler:
    """Decode the whole video stream (and the sound track if ``audio`` is given) in one demuxing pass."""
    vstream = container.streams.best("video")
    assert vstream is not None
    vstream.codec_context.thread_count = 1  # parallelism comes from worker processes
    streams = [vstream]
    if audio is not None:
        astream = container.streams.best("audio")
        assert astream is not None
        streams.append(astream)
    sampler = _VideoSampler(targets, size)
    try:
        for packet in container.demux(streams):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    sampler.add(frame)
                elif audio is not None and isinstance(frame, av.AudioFrame):
                    audio.add(frame)
        if audio is not None:
            audio.flush()
    except av.FFmpegError as e:
        raise VideoDecodeError(path, CORRUPT, f"decoding failed ({_why(e)}); the file is damaged or truncated") from e
    return sampler


def decode_clip(
    path: str | os.PathLike[str],
    *,
    frames: int,
    size: int,
    sample_rate: int,
    audio_seconds: float,
    eval_clips: int = 1,
) -> DecodedClip:
    """Decode one video file into ``frames`` RGB frames of ``size`` x ``size`` px and a mono sound track.

    Frame sampling: the centre frame of ``frames`` equal segments of the video (:func:`uniform_indices`),
    indices counted in the decoder's output order and planned from the container's frame count (or its
    duration x frame rate). If the container declares a frame count but decoding stops before a sampled
    index, the file is reported as truncated. Without a declared count the file is decoded twice if needed
    (count, then keep). Frames are resized with :func:`resize_crop`.

    With ``eval_clips = K > 1`` the same pass also keeps the frames of ``K`` evaluation clips
    (:func:`clip_indices`, planned from the same frame count); ``frames`` and every other field are exactly
    what ``eval_clips = 1`` gives. If the single clip's frames were all decoded but an evaluation clip's were
    not (the declared or estimated count exceeds the frames the stream yields), the evaluation clips are
    re-planned from the decoded count in a second pass, so a file is accepted or rejected alike for every K.

    Sound: the best audio stream, resampled by FFmpeg (``AudioResampler(format="flt", layout="mono",
    rate=sample_rate)``), cropped from t=0 or zero-padded to ``round(sample_rate * audio_seconds)`` samples.

    Args:
        path: the video file.
        frames: T, number of frames to sample (>= 1).
        size: output side in px (>= 1).
        sample_rate: Hz of the output waveform.
        audio_seconds: s, length of the output waveform.
        eval_clips: K, evaluation clips to decode besides ``frames`` (1 = none).

    Returns:
        A :class:`DecodedClip` (``frames``: (T, size, size, 3) uint8; ``wave``: (n_samples,) float32;
        ``eval_frames``: (K, T, size, size, 3) uint8 or None when K = 1).

    Raises:
        VideoDecodeError: (a :class:`xmkd.errors.DecodeError`) with ``reason`` one of :data:`REASONS`: the file
            is missing, cannot be opened, has no video stream or no decodable video frame, is truncated,
            fails to decode, has no sound track, or its sound track has no samples.
    """
    if eval_clips < 1:
        raise ValueError(f"eval_clips must be >= 1, got {eval_clips}")
    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(p, MISSING, "file not found")
    n_samples = int(round(sample_rate * audio_seconds))

    with _open(p) as container:
        vstream = container.streams.best("video")
        if vstream is None:
            raise VideoDecodeError(p, NO_VIDEO_STREAM, "the container has no video stream")
        astream = container.streams.best("audio")
        if astream is None:
            raise VideoDecodeError(p, NO_AUDIO_STREAM, "the container has no sound track (audio stream)")
        planned, declared = _planned_frame_count(vstream, container)
        duration = _video_duration(vstream, container)
        rate = _fraction(vstream.average_rate) or _fraction(vstream.guessed_rate)
        video_codec = str(vstream.codec_context.name)
        audio_codec = str(astream.codec_context.name)
        targets = uniform_indices(planned, frames) if planned is not None else None
        multi = eval_clips > 1
        clip_targets = clip_indices(planned, frames, eval_clips) if multi and planned is not None else None
        audio = _AudioCollector(sample_rate, n_samples)
        sampler = _decode_pass(p, container, _union(targets, clip_targets), size, audio)

    n_decoded = sampler.count
    if n_decoded == 0:
        raise VideoDecodeError(p, NO_VIDEO_FRAMES, "the video stream yields no decodable frame")
    if targets is None or not sampler.satisfied(targets):
        if declared and targets is not None:
            raise VideoDecodeError(
                p, TRUNCATED,
                f"the container declares {planned} video frames but only {n_decoded} could be decoded, "
                f"fewer than the sampled frame index {int(targets.max())}: the file is truncated or damaged",
            )
        # No (or only an estimated) frame count: now that the true count is known, keep the right frames.
        targets = uniform_indices(n_decoded, frames)
        clip_targets = clip_indices(n_decoded, frames, eval_clips) if multi else None
        with _open(p) as container:
            sampler = _decode_pass(p, container, _union(targets, clip_targets), size, None)
        if not (sampler.satisfied(targets) and (clip_targets is None or sampler.satisfied(clip_targets))):
            raise VideoDecodeError(p, CORRUPT, "a second decoding pass yielded fewer frames than the first")
    elif clip_targets is not None and not sampler.satisfied(clip_targets):
        # The single clip is complete but the count over-states the stream: re-plan the evaluation clips.
        clip_targets = clip_indices(n_decoded, frames, eval_clips)
        with _open(p) as container:
            sampler = _decode_pass(p, container, _union(targets, clip_targets), size, None)
        if not (sampler.satisfied(targets) and sampler.satisfied(clip_targets)):
            raise VideoDecodeError(p, CORRUPT, "a second decoding pass yielded fewer frames than the first")
    if audio.n_in == 0:
        raise VideoDecodeError(p, NO_AUDIO_SAMPLES, "the sound track yields no decodable sample")
    wave = audio.wave()
    if duration is None and rate is not None:
        duration = Fraction(n_decoded) / rate
    assert targets is not None
    return DecodedClip(
        frames=sampler.stack(targets),
        wave=wave,
        duration_s=float(duration) if duration is not None else math.nan,
        fps=float(rate) if rate is not None else math.nan,
        n_video_frames_decoded=n_decoded,
        frame_indices=targets.astype(np.int64),
        width_in=sampler.width,
        height_in=sampler.height,
        video_codec=video_codec,
        audio_codec=audio_codec,
        audio_sample_rate_in=audio.rate_in,
        audio_channels_in=audio.channels_in,
        audio_seconds_in=audio.n_in / audio.rate_in,
        audio_padded_s=(n_samples - min(audio.n_out, n_samples)) / sample_rate,
        eval_frames=sampler.stack(clip_targets) if clip_targets is not None else None,
        eval_frame_indices=clip_targets.astype(np.int64) if clip_targets is not None else None,
    )


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: int,
    wave: np.ndarray | None = None,
    sample_rate: int = 8000,
    *,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    container_format: str | None = None,
) -> None:
    """Encode RGB frames (and optionally a mono sound track) into a video file with PyAV.

    Used by the tests and for synthetic data; real datasets are read, not written.

    Args:
        path: output file; the container is chosen from its extension unless ``container_format`` is given.
        frames: (T, H, W, 3) uint8 RGB; H and W must be even for H.264 (yuv420p).
        fps: frames per second (integer).
        wave: (S,) float32 mono waveform in [-1, 1] at ``sample_rate`` Hz, or None for a file without sound.
        sample_rate: Hz of ``wave``.
        video_codec: FFmpeg encoder name.
        audio_codec: FFmpeg encoder name.
        container_format: FFmpeg muxer name (e.g. ``"h264"`` for a raw stream without container metadata).

    Raises:
        ValueError: if ``frames`` is not (T, H, W, 3) uint8.
    """
    write_av(
        path,
        frames,
        fps,
        wave,
        sample_rate,
        video_codec=video_codec,
        video_options={"preset": "veryfast", "crf": "18"} if video_codec in ("libx264", "h264") else None,
        audio_codec=audio_codec,
        container_format=container_format,
    )
