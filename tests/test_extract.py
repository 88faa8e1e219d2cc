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
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from xmkd.data import video as video_mod
from xmkd.data.features import FeatureCache, FeatureConfig, config_from_params, extract_features, load_annotation
from xmkd.data.video import VideoDecodeError, clip_indices, decode_clip, uniform_indices, write_video
from xmkd.errors import ConfigError, DataError, DecodeError
from xmkd.models.student import StudentOutput

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


# ------------------------------------------------------------------------------------------ multi-clip evaluation


def test_clip_indices() -> None:
    # 24 frames, 3 clips of 4: the 12-frame uniform grid dealt out in turn; each clip spans the whole video
    assert clip_indices(24, 4, 3).tolist() == [[1, 7, 13, 19], [3, 9, 15, 21], [5, 11, 17, 23]]
    assert clip_indices(164, 8, 1).tolist() == [uniform_indices(164, 8).tolist()]  # K = 1: the single clip
    c = clip_indices(164, 8, 3)
    assert c[1].tolist() == uniform_indices(164, 8).tolist()  # odd K: the middle clip is the single clip
    assert np.all(np.diff(c, axis=0) > 0) and np.all(np.diff(c, axis=1) > 0)  # temporal order, no shared frame
    # short video (12 < K*T): clips share frames but stay ordered
    assert clip_indices(12, 8, 3).tolist() == [
        [0, 1, 3, 4, 6, 7, 9, 10], [0, 2, 3, 5, 6, 8, 9, 11], [1, 2, 4, 5, 7, 8, 10, 11]]
    with pytest.raises(ValueError):
        clip_indices(24, 4, 0)


@needs_fixtures
def test_decode_eval_clips_real() -> None:
    single = decode_clip(AVI, **DECODE)
    assert single.eval_frames is None and single.eval_frame_indices is None
    multi = decode_clip(AVI, **DECODE, eval_clips=3)
    assert multi.eval_frames is not None and multi.eval_frame_indices is not None
    assert multi.eval_frames.shape == (3, 8, 32, 32, 3) and multi.eval_frames.dtype == np.uint8
    assert np.array_equal(multi.frames, single.frames)  # K does not change the single clip
    assert multi.eval_frame_indices.tolist() == clip_indices(164, 8, 3).tolist()
    assert np.array_equal(multi.eval_frames[1], single.frames)  # middle clip = the single clip
    assert len({clip.tobytes() for clip in multi.eval_frames}) == 3  # three different clips
    assert np.all(np.diff(multi.eval_frame_indices.mean(axis=1)) > 0)  # in temporal order
    # the content is the frames at those indices: the 24-frame uniform grid, dealt out to the clips in turn
    grid = decode_clip(AVI, frames=24, size=32, sample_rate=8000, audio_seconds=1.0).frames
    assert np.array_equal(multi.eval_frames, grid.reshape(8, 3, 32, 32, 3).transpose(1, 0, 2, 3, 4))


def test_eval_clips_content_and_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [[0, 4, 8, 12], [2, 6, 10, 14], [3, 7, 11, 15]]  # clip_indices(16, 4, 3), by hand
    for name in ("v.mp4", "v.mkv"):  # declared frame count / estimated from duration x fps
        p = synth(tmp_path / name, n_frames=16, fps=8)
        clip = decode_clip(p, frames=4, size=32, sample_rate=8000, audio_seconds=1.0, eval_clips=3)
        assert clip.eval_frames is not None
        assert [levels(c).tolist() for c in clip.eval_frames] == expected, name
        assert levels(clip.frames).tolist() == expected[1]
    p = synth(tmp_path / "s.mp4", n_frames=16)
    kw = dict(frames=4, size=32, sample_rate=8000, audio_seconds=1.0)
    # a declared count one too high: the single clip is still complete (accepted with K = 1), so K = 3
    # accepts the file too and re-plans its clips from the 16 decoded frames
    monkeypatch.setattr(video_mod, "_planned_frame_count", lambda s, c: (17, True))
    one = decode_clip(p, **kw)
    three = decode_clip(p, **kw, eval_clips=3)
    assert levels(one.frames).tolist() == levels(three.frames).tolist() == [2, 6, 10, 14]
    assert three.eval_frames is not None and three.eval_frame_indices is not None
    assert three.eval_frame_indices.tolist() == clip_indices(16, 4, 3).tolist()
    assert [levels(c).tolist() for c in three.eval_frames] == clip_indices(16, 4, 3).tolist()
    # no count at all: counted, then decoded again with the true count
    monkeypatch.setattr(video_mod, "_planned_frame_count", lambda s, c: (None, False))
    three = decode_clip(p, **kw, eval_clips=3)
    assert three.eval_frames is not None
    assert [levels(c).tolist() for c in three.eval_frames] == clip_indices(16, 4, 3).tolist()
    with pytest.raises(ValueError, match="eval_clips"):
        decode_clip(p, **kw, eval_clips=0)


