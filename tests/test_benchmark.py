"""Stage 2 (benchmark build) on a small subset of the real data: real MP4s, annotation format,
provenance, split hygiene, exact condition counts, determinism and subset-independence."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xmkd.data import codec
from xmkd.data.benchmark.build import BenchmarkResult, build_benchmark
from xmkd.data.benchmark.config import AAC_BIT_RATE, CONDITIONS, SPLITS, TARGET_RMS, BenchmarkConfig, config_from_params
from xmkd.data.benchmark.encode import encode_clip
from xmkd.data.benchmark.plan import _blocks, plan_split, round_half_up
from xmkd.data.benchmark.provenance import PROVENANCE_COLUMNS
from xmkd.data.benchmark.raw import RawData, esc50_pool, load_raw
from xmkd.data.benchmark.render import prepare_digits, render_audio, render_video, trajectory
from xmkd.data.sources.layout import FSDD_DIR, MIRROR_ENV
from xmkd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get(MIRROR_ENV) or REPO.parent / "shared" / "datasets")
pytestmark = pytest.mark.skipif(
    not (MIRROR / FSDD_DIR).is_dir(), reason=f"data mirror {MIRROR} not found (set {MIRROR_ENV})"
)

SMALL = BenchmarkConfig(n_train=40, n_val=10, n_test=20)
PROVENANCE_NAMES = [name for name, _ in PROVENANCE_COLUMNS]


@pytest.fixture(scope="module")
def raw() -> RawData:
    return load_raw(MIRROR, SMALL.sample_rate)


@pytest.fixture(scope="module")
def built(raw: RawData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BenchmarkResult]:
    out = tmp_path_factory.mktemp("bench") / "benchmark"
    return out, build_benchmark(SMALL, raw, out, workers=2)


@pytest.fixture(scope="module")
def provenance(built: tuple[Path, BenchmarkResult]):  # noqa: ANN201 - pandas.DataFrame
    import pyarrow.parquet as pq

    return pq.read_table(built[0] / "provenance.parquet").to_pandas()


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_videos_are_real_mp4_with_h264_and_flac(built: tuple[Path, BenchmarkResult], provenance) -> None:  # noqa: ANN001
    import av

    out, _ = built
    assert len(list((out / "videos").rglob("*.mp4"))) == 70
    for rel in provenance["path"]:
        with av.open(str(out / rel)) as c:
            assert c.format.name.startswith("mov,mp4")
            assert [s.codec_context.name for s in c.streams.video] == ["h264"]
            assert [s.codec_context.name for s in c.streams.audio] == ["flac"]
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.width, v.height, v.average_rate) == (32, 32, 8)
            assert (a.rate, a.layout.name) == (8000, "mono")
            assert abs(float(c.duration) / 1e6 - SMALL.frames / SMALL.fps) < 0.15
        with av.open(str(out / rel)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        with av.open(str(out / rel)) as c:
            sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
        assert len(frames) == SMALL.frames and frames[0].shape == (32, 32, 3)
        assert np.abs(frames[0][..., 0].astype(int) - frames[0][..., 2]).max() <= 2  # gray
        assert max(f.max() for f in frames) > 100  # a visible digit
        assert sound.shape == (1, SMALL.n_samples) and sound.dtype == np.int16
        assert 0.04 < np.sqrt(np.mean((sound[0] / 32768.0) ** 2)) < 0.06  # TARGET_RMS, losslessly


def test_decoded_content_matches_the_rendered_clip(built: tuple[Path, BenchmarkResult], raw: RawData) -> None:
    import av

    out, _ = built
    plans = plan_split(SMALL, "train", raw)[:3]
    digits, _ = prepare_digits(SMALL, raw, [p for s in SPLITS for p in plan_split(SMALL, s, raw)])
    for p in plans:
        frames = render_video(p, digits[(p.mnist_origin, p.mnist_index)], SMALL)
        audio = render_audio(p, raw, SMALL.n_samples)
        with av.open(str(out / p.path)) as c:
            decoded = np.stack([f.to_ndarray(format="gray") for f in c.decode(video=0)])
        with av.open(str(out / p.path)) as c:
            sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
        assert np.abs(decoded.astype(float) - frames).mean() < 3.0  # crf 18: near-lossless
        np.testing.assert_array_equal(sound, codec.pcm16(audio))  # FLAC: the rendered samples, to the bit


def test_annotation_format(built: tuple[Path, BenchmarkResult]) -> None:
    out, _ = built
    text = (out / "annotation.json").read_text()
    assert text.endswith("}\n")
    ann = json.loads(text)
    assert set(ann) == {"labels", "database"} and ann["labels"] == [str(d) for d in range(10)]
    db = ann["database"]
    assert len(db) == 70 and list(db) == sorted(db)
    subsets = {"train": "training", "val": "validation", "test": "testing"}
    for cid, entry in db.items():
        split = re.fullmatch(r"(train|val|test)_\d{5}", cid).group(1)  # type: ignore[union-attr]
        assert entry == {"subset": subsets[split], "label": entry["label"]} and entry["label"] in ann["labels"]
        assert (out / "videos" / entry["label"] / f"{cid}.mp4").is_file()
    for split, n in (("training", 40), ("validation", 10), ("testing", 20)):
        labels = [e["label"] for e in db.values() if e["subset"] == split]
        assert len(labels) == n and all(labels.count(str(d)) == n // 10 for d in range(10))


def test_provenance_columns_and_split_hygiene(provenance, raw: RawData) -> None:  # noqa: ANN001
    df = provenance
    assert list(df.columns) == PROVENANCE_NAMES and list(df["id"]) == sorted(df["id"])
    origin = {"training": "train", "validation": "train", "testing": "test"}
    assert (df["mnist_origin"] == df["subset"].map(origin)).all()
    for o in ("train", "test"):
        rows = df[df["mnist_origin"] == o]
        assert rows["mnist_index"].is_unique  # distinct images, and train/val never share one
        assert (raw.mnist[o][1][rows["mnist_index"]] == rows["label"]).all()  # the image shows the label
    speech = df[df["audio_condition"] != "background"]
    takes = speech["fsdd_file"].str.extract(r"^\d_[a-z]+_(\d+)\.wav$")[0].astype(int)
    spoken = speech["fsdd_file"].str[0].astype(int)
    assert (spoken == speech["spoken_digit"]).all()
    assert ((takes < 5) == (speech["subset"] == "testing")).all()  # FSDD official split
    test_pool, trainval_pool = set(esc50_pool(raw, "test")), set(esc50_pool(raw, "trainval"))
    assert not test_pool & trainval_pool and len(test_pool) == 100 and len(trainval_pool) == 300
    for _, r in df.iterrows():
        assert r["esc50_file"] in (test_pool if r["subset"] == "testing" else trainval_pool)
        if r["audio_condition"] == "clean":
            assert r["spoken_digit"] == r["label"] and SMALL.snr_db[0] <= r["snr_db"] <= SMALL.snr_db[1]
        elif r["audio_condition"] == "mismatched":
            assert r["spoken_digit"] != r["label"] and r["spoken_digit"] >= 0
        else:
            assert r["spoken_digit"] == -1 and pd.isna(r["fsdd_file"]) and math.isnan(r["snr_db"])
            assert r["fsdd_crop_start"] == -1 and r["speech_offset"] == -1
        assert 0 <= r["start_x"] <= 8 and 0 <= r["start_y"] <= 8
        assert 1.0 <= math.hypot(r["velocity_x"], r["velocity_y"]) <= 2.5


def test_provenance_schema_is_fixed(built: tuple[Path, BenchmarkResult]) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(built[0] / "provenance.parquet")
    assert [(f.name, str(f.type)) for f in table.schema] == [
        (n, {"string": "string", "int64": "int64", "float64": "double"}[k]) for n, k in PROVENANCE_COLUMNS
    ]
    assert table.schema.metadata is None  # no pandas index / metadata
    cond = table.column("audio_condition").to_pylist()
    files = table.column("fsdd_file").to_pylist()
    assert all((f is None) == (c == "background") for f, c in zip(files, cond, strict=True))


def test_irrelevant_counts_are_exact(provenance, built: tuple[Path, BenchmarkResult]) -> None:  # noqa: ANN001
    _, result = built
    for subset, split, n in (("training", "train", 40), ("validation", "val", 10), ("testing", "test", 20)):
        cond = provenance.loc[provenance["subset"] == subset, "audio_condition"]
        n_irr = round_half_up(SMALL.irrelevant_rate * n)
        n_mis = round_half_up(SMALL.mismatch_share * n_irr)
        assert (cond != "clean").sum() == n_irr and (cond == "mismatched").sum() == n_mis
        assert result.counts[split] == {
            "clips": n,
            "clean": n - n_irr,
            "mismatched": n_mis,
            "background": n_irr - n_mis,
        }
    recipe = json.loads((built[0] / "recipe.json").read_text())
    assert recipe["counts"] == result.counts and len(recipe["pca"]["explained_variance_ratio"]) == SMALL.pca_keep
    assert 0 < recipe["pca"]["explained_variance_kept"] < 1


def test_full_size_condition_counts_balanced_over_digits() -> None:
    cfg = BenchmarkConfig()
    for split in SPLITS:
        n = cfg.n_clips(split)
        counts = np.zeros((10, 3), dtype=int)
        for labels, cond in _blocks(cfg, split):
            for d in labels:
                counts[d, CONDITIONS.index(cond[d])] += 1
        n_irr = round_half_up(cfg.irrelevant_rate * n)
        assert counts[:, 1:].sum() == n_irr and counts[:, 1].sum() == round_half_up(cfg.mismatch_share * n_irr)
        assert np.ptp(counts[:, 0]) <= 1 and np.ptp(counts[:, 1]) <= 2 and np.ptp(counts[:, 2]) <= 2


def _build_in_subprocess(out: Path, *args: str, **env: str) -> None:
    import subprocess
    import sys

    run_env = {**os.environ, "XMKD_DATA_MIRROR": str(MIRROR), **env}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "build_small_benchmark.py"), str(out), *args],
        env=run_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def _differences(got: dict[str, str], want: dict[str, str]) -> list[str]:
    return sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))


def _recipe_without(folder: Path, *keys: str) -> dict:
    recipe = json.loads((folder / "recipe.json").read_text())
    for k in keys:
        recipe["encoding"].pop(k)
    return recipe


def test_build_is_byte_identical_in_one_process_and_in_workers(
    built: tuple[Path, BenchmarkResult], tmp_path: Path
) -> None:
    """In-process encoding, one BLAS/OpenMP/torch thread, a fresh process, vs the fixture's 2 encoder
    workers in this process (2 threads): every byte of every file."""
    again = tmp_path / "benchmark"
    _build_in_subprocess(again, "--workers", "0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    diff = _differences(_digest(again), _digest(built[0]))
    assert not diff, f"{len(diff)} files differ between in-process and 2-worker encoding: {diff[:10]}"


def test_build_is_byte_identical_with_baseline_x86_64_kernels(
    built: tuple[Path, BenchmarkResult], tmp_path: Path
) -> None:
    """What another x86-64 CPU would compute: OpenBLAS's Prescott kernels, ATen without AVX, FFmpeg with no
    SIMD at all and x264 without assembly give the same videos, annotation and provenance."""
    again = tmp_path / "benchmark"
    _build_in_subprocess(again, "--baseline-cpu", OPENBLAS_CORETYPE="Prescott", ATEN_CPU_CAPABILITY="default")
    got, want = _digest(again), _digest(built[0])
    diff = [k for k in _differences(got, want) if k != "recipe.json"]
    assert not diff, f"{len(diff)} files differ when built with baseline x86-64 kernels: {diff[:10]}"
    # the recipe differs only in recording x264's no-asm
    assert _recipe_without(again, "x264_params") == _recipe_without(built[0], "x264_params")


COMMITTED_DIGEST = REPO / "tests" / "data" / "small_benchmark_sha256.json"
UPDATE_ENV = "XMKD_UPDATE_DIGEST"


def test_small_build_matches_the_committed_digest(built: tuple[Path, BenchmarkResult]) -> None:
    """The small build's SHA-256 per file against the committed value, made on another machine.

    Regenerate (after a deliberate change of the recipe or the PyAV pin):
    ``XMKD_UPDATE_DIGEST=1 python -m pytest tests/test_benchmark.py -k committed``."""
    got = _digest(built[0])
    encoding = json.loads((built[0] / "recipe.json").read_text())["encoding"]
    if os.environ.get(UPDATE_ENV):
        COMMITTED_DIGEST.write_text(json.dumps({"encoding": encoding, "sha256": got}, indent=1, sort_keys=True) + "\n")
    committed = json.loads(COMMITTED_DIGEST.read_text())
    diff = _differences(got, committed["sha256"])
    if diff:
        kinds = sorted({Path(k).suffix or k for k in diff})
        hint = (
            f"this machine's FFmpeg build {encoding} differs from the committed one {committed['encoding']}"
            if encoding != committed["encoding"]
            else "same PyAV/FFmpeg build, so the rendering (PCA, resize, rounding) or the recipe changed"
        )
        pytest.fail(
            f"the small benchmark differs from {COMMITTED_DIGEST.relative_to(REPO)} in {len(diff)} files "
            f"({', '.join(kinds)}; first: {diff[:5]}): {hint}. If the change is deliberate, regenerate with "
            f"{UPDATE_ENV}=1 python -m pytest tests/test_benchmark.py -k committed, and say so in the commit."
        )


def test_clip_content_does_not_depend_on_n(provenance, raw: RawData, tmp_path: Path) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    bigger = replace(SMALL, n_train=60, n_test=30)
    build_benchmark(bigger, raw, tmp_path / "b", workers=2)
    big = pq.read_table(tmp_path / "b" / "provenance.parquet").to_pandas().set_index("id")
    small = provenance.set_index("id")
    assert len(big) == 100
    row = small.loc["train_00003"]
    assert big.loc["train_00003"].equals(row)
    assert big.loc[small.index].equals(small)  # every clip of the subset, field for field (NaNs included)


def test_render_audio_hits_the_snr_and_level(raw: RawData) -> None:
    plan = next(p for p in plan_split(SMALL, "train", raw) if p.audio_condition == "clean")
    n = SMALL.n_samples
    mix = render_audio(plan, raw, n).astype(np.float64)
    seg = raw.fsdd[plan.fsdd_file][plan.fsdd_crop_start : plan.fsdd_crop_start + n].astype(np.float64)
    speech = np.zeros(n)
    speech[plan.speech_offset : plan.speech_offset + seg.size] = seg
    bg = raw.esc50[plan.esc50_file][plan.esc50_offset : plan.esc50_offset + n].astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([speech, bg], axis=1), mix, rcond=None)  # mix = a*speech + b*bg
    snr = 10 * np.log10(a**2 * np.mean(seg**2) / (b**2 * np.mean(bg**2)))
    assert abs(snr - plan.snr_db) < 0.05
    assert abs(np.sqrt(np.mean(mix**2)) - TARGET_RMS) < 1e-4


def test_motion_stays_in_frame_and_bounces(raw: RawData) -> None:
    lim = SMALL.size - SMALL.digit_size
    bounced = 0
    for p in plan_split(SMALL, "train", raw):
        xs, ys = trajectory(p, SMALL)
        assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= lim and ys.max() <= lim
        step = np.hypot(np.diff(xs), np.diff(ys))
        assert step.max() <= SMALL.speed[1] + 1.5
        bounced += int(np.any(np.diff(np.sign(np.diff(xs))) != 0) or np.any(np.diff(np.sign(np.diff(ys))) != 0))
    assert bounced > 0


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="pca_kep"):
        config_from_params({"benchmark": {"pca_kep": 8}})
    with pytest.raises(ConfigError, match="multiple of 10"):
        config_from_params({"benchmark": {"n_train": 45}})
    with pytest.raises(ConfigError, match="speed"):
        config_from_params({"benchmark": {"speed": [3.0, 1.0]}})
    with pytest.raises(ConfigError, match="audio_codec"):
        config_from_params({"benchmark": {"audio_codec": "mp3"}})
    cfg = config_from_params({"benchmark": {"speed": [1, 2], "n_test": 30}})
    assert cfg.speed == (1.0, 2.0) and cfg.n_test == 30 and cfg.n_samples == 8000


def test_aac_sound_is_an_option(raw: RawData, tmp_path: Path) -> None:
    import av

    plans = plan_split(SMALL, "train", raw)
    p = plans[0]
    digits, _ = prepare_digits(SMALL, raw, plans)
    path = tmp_path / "clip.mp4"
    frames = render_video(p, digits[(p.mnist_origin, p.mnist_index)], SMALL)
    encode_clip(path, frames, render_audio(p, raw, SMALL.n_samples), 8, 8000, 18, audio_codec="aac")
    with av.open(str(path)) as c:
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        assert abs(c.streams.audio[0].bit_rate - AAC_BIT_RATE) < 8000


def test_too_many_clips_for_distinct_images(raw: RawData) -> None:
    with pytest.raises(ConfigError, match="distinct MNIST images"):
        plan_split(replace(SMALL, n_train=4600, n_val=500), "train", raw)


def test_condition_variants_reproduce_the_built_benchmark(
    provenance, raw: RawData, built: tuple[Path, BenchmarkResult]  # noqa: ANN001
) -> None:
    """The robustness study's per-clip sound selection (xmkd.data.conditions) is the builder's own: same
    condition per clip, the very samples the MP4 decodes to for the as-built condition, and the same
    video whatever the rate."""
    import av

    from xmkd.data.conditions import assign_conditions, render_variants

    prov = provenance.set_index("id")
    cond = assign_conditions(SMALL, SMALL.irrelevant_rate)
    assert all(cond[i] == prov.loc[i, "audio_condition"] for i in prov.index)
    ids, waves = render_variants(SMALL, raw)
    plans = {p.id: p for split in SPLITS for p in plan_split(SMALL, split, raw)}
    for k, i in enumerate(ids):
        rendered = render_audio(plans[i], raw, SMALL.n_samples)
        np.testing.assert_array_equal(waves[cond[i]][k], codec.pcm16(rendered)[0] / np.float32(32768))
        if k < 5:
            with av.open(str(built[0] / plans[i].path)) as c:
                rs = av.AudioResampler(format="flt", layout="mono", rate=SMALL.sample_rate)  # as extraction reads it
                got = np.concatenate([o.to_ndarray() for f in c.decode(audio=0) for o in rs.resample(f)], axis=1)
            np.testing.assert_array_equal(waves[cond[i]][k], got[0])
    built_plans = plans
    other = {p.id: p for split in SPLITS for p in plan_split(replace(SMALL, irrelevant_rate=0.8), split, raw)}
    for i, p in built_plans.items():
        q = other[i]
        assert (q.label, q.mnist_index, q.start_x, q.start_y, q.velocity_x, q.velocity_y) == (
            p.label, p.mnist_index, p.start_x, p.start_y, p.velocity_x, p.velocity_y)
