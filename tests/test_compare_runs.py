"""scripts/compare_runs.py: per-seed metrics of two checkouts compared, timings ignored, a difference reported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "scripts" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
assert spec.loader is not None
spec.loader.exec_module(compare_runs)


def _checkout(root: Path, top1: float, seconds: float) -> Path:
    (root / "metrics/eval").mkdir(parents=True)
    doc = {"run": "kd", "seeds": {"0": {"top1": top1, "mAP": 0.2, "train_seconds": seconds}, "1": {"top1": 0.5, "mAP": 0.3}}}
    (root / "metrics/eval/kd.json").write_text(json.dumps(doc))
    (root / "metrics/teacher.json").write_text(json.dumps({"test_top1": 0.9, "train_seconds": seconds}))
    return root


def test_timings_are_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _checkout(tmp_path / "a", 0.25, 10.0), _checkout(tmp_path / "b", 0.25, 99.0)
    assert compare_runs.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "kd                     identical (4 values" in out and "no run differs" in out


def test_a_different_value_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _checkout(tmp_path / "a", 0.25, 10.0), _checkout(tmp_path / "b", 0.26, 10.0)
    assert compare_runs.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "kd                     DIFFERENT (largest |diff| 0.01" in out and "1 differ" in out


def test_missing_metrics_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path), str(tmp_path)])


def test_a_corrupt_metrics_file_is_named(tmp_path: Path) -> None:
    a, b = _checkout(tmp_path / "a", 0.25, 10.0), _checkout(tmp_path / "b", 0.25, 10.0)
    (b / "metrics/eval/kd.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"cannot read .*b/metrics/eval/kd\.json"):
        compare_runs.main([str(a), str(b)])


def test_runs_in_one_checkout_only_are_listed_from_either_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _checkout(tmp_path / "a", 0.25, 10.0), _checkout(tmp_path / "b", 0.25, 10.0)
    (b / "metrics/eval/none.json").write_text(json.dumps({"seeds": {"0": {"top1": 0.2}}}))
    assert compare_runs.main([str(a), str(b)]) == 0
    assert f"none                   only in {b}" in capsys.readouterr().out