@needs_fixtures
def test_extract_eval_clips(tmp_path: Path) -> None:
    cfg = make_dataset(tmp_path / "ds")
    extract_features(cfg, tmp_path / "k1")
    res = extract_features(dataclasses.replace(cfg, eval_clips=3), tmp_path / "k3")
    assert res.n_decoded == 4
    # K = 1: no evaluation file and nothing in report.json about it (the cache is as before the option)
    assert sorted(os.listdir(tmp_path / "k1")) == sorted(
        ["frames.npy", "logmel.npy", "manifest.parquet", "labels.json", "report.json"])
    k1 = FeatureCache(tmp_path / "k1")
    assert k1.eval_clips == 1 and k1.eval_frames is None and k1.eval_rows is None
    assert "eval_clips" not in k1.report["config"] and "eval_frames" not in k1.report["shapes"]
    with pytest.raises(DataError, match="eval_clips"):
        k1.eval_positions(np.array([2]))
    # K = 3: the training arrays are byte-identical; the evaluation rows get three clips each
    for name in ("frames.npy", "logmel.npy", "manifest.parquet", "labels.json"):
        assert (tmp_path / "k1" / name).read_bytes() == (tmp_path / "k3" / name).read_bytes(), name
    k3 = FeatureCache(tmp_path / "k3")
    assert k3.eval_clips == 3 and k3.eval_frames is not None and k3.eval_rows is not None
    assert isinstance(k3.eval_frames, np.memmap) and not k3.eval_frames.flags.writeable
    assert k3.eval_frames.shape == (2, 3, 8, 32, 32, 3) and k3.eval_frames.dtype == np.uint8
    assert k3.eval_rows.tolist() == k3.indices("validation").tolist() == [2, 3]
    assert k3.eval_positions(np.array([3, 2])).tolist() == [1, 0]
    with pytest.raises(DataError, match="no evaluation clips"):
        k3.eval_positions(k3.indices("training"))
    assert k3.report["config"]["eval_clips"] == 3 and k3.report["shapes"]["eval_frames"] == [2, 3, 8, 32, 32, 3]
    avi = decode_clip(tmp_path / "ds" / "videos" / k3.manifest.iloc[3]["path"], **DECODE, eval_clips=3)
    assert np.array_equal(k3.eval_frames[1], avi.eval_frames)
    assert np.array_equal(k3.eval_frames[:, 1], k3.frames[2:])  # middle clip = the single clip
    # d0: 12 frames, 3 clips of 8 (fewer frames than K*T): ordered, sharing some frames
    assert [levels(c).tolist() for c in k3.eval_frames[0]] == clip_indices(12, 8, 3).tolist()
    # results do not depend on the worker processes
    extract_features(dataclasses.replace(cfg, eval_clips=3, workers=2), tmp_path / "k3w")
    for name in ("eval_frames.npy", "eval_rows.npy", "frames.npy"):  # (report.json records workers)
        assert (tmp_path / "k3" / name).read_bytes() == (tmp_path / "k3w" / name).read_bytes(), name


@needs_fixtures
def test_extract_eval_clips_skip_and_errors(tmp_path: Path) -> None:
    cfg = make_dataset(tmp_path / "ds")
    ann_path = Path(cfg.annotation)
    ann = json.loads(ann_path.read_text())
    bad = tmp_path / "ds" / "videos" / "Digits" / "d5.mp4"  # an evaluation video that will not decode
    bad.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    ann["database"]["d5"] = {"subset": "validation", "label": "Digits"}
    ann_path.write_text(json.dumps(ann))
    res = extract_features(dataclasses.replace(cfg, eval_clips=2, on_error="skip"), tmp_path / "out")
    assert res.n_decoded == 4 and res.skipped_counts() == {"unreadable_container": 1}
    cache = FeatureCache(tmp_path / "out")
    assert cache.eval_frames is not None and cache.eval_frames.shape == (2, 2, 8, 32, 32, 3)
    assert cache.eval_rows is not None and cache.eval_rows.tolist() == [2, 3]
    with pytest.raises(ConfigError, match="eval_clips"):
        config_from_params({"features": {"eval_clips": 0}})
    (tmp_path / "out" / "eval_rows.npy").unlink()  # half a multi-clip cache
    with pytest.raises(DataError, match="eval_rows"):
        FeatureCache(tmp_path / "out")


