"""The learning-rate schedule of the one training loop: multistep decay at milestones given in epochs,
applied per optimiser step (fractional milestones decay inside an epoch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xmkd.config import parse_section
from xmkd.errors import ConfigError
from xmkd.methods.base import Dims, DistillMethod, LossTerms
from xmkd.models.student import StudentOutput
from xmkd.train import TrainConfig, lr_factor, train


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> StudentOutput:
        f = x
        return StudentOutput(f[:, None, :], f, self.fc(f))


class _RecordLR(DistillMethod):
    """No distillation terms (the test reads the rate of every step from the optimiser)."""

    def loss(self, student: StudentOutput, teacher, labels: torch.Tensor) -> LossTerms:  # noqa: ANN001
        return LossTerms()


def _loader(n: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    ds = TensorDataset(x, y, torch.zeros(n, 2), torch.zeros(n, 3), torch.arange(n))
    return DataLoader(ds, batch_size=batch, shuffle=False)


def _lrs_per_step(cfg: TrainConfig, loader: DataLoader) -> tuple[list[float], list[dict[str, float]]]:
    student = _Tiny()
    method = _RecordLR(Dims(4, 2, 3, 40), {})
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    torch.optim.Adam.step = spy  # type: ignore[method-assign]
    try:
        hist = train(student, method, loader, None, cfg, torch.device("cpu"))
    finally:
        torch.optim.Adam.step = real_step  # type: ignore[method-assign]
    return seen, hist


def test_integer_milestone_decays_after_that_epoch_like_multisteplr() -> None:
    loader = _loader(40, 10)  # 4 steps per epoch
    cfg = TrainConfig(epochs=3, lr=0.1, milestones=[2], gamma=0.1, device="cpu")
    seen, hist = _lrs_per_step(cfg, loader)
    assert seen == pytest.approx([0.1] * 8 + [0.01] * 4)
    # history logs the rate the epoch's last step used (not the next epoch's)
    assert [h["lr"] for h in hist] == pytest.approx([0.1, 0.1, 0.01])


def test_fractional_milestone_decays_inside_the_epoch() -> None:
    loader = _loader(40, 10)
    cfg = TrainConfig(epochs=2, lr=0.1, milestones=[1.5], gamma=0.5, device="cpu")
    seen, hist = _lrs_per_step(cfg, loader)
    assert seen == pytest.approx([0.1] * 6 + [0.05] * 2)
    assert [h["lr"] for h in hist] == pytest.approx([0.1, 0.05])


def test_lr_factor_counts_every_passed_milestone() -> None:
    f = lr_factor(TrainConfig(epochs=4, milestones=[1, 2.5], gamma=0.1), steps_per_epoch=10)
    assert [f(k) for k in (0, 9, 10, 24, 25, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("milestones", [[3], [0], [-1.0], [5.5]])
def test_milestones_outside_training_are_rejected_with_the_fix(milestones: list[float]) -> None:
    with pytest.raises(ConfigError, match="strictly between 0 and train.epochs"):
        parse_section(TrainConfig, {"epochs": 3, "milestones": milestones}, "train")
