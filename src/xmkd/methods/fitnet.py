"""``fitnet``: Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets",
ICLR 2015, arXiv 1412.6550.

Hint loss (Eq. 3 of the paper): a learnable regressor r on top of the student's guided layer is fitted
to the teacher's hint layer,

    L_HT(W_guided, W_r) = ½ ‖ u_h(x) − r(v_g(x); W_r) ‖²,

where the paper requires r to end in the same non-linearity as u_h (Sec. 2.2). Here (as RepDistiller's
``HintLoss`` computes it, ``nn.MSELoss``) the squared error is averaged over batch and dimensions:

    L_fitnet = w · (1 / (B·D)) · Σ_i Σ_k ( r(v_i)_k − a_ik )²,   r(v) = ReLU(W_r v + b_r)  (d -> D)

with v (B, d) the student's pooled feature and a (B, D) the frozen teacher embedding. The ReLU matches
the teacher embedding, which is post-ReLU (FitNets Sec. 2.2; RepDistiller's ``Regress`` for vector hints
is the same Linear+ReLU); ``fitnet.relu: false`` gives a purely linear regressor.

Adaptations (this project, not the paper):

- The hint is the teacher's *final* embedding and the guided layer the student's final pooled feature
  ``v``, not a middle layer of each network (the teacher is precomputed: only its embedding exists).
- Training is single-stage: the hint term is added to the student's CE from the first step, as
  RepDistiller's ``--distill hint`` does, instead of the paper's two stages (hint pre-training of the
  lower student layers, then KD of the whole student).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class FitNetConfig:
    """``fitnet`` section.

    Attributes:
        weight: w, weight of the hint term relative to CE(p_v, y) (weight 1). Default 100 = RepDistiller
            ``scripts/run_cifar_distill.sh`` (``--distill hint -a 0 -b 100``), a CIFAR-100 value (the
            paper trains in two stages and has no such weight).
        relu: end the regressor in a ReLU (FitNets Sec. 2.2: same non-linearity as the hint, which is
            post-ReLU here; RepDistiller ``Regress``/``ConvReg``: Linear/Conv + ReLU). Default true.
    """

    weight: float = 100.0
    relu: bool = True

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"fitnet.weight must be >= 0, got {self.weight}")


class HintRegressor(nn.Module):
    """r: (B, d) -> (B, D), ``ReLU(W v + b)`` (or ``W v + b`` when ``relu`` is false)."""

    def __init__(self, student_dim: int, teacher_dim: int, relu: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(student_dim, teacher_dim)
        self.relu = relu

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v: (B, d) -> (B, D)."""
        out = self.linear(v)
        return F.relu(out) if self.relu else out


def hint_loss(prediction: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """Mean squared error ``(1/(B·D)) Σ (r(v) − a)²`` (RepDistiller ``HintLoss`` = ``nn.MSELoss()``).

    Args:
        prediction: (B, D) regressor output r(v).
        hint: (B, D) teacher embedding a (treated as a constant).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: the shapes differ.
    """
    if prediction.shape != hint.shape:
        raise ValueError(f"hint_loss: prediction {tuple(prediction.shape)} and hint {tuple(hint.shape)} differ")
    return F.mse_loss(prediction.float(), hint.detach().float())


@register("fitnet")
class FitNet(DistillMethod):
    """FitNets hint distillation (arXiv 1412.6550) on the final embeddings; head: the regressor r."""

    sections = {"fitnet": FitNetConfig}

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        self.regressor = HintRegressor(dims.student_dim, dims.teacher_dim, cfg["fitnet"].relu)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"fitnet": w · MSE(r(v), a)}`` in the student group: it trains the student and r together
        (FitNets stage 1 optimises W_guided and W_r jointly)."""
        c: FitNetConfig = self.cfg["fitnet"]
        terms = LossTerms()
        if c.weight:
            terms.student["fitnet"] = c.weight * hint_loss(self.regressor(student.feature), teacher.embedding)
        return terms