def test_average_clip_predictions_by_hand() -> None:
    from xmkd.experiment import average_clip_predictions

    ln = np.log
    clip0 = {"logits": np.array([[0.0, ln(2), 0.0], [0.0, 0.0, 0.0]], np.float32),  # softmax .25 .5 .25 | 1/3 x3
             "features": np.array([[1.0, 0.0], [2.0, 2.0]], np.float32), "labels": np.array([0, 2]),
             "gate_mean": np.array([0.2, 0.4], np.float32)}
    clip1 = {"logits": np.array([[ln(3), 0.0, 0.0], [0.0, 0.0, ln(4)]], np.float32),  # .6 .2 .2 | 1/6 1/6 4/6
             "features": np.array([[0.0, 1.0], [4.0, 0.0]], np.float32), "labels": np.array([0, 2]),
             "gate_mean": np.array([0.6, 0.0], np.float32)}
    out = average_clip_predictions([clip0, clip1])
    assert set(out) == {"probs", "features", "labels", "gate_mean"}
    np.testing.assert_allclose(out["probs"], [[0.425, 0.35, 0.225], [0.25, 0.25, 0.5]], rtol=1e-6)
    assert out["probs"].argmax(1).tolist() == [0, 2]
    np.testing.assert_allclose(out["features"], [[0.5, 0.5], [3.0, 1.0]])
    np.testing.assert_allclose(out["gate_mean"], [0.4, 0.2], rtol=1e-6)
    assert out["labels"].tolist() == [0, 2]
    # averaging probabilities is not averaging logits; a case where the two rules differ:
    a = {"logits": np.array([[10.0, 0.0, 9.0]], np.float32), "features": np.zeros((1, 1), np.float32),
         "labels": np.array([0])}
    b = {"logits": np.array([[-10.0, 0.0, -9.0]], np.float32), "features": np.zeros((1, 1), np.float32),
         "labels": np.array([0])}
    probs = average_clip_predictions([a, b])["probs"]
    sa, sb = np.exp([10.0, 0.0, 9.0]), np.exp([-10.0, 0.0, -9.0])
    np.testing.assert_allclose(probs[0], (sa / sa.sum() + sb / sb.sum()) / 2, rtol=1e-5)
    assert probs[0].argmax() == 1  # mean softmax: class 1 (0.5 from clip b); mean logits [0, 0, 0] ties at 0
    single = average_clip_predictions([clip0])  # K = 1: the softmax of that clip
    np.testing.assert_allclose(single["probs"][0], [0.25, 0.5, 0.25], rtol=1e-6)
    with pytest.raises(ValueError, match="same videos"):
        average_clip_predictions([clip0, {**clip1, "labels": np.array([0, 1])}])
    with pytest.raises(ValueError, match="at least one"):
        average_clip_predictions([])


class _PhaseStudent(torch.nn.Module):
    """Stub student: class by the phase of a clip's mean grey level L, theta = pi (L / 15 - 0.5).

    On the :func:`synth` videos with 6 frames, 2 frames per clip and 3 clips, the clips' mean levels are
    22.5, 37.5, 52.5 (theta = pi, 2 pi, 3 pi): clip 0 -> class 0, clip 1 (the single clip) -> class 1, clip 2
    -> class 0, each with probability ~1 (logits +-5).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> StudentOutput:
        level = x.float().mean(dim=(1, 2, 3, 4))  # (B,)
        c = torch.cos(torch.pi * (level / 15.0 - 0.5))
        logits = 5.0 * torch.stack([-c, c], dim=1)
        feature = torch.stack([c, torch.ones_like(c)], dim=1)
        return StudentOutput(feature[:, None, :], feature, logits)


class _NoDiagnostics(torch.nn.Module):
    def diagnostics(self, student: StudentOutput, teacher: object) -> dict[str, torch.Tensor]:
        return {}


def test_evaluate_averages_clips(tmp_path: Path) -> None:
    from xmkd.distill import TeacherOutputs
    from xmkd.experiment import evaluate
    from xmkd.train import TrainConfig

    videos = tmp_path / "videos" / "A"
    videos.mkdir(parents=True)
    db = {}
    for vid, subset in (("tr0", "training"), ("tr1", "training"), ("te0", "testing"), ("te1", "testing")):
        synth(videos / f"{vid}.mp4", n_frames=6, fps=6)
        db[vid] = {"subset": subset, "label": "A"}
    (tmp_path / "ann.json").write_text(json.dumps({"labels": ["A", "B"], "database": db}))
    cfg = FeatureConfig(video_dir=str(tmp_path / "videos"), annotation=str(tmp_path / "ann.json"), frames=2,
                        size=32, workers=1)
    rc = SimpleNamespace(train=TrainConfig(device="cpu", amp=False, batch_size=2),
                         evaluate=SimpleNamespace(batch_size=3, map_topk=10))
    teacher = TeacherOutputs(np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32))
    results = {}
    for k in (1, 3):
        extract_features(dataclasses.replace(cfg, eval_clips=k), tmp_path / f"k{k}")
        cache = FeatureCache(tmp_path / f"k{k}")
        assert cache.eval_clips == k
        results[k] = evaluate(_PhaseStudent(), _NoDiagnostics(), rc, cache, cache.frames, teacher, None)
    (m1, pred1), (m3, pred3) = results[1], results[3]
    assert pred1.tolist() == [1, 1] and m1["top1"] == 0.0  # the single clip (clip 1) alone: class 1
    assert pred3.tolist() == [0, 0] and m3["top1"] == 1.0  # mean softmax of 3 clips: ~(2/3, 1/3) -> class 0
    # an audio student's inputs (not the cache's frames) are never averaged
    cache = FeatureCache(tmp_path / "k3")
    _, pred = evaluate(_PhaseStudent(), _NoDiagnostics(), rc, cache, np.array(cache.frames), teacher, None)
    assert pred.tolist() == [1, 1]
