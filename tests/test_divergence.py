"""An exploding loss stops training with the same kind of error as a NaN (xmkd.train.LossGuard), naming the run,
seed, epoch, step, value, threshold and the fix; normal training never trips it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_ddp import _make_data, _write_config  # the tiny real setting of the DDP tests

from xmkd.config import ConfigError, parse_section
from xmkd.errors import TrainingError
from xmkd.experiment import run_all
from xmkd.runs import load_run_config
from xmkd.train import LossGuard, TrainConfig


def test_guard_trips_on_a_loss_far_above_the_first_steps() -> None:
    guard = LossGuard(factor=1000, steps=3, where="run 'x' seed 4", lr=0.5)
    for step, loss in enumerate([2.0, 3.0, 2.5, 1.0, 2400.0]):  # reference: median(2, 3, 2.5) = 2.5
        guard.check({"ce": loss}, epoch=1, step=step)
    assert guard.first == [2.0, 3.0, 2.5]
    guard.check({"ce": -1000.0, "kd": 1400.0}, 2, 0)  # |terms| sum to 2400 <= 2500
    with pytest.raises(TrainingError) as err:
        guard.check({"ce": 2000.0, "kd": 600.0}, epoch=2, step=1)
    msg = str(err.value)
    for part in ("loss 2600", "epoch 2, step 1", "run 'x' seed 4", "1000 x 2.5 = 2500", "Lower train.lr (now 0.5)"):
        assert part in msg, (part, msg)


def test_guard_stops_on_nan_and_can_be_turned_off() -> None:
    guard = LossGuard(factor=0, steps=2, where="method 'kd'", lr=1e-3)
    for step in range(3):
        guard.check({"ce": 10.0**step}, 1, step)  # factor 0: no relative check
    guard.check({"ce": 1e30}, 1, 3)
    with pytest.raises(TrainingError, match=r"loss term 'kd' = nan at epoch 1, step 4 \(method 'kd'\).*train.lr"):
        guard.check({"ce": 1.0, "kd": float("nan")}, 1, 4)


def test_bad_thresholds_are_config_errors() -> None:
    for bad in ({"divergence_factor": 0.5}, {"divergence_steps": 0}):
        with pytest.raises(ConfigError, match="divergence"):
            parse_section(TrainConfig, bad, "train")


@pytest.mark.slow
def test_lr_1e6_stops_the_run_with_the_divergence_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: ``train.lr: 1e6``, the real stage code (run_all), default divergence settings."""
    _make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    for method in ("none", "mnf_csc"):
        config = _write_config(tmp_path, method, f"{method}-lr1e6", seeds=(3,), lr=1e6)
        assert json.loads(config.read_text())["train"]["divergence_factor"] == 1000.0
        try:
            with pytest.raises(TrainingError) as err:
                run_all(load_run_config(config), config)
        finally:
            torch.set_num_threads(threads)
        msg = str(err.value)
        assert f"(run '{method}-lr1e6' seed 3 (method '{method}'))" in msg
        assert "exceeds train.divergence_factor x the median loss of the first 1 steps" in msg, msg
        assert "at epoch 1, step 1 " in msg and "Lower train.lr (now 1e+06)" in msg
        assert not (tmp_path / "models").exists()  # nothing written
