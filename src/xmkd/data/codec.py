"""Reproducible encoding and pixel-format conversion with PyAV / FFmpeg.

Everything the pipeline writes or converts with FFmpeg goes through here, so that a file and its
decoded pixels and samples are the same bytes in any process and on any x86-64 CPU (measured and
tested, see ``tests/test_benchmark.py`` and docs/reproducibility.md):

* **libx264** runs with :data:`X264_PARAMS` = ``cpu-independent=1``. Without it x264 uses SIMD
  versions of its macroblock-tree functions (``mbtree_propagate_cost`` / ``mbtree_propagate_list``,
  x264 ``common/mc.c``); on an AVX-512 CPU (AMD EPYC here) their output depended on what had been
  encoded before in the same process (10 of 70 small clips differed between a pool of workers and
  one process, and between two passes in one process), and their approximate reciprocals differ
  between CPUs. x264's own option swaps in the C versions: "ensure exact reproducibility across
  different cpus" (x264 ``--fullhelp``).
* **swscale** conversions (RGB -> YUV 4:2:0 before encoding, YUV -> RGB after decoding) use
  :data:`SWS_BITEXACT` (FFmpeg's ``bitexact`` + ``accurate_rnd`` flags). The default SIMD paths
  differ by up to 3 grey levels between a native AVX-512 build and FFmpeg's C code (measured with
  ``av_force_cpu_flags(0)``). The encoder is given YUV frames, so it converts nothing itself.
* **Sound** that must be bit-exact is stored losslessly (FLAC, 16-bit): FFmpeg's AAC decoder is
  floating point and differed by 1 ulp (6e-8) between CPU feature sets; FLAC decodes to the exact
  samples everywhere. AAC remains available (``audio_codec="aac"``) for lossy, upload-like sound.
"""

from __future__ import annotations

import os

import av
import numpy as np
from av.video.reformatter import Interpolation

#: swscale flags for every pixel-format conversion: bilinear, accurate rounding, bit-exact C code.
SWS_BITEXACT = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT

#: libx264 private options appended to every H.264 encode (see the module docstring).
X264_PARAMS = "cpu-independent=1"

#: lossless and lossy sound codecs the writers accept (FFmpeg encoder names).
AUDIO_CODECS = ("flac", "aac")


def yuv420p_frame(rgb: np.ndarray) -> av.VideoFrame:
    """One RGB image as a bit-exact YUV 4:2:0 (BT.601, limited range) :class:`av.VideoFrame`.

    Args:
        rgb: (H, W, 3) uint8 RGB, H and W even.

    Returns:
        a ``yuv420p`` frame converted with :data:`SWS_BITEXACT`.
    """
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format="yuv420p", interpolation=SWS_BITEXACT)


def to_rgb24(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, converted bit-exactly (:data:`SWS_BITEXACT`, one thread)."""
    return frame.to_ndarray(format="rgb24", interpolation=SWS_BITEXACT, threads=1)


def pcm16(wave: np.ndarray) -> np.ndarray:
    """(S,) float waveform in [-1, 1] -> (1, S) int16, ``round(x * 32768)`` clipped (FFmpeg's convention).

    Decoding gives back exactly ``k / 32768`` for every sample ``k``.
    """
    return np.clip(np.rint(np.asarray(wave, np.float64) * 32768.0), -32768, 32767).astype(np.int16)[None, :]


def write_av(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: int,
    wave: np.ndarray | None = None,
    sample_rate: int = 8000,
    *,
    video_codec: str = "libx264",
    video_options: dict[str, str] | None = None,
    audio_codec: str = "flac",
    audio_bit_rate: int | None = None,
    container_format: str | None = None,
) -> None:
    """Encode RGB frames and an optional mono sound track into one file.

    H.264 gets :data:`X264_PARAMS` and YUV frames converted with :data:`SWS_BITEXACT`; FLAC gets
    16-bit PCM (:func:`pcm16`), AAC 32-bit float planar samples at ``audio_bit_rate``.

    Args:
        path: output file; the container follows its extension unless ``container_format`` is given.
        frames: (T, H, W, 3) uint8 RGB; H and W even for yuv420p.
        fps: frames per second.
        wave: (S,) float32 in [-1, 1] at ``sample_rate`` Hz, or None for no sound track.
        sample_rate: Hz of ``wave``.
        video_codec: FFmpeg encoder name (``libx264`` gets :data:`X264_PARAMS`).
        video_options: encoder options (e.g. ``{"crf": "18"}``); ``threads`` is always 1.
        audio_codec: FFmpeg encoder name; ``flac`` is written from 16-bit PCM.
        audio_bit_rate: bit/s for a lossy sound codec (None = the encoder's default).
        container_format: FFmpeg muxer name (e.g. ``"h264"`` for a raw stream).

    Raises:
        ValueError: ``frames`` is not (T, H, W, 3) uint8.
        av.FFmpegError: FFmpeg cannot write the file (a codec missing from the PyAV build, say).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    options = {**(video_options or {}), "threads": "1"}
    if video_codec in ("libx264", "h264"):
        options["x264-params"] = ":".join(p for p in (options.get("x264-params"), X264_PARAMS) if p)
    with av.open(str(path), mode="w", format=container_format) as out:
        video = out.add_stream(video_codec, rate=fps, options=options)
        video.width, video.height, video.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), "yuv420p"
        sound = None
        if wave is not None:
            sound = out.add_stream(audio_codec, rate=sample_rate, layout="mono")
            if audio_bit_rate is not None:
                sound.bit_rate = audio_bit_rate
        for t, img in enumerate(frames):
            frame = yuv420p_frame(img)
            frame.pts = t
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None and wave is not None:
            if audio_codec == "flac":
                chunk = av.AudioFrame.from_ndarray(pcm16(wave), format="s16", layout="mono")
            else:
                w = np.ascontiguousarray(np.asarray(wave, np.float32).reshape(1, -1))
                chunk = av.AudioFrame.from_ndarray(w, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = sample_rate, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))


def encoding_recipe() -> dict[str, object]:
    """What the written bytes depend on besides the inputs: codec settings and the FFmpeg build (for recipe.json)."""
    return {
        "x264_params": X264_PARAMS,
        "sws_flags": "bilinear+accurate_rnd+bitexact",
        "pyav": av.__version__,
        "libavcodec": ".".join(str(v) for v in av.library_versions["libavcodec"]),
        "libavformat": ".".join(str(v) for v in av.library_versions["libavformat"]),
    }
