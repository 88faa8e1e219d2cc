"""Tests of stage 3 (feature extraction): PyAV decoding of real containers, the extraction driver, the cache.

Real inputs: the two video fixtures of the data mirror (``$XMKD_DATA_MIRROR``, default ``<repo>/../shared/
datasets``): an UCF101 AVI (MPEG-4 + MP3 44.1 kHz stereo) and an MP4 (H.264 1280x720 + 6-channel AAC).
Small MP4/MKV files are synthesised with PyAV in tmp folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


from xmkd.data import video as video_mod
from xmkd.data.features import FeatureCache, FeatureConfig, config_from_params, extract_features, load_annotation
from xmkd.data.video import VideoDecodeError, decode_clip, uniform_indices, write_video
from xmkd.errors import ConfigError, DataError, DecodeError

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", REPO.parent / "shared" / "datasets"))
FIXTURES = MIRROR / "video-fixtures"
AVI = FIXTURES / "ucf101_ApplyEyeMakeup_with_audio.avi"
MP4 = FIXTURES / "bigbuckbunny_5s_720p_aac51.mp4"

needs_fixtures = pytest.mark.skipif(
    not (AVI.is_file() and MP4.is_file()),
    reason=f"video fixtures not found under {FIXTURES} (set XMKD_DATA_MIRROR to the data mirror)",
)

DECODE = dict(frames=8, size=32, sample_rate=8000, audio_seconds=1.0)


def synth(
    path: Path, n_frames: int = 16, fps: int = 8, audio_s: float | None = 1.0, sr: int = 8000, tone_hz: float = 440.0
) -> Path:
    """Write a video whose frame i is a flat grey of level 15*i (so the sampled indices can be read back)."""
    frames = np.zeros((n_frames, 32, 32, 3), np.uint8)
    for i in range(n_frames):
        frames[i] = min(15 * i, 255)
    wave = None
    if audio_s is not None:
        t = np.arange(int(round(sr * audio_s))) / sr
        wave = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
    write_video(path, frames, fps, wave, sr)
    return path


def levels(frames: np.ndarray) -> np.ndarray:
    """(T,) frame index encoded by :func:`synth`, read back from the mean grey level."""
    return np.rint(frames.reshape(frames.shape[0], -1).mean(axis=1) / 15.0).astype(int)


# ------------------------------------------------------------------------------------------ pure functions


def test_uniform_indices() -> None:
    assert uniform_indices(164, 8).tolist() == [10, 30, 51, 71, 92, 112, 133, 153]
    assert uniform_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert uniform_indices(8, 8).tolist() == list(range(8))
    assert uniform_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # short video: frames repeat
    with pytest.raises(ValueError):
        uniform_indices(0, 8)


def test_config_parsing() -> None:
    cfg = config_from_params({"features": {"frames": 4, "on_error": "skip"}})
    assert cfg.frames == 4 and cfg.on_error == "skip" and cfg.size == 32
    lm = cfg.logmel_config()
    assert (lm.sample_rate, lm.n_mels, lm.n_frames) == (8000, 40, 101)
    with pytest.raises(ConfigError, match="did you mean 'on_error'"):
        config_from_params({"features": {"on_eror": "skip"}})
    with pytest.raises(ConfigError, match="on_error"):
        config_from_params({"features": {"on_error": "ignore"}})
    with pytest.raises(ConfigError, match="frames"):
        config_from_params({"features": {"frames": 0}})


def test_annotation_errors(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    with pytest.raises(DataError, match="not found"):
        load_annotation(p)
    p.write_text(json.dumps({"labels": ["a"], "database": {"x": {"subset": "training", "label": "b"}}}))
    with pytest.raises(DataError, match="not in 'labels'"):
        load_annotation(p)
    p.write_text(json.dumps({"labels": ["a", "b"], "database": {
        "z": {"subset": "validation", "label": "a"}, "y": {"subset": "training", "label": "b"},
        "x": {"subset": "validation", "label": "b"}}}))
    labels, entries = load_annotation(p)
    assert labels == ["a", "b"]
    assert entries == [("y", "training", "b", 1), ("x", "validation", "b", 1), ("z", "validation", "a", 0)]


# ------------------------------------------------------------------------------------------ decoding


@needs_fixtures
def test_decode_real_avi() -> None:
    clip = decode_clip(AVI, **DECODE)
    assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.frames.std() > 10  # real content, not a constant
    assert len({f.tobytes() for f in clip.frames}) == 8  # 8 distinct frames
    assert clip.wave.shape == (8000,) and clip.wave.dtype == np.float32
    assert 0.01 < float(np.sqrt(np.mean(clip.wave**2))) and np.abs(clip.wave).max() < 2.0
    assert clip.fps == pytest.approx(25.0)
    assert clip.duration_s == pytest.approx(6.56, abs=0.01)
    assert clip.n_video_frames_decoded == 164
    assert clip.frame_indices.tolist() == uniform_indices(164, 8).tolist()
    assert (clip.width_in, clip.height_in, clip.video_codec) == (320, 240, "mpeg4")
    assert (clip.audio_sample_rate_in, clip.audio_channels_in) == (44100, 2)
    assert clip.audio_seconds_in == pytest.approx(6.56, abs=0.05)
    assert clip.audio_padded_s == 0.0


@needs_fixtures
def test_decode_real_mp4_51() -> None:
    clip = decode_clip(MP4, **DECODE)
    assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.frames.std() > 10 and len({f.tobytes() for f in clip.frames}) == 8
    assert clip.wave.shape == (8000,)
    assert float(np.sqrt(np.mean(clip.wave**2))) > 1e-3  # the 5.1 mix is down-mixed, not dropped
    assert (clip.width_in, clip.height_in, clip.video_codec, clip.audio_codec) == (1280, 720, "h264", "aac")
    assert (clip.audio_sample_rate_in, clip.audio_channels_in) == (48000, 6)
    assert clip.n_video_frames_decoded == 132 and clip.fps == pytest.approx(25.0)
    assert clip.duration_s == pytest.approx(5.28, abs=0.01)


def test_sampled_frames_and_resampled_tone(tmp_path: Path) -> None:
    # MP4 declares its frame count; MKV does not (count estimated from duration x fps): same frames.
    for name in ("v.mp4", "v.mkv"):
        p = synth(tmp_path / name, n_frames=16, fps=8, audio_s=1.0, sr=22050, tone_hz=440.0)
        clip = decode_clip(p, **DECODE)
        assert levels(clip.frames).tolist() == [1, 3, 5, 7, 9, 11, 13, 15], name
        assert clip.audio_sample_rate_in == 22050 and clip.audio_channels_in == 1
        spectrum = np.abs(np.fft.rfft(clip.wave))
        peak_hz = np.argmax(spectrum) * 8000 / clip.wave.shape[0]
        assert abs(peak_hz - 440.0) < 5.0, (name, peak_hz)


def test_frame_count_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = synth(tmp_path / "v.mp4", n_frames=16)
    expected = [1, 3, 5, 7, 9, 11, 13, 15]
    # No count and no duration in the container: decode to count, then again to keep.
    monkeypatch.setattr(video_mod, "_planned_frame_count", lambda s, c: (None, False))
    assert levels(decode_clip(p, **DECODE).frames).tolist() == expected
    # An estimated count that is too high: corrected by a second pass.
    monkeypatch.setattr(video_mod, "_planned_frame_count", lambda s, c: (30, False))
    clip = decode_clip(p, **DECODE)
    assert levels(clip.frames).tolist() == expected and clip.n_video_frames_decoded == 16
    # A declared count the stream does not reach: truncated.
    monkeypatch.setattr(video_mod, "_planned_frame_count", lambda s, c: (30, True))
    with pytest.raises(VideoDecodeError) as e:
        decode_clip(p, **DECODE)
    assert e.value.reason == video_mod.TRUNCATED


def test_short_sound_is_padded_and_recorded(tmp_path: Path) -> None:
    clip = decode_clip(synth(tmp_path / "v.mp4", audio_s=0.5), **DECODE)
    assert 0.4 < clip.audio_padded_s < 0.5  # AAC frames round the 0.5 s track up slightly
    n_real = 8000 - int(round(clip.audio_padded_s * 8000))
    assert np.all(clip.wave[n_real:] == 0.0) and np.abs(clip.wave[:n_real]).max() > 0.1
    assert clip.audio_seconds_in == pytest.approx(0.5, abs=0.06)


@needs_fixtures
def test_decode_failures(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    trunc = tmp_path / "trunc.avi"
    trunc.write_bytes(AVI.read_bytes()[: int(AVI.stat().st_size * 0.6)])
    garbled = tmp_path / "garbled.mp4"  # header intact, media data overwritten with noise
    data = bytearray(MP4.read_bytes())
    lo, hi = int(len(data) * 0.2), int(len(data) * 0.8)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    garbled.write_bytes(bytes(data))
    cases = {
        bad: video_mod.UNREADABLE,
        trunc: video_mod.TRUNCATED,
        garbled: video_mod.CORRUPT,
        synth(tmp_path / "silent.mp4", audio_s=None): video_mod.NO_AUDIO_STREAM,
        tmp_path / "nope.mp4": video_mod.MISSING,
    }
    for path, reason in cases.items():
        with pytest.raises(DecodeError) as e:
            decode_clip(path, **DECODE)
        assert isinstance(e.value, VideoDecodeError) and e.value.reason == reason
        assert str(path) in str(e.value)


# ------------------------------------------------------------------------------------------ extraction


def make_dataset(root: Path, extra: dict[str, Path] | None = None) -> FeatureConfig:
    """UCF101-style folder ``root/videos/<Class>/<id>.<ext>`` with the two fixtures + 2 synthetic MP4s."""
    videos = root / "videos"
    (videos / "ApplyEyeMakeup").mkdir(parents=True)
    (videos / "Bunny").mkdir()
    (videos / "Digits").mkdir()
    shutil.copy(AVI, videos / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")
    shutil.copy(MP4, videos / "Bunny" / "bbb.mp4")
    synth(videos / "Digits" / "d1.mp4", n_frames=8, fps=8)
    synth(videos / "Digits" / "d0.mp4", n_frames=12, fps=8, audio_s=0.5)
    db = {
        "v_ApplyEyeMakeup_g01_c01": {"subset": "validation", "label": "ApplyEyeMakeup"},
        "bbb": {"subset": "training", "label": "Bunny"},
        "d1": {"subset": "training", "label": "Digits"},
        "d0": {"subset": "validation", "label": "Digits"},
    }
    for vid, src in (extra or {}).items():
        shutil.copy(src, videos / "Digits" / f"{vid}{src.suffix}")
        db[vid] = {"subset": "training", "label": "Digits"}
    ann = {"labels": ["ApplyEyeMakeup", "Bunny", "Digits", "Unused"], "database": db}
    (root / "annotation.json").write_text(json.dumps(ann))
    return FeatureConfig(video_dir=str(videos), annotation=str(root / "annotation.json"), workers=1)


@needs_fixtures
def test_extract_folder_and_cache(tmp_path: Path) -> None:
    cfg = make_dataset(tmp_path / "ds")
    out = tmp_path / "features"
    res = extract_features(cfg, out)
    assert (res.n_annotated, res.n_decoded, res.skipped) == (4, 4, [])
    assert sorted(os.listdir(tmp_path)) == ["ds", "features"]  # no temp folder left behind

    cache = FeatureCache(out)
    assert isinstance(cache.frames, np.memmap) and cache.frames.shape == (4, 8, 32, 32, 3)
    assert cache.frames.dtype == np.uint8 and not cache.frames.flags.writeable
    assert cache.logmel.shape == (4, 40, 101) and cache.logmel.dtype == np.float32
    assert np.isfinite(cache.logmel).all()
    m = cache.manifest
    assert m["id"].tolist() == ["bbb", "d1", "d0", "v_ApplyEyeMakeup_g01_c01"]  # subset order, then id
    assert m["label_index"].tolist() == [1, 2, 2, 0]
    assert cache.labels == ["ApplyEyeMakeup", "Bunny", "Digits", "Unused"] and cache.num_classes == 4
    assert cache.indices("training").tolist() == [0, 1] and cache.indices("validation").tolist() == [2, 3]
    with pytest.raises(DataError, match="subsets present"):
        cache.indices("testing")
    avi = m.iloc[3]
    assert avi["path"] == "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    assert (avi["fps"], avi["audio_sample_rate_in"], avi["audio_channels_in"]) == (25.0, 44100, 2)
    assert avi["duration_s"] == pytest.approx(6.56, abs=0.01) and avi["n_video_frames_decoded"] == 164
    assert m.iloc[0]["audio_channels_in"] == 6 and m.iloc[0]["audio_padded_s"] == 0.0
    assert 0.4 < m.iloc[2]["audio_padded_s"] < 0.5  # d0 has 0.5 s of sound
    # rows of the arrays are the decoded clips of the manifest rows
    assert np.array_equal(cache.frames[3], decode_clip(tmp_path / "ds" / "videos" / avi["path"], **DECODE).frames)
    assert levels(cache.frames[1]).tolist() == list(range(8))
    report = json.loads((out / "report.json").read_text())
    assert report["n_decoded"] == 4 and report["n_skipped"] == 0 and report["per_subset"] == {
        "training": 2, "validation": 2}
    assert report["audio_padded_clips"] == 1


@needs_fixtures
def test_bad_files_error_or_skip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    corrupt = src / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    silent = synth(src / "silent.mp4", audio_s=None)
    cfg = make_dataset(tmp_path / "ds", extra={"zz_corrupt": corrupt, "zz_silent": silent})
    out = tmp_path / "features"
    out.mkdir()
    (out / "frames.npy").write_bytes(b"previous good cache")

    with pytest.raises(DecodeError) as e:  # default on_error: error
        extract_features(cfg, out)
    msg = str(e.value)
    assert "zz_corrupt.mp4" in msg and "on_error: skip" in msg and "report.json" in msg
    assert (out / "frames.npy").read_bytes() == b"previous good cache"  # failure leaves the old cache
    assert sorted(os.listdir(tmp_path)) == ["ds", "features", "src"]
    with pytest.raises(DecodeError, match="zz_corrupt.mp4"):  # same with worker processes (no hang)
        extract_features(dataclasses.replace(cfg, workers=2), out)
    assert (out / "frames.npy").read_bytes() == b"previous good cache"

    cfg_skip = dataclasses.replace(cfg, on_error="skip")
    res = extract_features(cfg_skip, out)
    assert res.n_decoded == 4 and res.skipped_counts() == {"unreadable_container": 1, "no_audio_stream": 1}
    report = json.loads((out / "report.json").read_text())
    assert str(tmp_path) not in json.dumps(report["skipped"])  # relative paths only: location-independent
    assert report["n_skipped"] == 2
    assert report["skipped"]["no_audio_stream"][0]["path"] == "Digits/zz_silent.mp4"
    assert report["skipped"]["unreadable_container"][0]["id"] == "zz_corrupt"
    cache = FeatureCache(out)
    assert len(cache) == 4 and "zz_silent" not in set(cache.manifest["id"])
    assert cache.frames.shape[0] == cache.logmel.shape[0] == 4

    # a missing file: error by default (before decoding anything), counted with skip
    (tmp_path / "ds" / "videos" / "Digits" / "d1.mp4").unlink()
    with pytest.raises(DecodeError, match="have no file"):
        extract_features(cfg, out)
    res = extract_features(cfg_skip, out)
    assert res.skipped_counts()["missing_file"] == 1 and res.n_decoded == 3


def test_all_skipped_raises(tmp_path: Path) -> None:
    videos = tmp_path / "videos" / "A"
    videos.mkdir(parents=True)
    synth(videos / "x.mp4", audio_s=None)
    (tmp_path / "ann.json").write_text(json.dumps(
        {"labels": ["A"], "database": {"x": {"subset": "training", "label": "A"}}}))
    cfg = FeatureConfig(video_dir="videos", annotation="ann.json", on_error="skip", workers=1)
    with pytest.raises(DataError, match="no video could be used"):
        extract_features(cfg, tmp_path / "out", base_dir=tmp_path)
    assert not (tmp_path / "out").exists()


@needs_fixtures
def test_extraction_is_deterministic(tmp_path: Path) -> None:
    cfg = make_dataset(tmp_path / "ds")
    par = dataclasses.replace(cfg, workers=2)
    extract_features(par, tmp_path / "a")
    extract_features(par, tmp_path / "b")
    extract_features(cfg, tmp_path / "c")  # workers=1
    for name in ("frames.npy", "logmel.npy", "manifest.parquet", "labels.json", "report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in ("frames.npy", "logmel.npy", "manifest.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name
    assert pd.read_parquet(tmp_path / "a" / "manifest.parquet").shape[0] == 4
