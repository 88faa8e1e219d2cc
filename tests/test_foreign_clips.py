"""Clips that are not the built benchmark's (issue 12: a user's own digit clips stopped with a raw pandas KeyError in
embed_teacher's per-condition lookup in data/benchmark/provenance.parquet).

Unit level: per-condition lookups do not read the provenance table for foreign clips. End to end: a small folder
of foreign clips (WebM VP9/Opus and Matroska MJPEG/FLAC, 48x48 at 12 fps, 48 kHz sound, encoded here with PyAV)
through the real DVC pipeline (extract_features -> embed_teacher with the trained audio teacher -> distill ->
report) on the tiny params: nothing reads the benchmark's per-clip conditions, no per-condition metric is written,
embed_conditions says the robustness study does not apply, and a robustness run left on stops with that message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_in

from xmkd.experiment import PROVENANCE, clip_conditions


def test_foreign_clips_have_no_conditions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    PROVENANCE.parent.mkdir(parents=True)
    pd.DataFrame({"id": ["b0", "b1"], "audio_condition": ["clean", "background"]}).to_parquet(PROVENANCE)
    rc = SimpleNamespace(irrelevant_rate=None, condition_keys=None)
    foreign = SimpleNamespace(manifest=pd.DataFrame({"id": ["my_clip_0", "my_clip_1"]}))
    assert clip_conditions(rc, foreign) is None  # before the fix: KeyError
    built = SimpleNamespace(manifest=pd.DataFrame({"id": ["b1", "b0"]}))
    assert clip_conditions(rc, built).tolist() == ["background", "clean"]


SR, FPS, SIZE = 48_000, 12, 48
#: (container, video codec, its pixel format, sound codec, sample format): the two kinds the issue's user had
KINDS = [("webm", "libvpx-vp9", "yuv420p", "libopus", "s16"), ("mkv", "mjpeg", "yuvj420p", "flac", "s16")]


def encode_clip(path: Path, digit: int, kind: tuple[str, str, str, str, str], seconds: float = 1.5) -> None:
    """A clip of ``digit``: a bright bar at a digit-dependent height moving right, and a tone of 300 + 80 * digit Hz."""
    _, vcodec, pix, acodec, afmt = kind
    n = int(seconds * FPS)
    frames = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    for t in range(n):
        row = 4 + 4 * digit
        frames[t, row : row + 6, (3 * t) % SIZE : (3 * t) % SIZE + 8] = (255, 200, 80)
    wave = 0.3 * np.sin(2 * np.pi * (300 + 80 * digit) * np.arange(int(seconds * SR)) / SR)
    with av.open(str(path), "w") as out:
        v = out.add_stream(vcodec, rate=FPS, options={"threads": "1"})
        v.width, v.height, v.pix_fmt = SIZE, SIZE, pix
        a = out.add_stream(acodec, rate=SR, layout="mono")
        for t, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix)
            f.pts = t
            out.mux(v.encode(f))
        out.mux(v.encode(None))
        chunk = av.AudioFrame.from_ndarray(np.rint(wave * 32767).astype(np.int16)[None], format=afmt, layout="mono")
        chunk.sample_rate, chunk.pts = SR, 0
        out.mux(a.encode(chunk))
        out.mux(a.encode(None))


def foreign_folder(root: Path, digits: tuple[int, ...] = (1, 4, 7), per_digit: int = 4) -> Path:
    """``root/my_clips``: per digit ``per_digit`` clips (3 training, 1 testing), alternating the two kinds, and
    ``annotation.json`` in the reference format."""
    d = root / "my_clips"
    d.mkdir(parents=True)
    db = {}
    for digit in digits:
        for k in range(per_digit):
            kind = KINDS[k % 2]
            vid = f"my_{digit}_{k}"
            encode_clip(d / f"{vid}.{kind[0]}", digit, kind)
            db[vid] = {"subset": "testing" if k == per_digit - 1 else "training", "label": str(digit)}
    (d / "annotation.json").write_text(json.dumps({"labels": [str(i) for i in range(10)], "database": db}))
    return d


def _params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def test_own_clips_end_to_end(tiny_repo_copy: Callable[[str], Path]) -> None:
    repo = tiny_repo_copy("foreign")
    clips = foreign_folder(repo)
    params = _params(repo)
    params["features"] |= {"video_dir": "my_clips", "annotation": "my_clips/annotation.json"}
    params["robustness"]["methods"] = []  # the study needs the built benchmark's sound tracks (docs/pipeline.md)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(repo, ["dvc", "repro"])

    report = json.loads((repo / "data/features/report.json").read_text())
    assert report["n_decoded"] == 12 and not report.get("skipped")
    teacher = json.loads((repo / "metrics/teacher.json").read_text())
    assert set(teacher) == {"test_top1"}  # per-condition top-1 only where conditions are known
    assert (repo / "data/teacher_conditions/NOT_APPLICABLE.txt").is_file()
    ids = (repo / "data/teacher/ids.txt").read_text().split()
    assert sorted(ids) == sorted(json.loads((clips / "annotation.json").read_text())["database"])
    for run in params["methods"]:
        seeds = json.loads((repo / f"metrics/eval/{run}.json").read_text())["seeds"]
        assert sorted(seeds) == ["0", "1"]
        assert not any("/" in k for m in seeds.values() for k in m), f"{run} wrote per-condition metrics"
        with np.load(repo / f"data/predictions/{run}.npz") as z:
            assert z["pred"].shape == (2, 3) and set(z["ids"]) == {"my_1_3", "my_4_3", "my_7_3"}
            assert set(z["conditions"]) == {""}
    md = (repo / "reports/results.md").read_text()
    assert "top-1 clean" not in md and "gate clean" not in md
    assert "up to date" in run_in(repo, ["dvc", "status"]).stdout

    # a robustness run left on is refused with the reason and the fix, not a KeyError
    params["robustness"]["methods"] = ["kd"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_in(repo, ["dvc", "repro", "robust@kd-0.0"], check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "does not apply" in out and "robustness.methods: []" in out and "KeyError" not in out
