"""Clips that are not the built benchmark's: per-condition lookups must not read data/benchmark/provenance.parquet
for them (issue 12: a user's own digit clips stopped with a raw pandas KeyError there).

Unit level only: the end-to-end pipeline test on a folder of foreign clips is not written yet."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

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
