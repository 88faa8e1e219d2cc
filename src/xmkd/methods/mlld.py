"""``mlld``: Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023.

Reference code: github.com/Jin-Ying/Multi-Level-Logit-Distillation (``mdistiller/distillers/KD_ours.py``:
``kd_loss``, ``bc_loss``, ``cc_loss``, ``KD_ours.forward_train``); formulas re-derived and written anew.
(The paper has no arXiv id; it is in the CVPR 2023 open-access proceedings, pp. 24276-24285,
DOI 10.1109/CVPR52729.2023.02325.)

MLLD aligns teacher and student predictions at three levels, each at several temperatures T ∈ 𝒯
(the reference uses {4 (``KD.TEMPERATURE``), 3, 5, 2, 6}, i.e. 𝒯 = {2, 3, 4, 5, 6}). With logits z (student z_s,
frozen teacher z_t) of a batch of B clips and C classes, P = softmax(z / T) (B, C):

    instance level:  L_ins(T)   = T² · mean_i KL( P_t,i ‖ P_s,i )
    batch level:     L_batch(T) = ‖ G_t - G_s ‖²_F / B,    G = P Pᵀ   (B, B): clip-clip similarities
    class level:     L_class(T) = ‖ M_t - M_s ‖²_F / C,    M = Pᵀ P   (C, C): class-class correlations

    L = CE(p_v, y) + Σ_{T ∈ 𝒯} ( w_ins · L_ins(T) + w_batch · L_batch(T) + w_class · L_class(T) )

The three levels are *summed* over the temperatures, as the reference code adds one term per temperature
(not averaged: with 5 temperatures an average would be the same loss at 1/5 of the weights).

Omitted, with the reasons:

- Prediction augmentation (the paper's strong/weak image augmentation, two student and teacher forward passes
  per batch, CE on both views): the teacher here is a frozen, precomputed audio model whose logits exist for
  one view only, so every term uses the single (student clip, teacher logits) pair.
- The reference's confidence masks (clips / classes at or below the median teacher confidence of the weak
  view). As written they multiply the already batch-reduced scalar losses, so their effect is a factor ≈ 1/2
  on the weak-view terms; they belong to the two-view scheme and are dropped with it.
- The reference's loss weights (``KD.LOSS.KD_WEIGHT 0.9`` on every term, ``CE_WEIGHT 0.1`` per view): the
  weights here are 1, 1, 1 (``mlld`` section) and the training loop adds CE with weight 1 on labelled clips,
  like the other methods, so MLLD is compared at the common CE weight.

Under DDP the batch- and class-level terms are computed over each rank's share of the batch, like the
other in-batch terms (see :mod:`xmkd.parallel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xmkd.methods.base import DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput

DEFAULT_TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)  # KD_ours.forward_train: KD.TEMPERATURE = 4, and 3, 5, 2, 6


@dataclass(frozen=True)
class MLLDConfig:
    """``mlld`` section (Multi-Level Logit Distillation, CVPR 2023).

    Attributes:
        temperatures: the temperatures T the three levels are computed at and summed over (non-empty, each > 0).
        instance_weight: w_ins >= 0, weight of the instance-level KL.
        batch_weight: w_batch >= 0, weight of the batch-level (B x B Gram matrix) alignment.
        class_weight: w_class >= 0, weight of the class-level (C x C correlation matrix) alignment.
    """

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    instance_weight: float = 1.0
    batch_weight: float = 1.0
    class_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(
                f"mlld.temperatures must be a non-empty list of numbers > 0, got {list(self.temperatures)}"
            )
        for key in ("instance_weight", "batch_weight", "class_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"mlld.{key} must be >= 0, got {getattr(self, key)}")


def instance_level_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """MLLD instance-level alignment ``T² · mean_i KL(softmax(z_t,i/T) ‖ softmax(z_s,i/T))`` (CVPR 2023).

    Args:
        student_logits: (B, C) z_s.
        teacher_logits: (B, C) z_t (treated as constants).
        temperature: T > 0.

    Returns:
        Scalar tensor.
    """
    t = temperature
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean() * t * t


def _softened(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_s, P_t) = softmax(z / T) in fp32, both (B, C); the teacher's treated as constants."""
    ps = F.softmax(student_logits.float() / temperature, dim=1)
    pt = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return ps, pt


def batch_level_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """MLLD batch-level alignment ``‖P_t P_tᵀ - P_s P_sᵀ‖²_F / B`` with P = softmax(z / T) (CVPR 2023).

    Args:
        student_logits: (B, C) z_s.
        teacher_logits: (B, C) z_t (treated as constants).
        temperature: T > 0.

    Returns:
        Scalar tensor.
    """
    ps, pt = _softened(student_logits, teacher_logits, temperature)
    diff = pt @ pt.T - ps @ ps.T  # (B, B)
    return diff.pow(2).sum() / ps.shape[0]


def class_level_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """MLLD class-level alignment ``‖P_tᵀ P_t - P_sᵀ P_s‖²_F / C`` with P = softmax(z / T) (CVPR 2023).

    Args:
        student_logits: (B, C) z_s.
        teacher_logits: (B, C) z_t (treated as constants).
        temperature: T > 0.

    Returns:
        Scalar tensor.
    """
    ps, pt = _softened(student_logits, teacher_logits, temperature)
    diff = pt.T @ pt - ps.T @ ps  # (C, C)
    return diff.pow(2).sum() / ps.shape[1]


def mlld_levels(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperatures: tuple[float, ...] | list[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three MLLD levels (CVPR 2023), each summed over ``temperatures``, unweighted.

    Args:
        student_logits: (B, C) z_s.
        teacher_logits: (B, C) z_t (treated as constants).
        temperatures: the temperatures T, each > 0.

    Returns:
        (instance, batch, class) scalar tensors: ``Σ_T L_ins(T)``, ``Σ_T L_batch(T)``, ``Σ_T L_class(T)``.
    """
    ins = sum(instance_level_loss(student_logits, teacher_logits, t) for t in temperatures)
    bat = sum(batch_level_loss(student_logits, teacher_logits, t) for t in temperatures)
    cls = sum(class_level_loss(student_logits, teacher_logits, t) for t in temperatures)
    return ins, bat, cls  # type: ignore[return-value]


@register("mlld")
class MLLD(DistillMethod):
    """Multi-Level Logit Distillation from the audio teacher's logits (Jin, Wang & Lin, CVPR 2023), without the
    prediction augmentation; no learnable heads."""

    sections = {"mlld": MLLDConfig}
    distills = "logits"

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"mlld_instance", "mlld_batch", "mlld_class"}``: each level summed over the temperatures and weighted.

        Args:
            student: outputs with ``logits`` (B, C).
            teacher: frozen teacher outputs with ``logits`` (B, C).
            labels: (B,) int64 (unused: MLLD reads no labels; -1 for an unlabelled clip is fine).
        """
        c: MLLDConfig = self.cfg["mlld"]
        ins, bat, cls = mlld_levels(student.logits, teacher.logits, c.temperatures)
        return LossTerms(
            student={
                "mlld_instance": c.instance_weight * ins,
                "mlld_batch": c.batch_weight * bat,
                "mlld_class": c.class_weight * cls,
            }
        )
