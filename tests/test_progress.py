"""Progress bars (src/xmkd/progress.py): drawn on a terminal, silent otherwise (tqdm ``disable=None``)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from xmkd.models.teacher import AudioCNN, TeacherNetConfig
from xmkd.progress import progress_bar, progress_callback
from xmkd.teacher import embed


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(n: int) -> None:
    with progress_callback("encoding", unit="clip") as progress:
        for done in range(1, n + 1):
            progress(done, n)


def test_silent_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    _feed(5)
    with progress_bar(3, "epochs") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_drawn_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _feed(5)
    out = term.getvalue()
    assert "encoding" in out and "5/5" in out and "clip" in out


def test_teacher_embedding_bar_counts_clips(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    torch.manual_seed(0)
    model = AudioCNN(10, TeacherNetConfig(channels=(4, 8), embed_dim=8), 16)
    mels = torch.randn(5, 16, 32)
    emb, logits = embed(model, mels, batch=2, desc="embed_teacher")
    # drawn with the clip count as its total (the last state may be skipped: tqdm redraws at most every 0.1 s, and
    # this inner bar, leave=False, is erased when it closes)
    assert "embed_teacher" in term.getvalue() and "/5 [" in term.getvalue() and "clip" in term.getvalue()
    drawn = len(term.getvalue())
    quiet = embed(model, mels, batch=2)  # no desc: no bar, the same numbers
    assert "embed_teacher" not in term.getvalue()[drawn:]
    np.testing.assert_allclose(quiet[1], logits, rtol=1e-6, atol=1e-6)
    assert emb.shape[0] == 5 and logits.shape == (5, 10)
