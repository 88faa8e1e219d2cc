"""``cc``: Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang, "Correlation Congruence for Knowledge
Distillation", ICCV 2019, arXiv 1904.01802.

Correlation congruence (the paper's L_CC, Sec. 3): the B x B correlation matrices of the student's and
the teacher's embeddings in a batch are matched,

    L_CC = (1 / B²) · ‖ ψ(F_t) − ψ(F_s) ‖²_F = (1 / B²) · Σ_ij ( k(s_i, s_j) − k(t_i, t_j) )²,

with the paper's Gaussian RBF kernel, written for L2-normalised features (‖x − y‖² = 2 − 2 xᵀy) and
approximated by its order-P Taylor series in xᵀy (the paper's "generalized kernel"):

    k(x, y) = exp(−γ ‖x − y‖²) = exp(−2γ) · exp(2γ xᵀy) ≈ exp(−2γ) · Σ_{p=0}^{P} (2γ · xᵀy)^p / p!

``cc.variant: taylor_rbf`` (default) is this loss, on s = v / ‖v‖ (student pooled feature, (B, d)) and
t = a / ‖a‖ (teacher embedding, (B, D)). The matrices are B x B, so d and D need not match and no
learnable head is needed (a head on either side could absorb the congruence without moving the
student). Only the paper's correlation term is used; the paper's full objective also mixes in
instance-level KD (``α L_CE + (1 − α) L_KD + β L_CC``), which here is the separate ``kd`` method.

``cc.variant: repdistiller`` is the code RepDistiller (``distiller_zoo/CC.py``, "code emailed to me by
the original author") benchmarks as CC, which does *not* compute correlation matrices: learnable linear
embeddings e_s: d -> m and e_t: D -> m (``LinearEmbed``, m = ``--feat_dim`` 128; both trained, as in
RepDistiller's ``trainable_list``) map v and a to a common space, and with Δ_i = |e_s(v_i) − e_t(a_i)|
(element-wise),

    L_CC^RD = (1 / (B − 1)) · Σ_{i=1}^{B−1} Σ_k Δ_{i,k} · Δ_{i+1,k}      (consecutive samples only).

Provided so that results can be compared with the CRD benchmark tables; note that the trained teacher
embedding e_t can shrink both sides towards a common constant, which drives this loss to zero whatever
the student does.

Both variants act on the student's final pooled feature and the teacher's final embedding (RepDistiller
also uses the pooled, pre-classifier features, ``feat[-1]``). Features are cast to float32 inside the
loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput

# Reference weights per variant (see CCConfig.weight).
CC_REFERENCE_WEIGHT = {"taylor_rbf": 100.0, "repdistiller": 0.02}


@dataclass(frozen=True)
class CCConfig:
    """``cc`` section.

    Attributes:
        variant: ``taylor_rbf`` (the paper's correlation matrices, Gaussian RBF by Taylor series) or
            ``repdistiller`` (RepDistiller's author-supplied code; see the module docstring).
        gamma: γ of the Gaussian RBF (``taylor_rbf``). Default 0.4, with order P = 2: the values of
            AberHu/Knowledge-Distillation-Zoo (``train_kd.py --gamma 0.4 --P_order 2``), a
            re-implementation of the paper; the paper's own γ and P could not be checked here.
        order: P, the Taylor order (``taylor_rbf``), >= 0. Default 2 (see ``gamma``).
        embed_dim: m, the common dimension of RepDistiller's linear embeddings (``repdistiller`` only).
            Default 128 = RepDistiller ``train_student.py --feat_dim``.
        weight: weight of the CC term relative to CE(p_v, y) (weight 1); ``null`` = the variant's
            reference weight: 100 for ``taylor_rbf`` (AberHu ``example_train_script.sh``, CIFAR-10,
            ``--lambda_kd 100``) and 0.02 for ``repdistiller`` (RepDistiller
            ``scripts/run_cifar_distill.sh``, ``--distill correlation -a 0 -b 0.02``, CIFAR-100).
    """

    variant: Literal["taylor_rbf", "repdistiller"] = "taylor_rbf"
    gamma: float = 0.4
    order: int = 2
    embed_dim: int = 128
    weight: float | None = None

    def __post_init__(self) -> None:
        if self.gamma <= 0:
            raise ValueError(f"cc.gamma must be > 0, got {self.gamma}")
        if self.order < 0:
            raise ValueError(f"cc.order must be >= 0, got {self.order}")
        if self.embed_dim < 1:
            raise ValueError(f"cc.embed_dim must be >= 1, got {self.embed_dim}")
        if self.weight is not None and self.weight < 0:
            raise ValueError(f"cc.weight must be >= 0 or null, got {self.weight}")

    @property
    def resolved_weight(self) -> float:
        """``weight``, or the variant's reference weight when it is ``null``."""
        return CC_REFERENCE_WEIGHT[self.variant] if self.weight is None else self.weight


def taylor_rbf_correlation(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Correlation matrix ψ(F) of a batch under the order-P Taylor Gaussian RBF kernel.

    Args:
        x: (B, dim) features (L2-normalised inside).
        gamma: γ > 0.
        order: P >= 0.

    Returns:
        (B, B) ``exp(−2γ) Σ_{p=0}^{P} (2γ z_ij)^p / p!`` with ``z_ij = x̂_iᵀ x̂_j``.
    """
    x = F.normalize(x.float(), dim=1)
    z = x @ x.T
    out = torch.zeros_like(z)
    for p in range(order + 1):
        out = out + (2.0 * gamma) ** p / math.factorial(p) * z.pow(p)
    return math.exp(-2.0 * gamma) * out


def cc_loss(student: torch.Tensor, teacher: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Correlation congruence ``(1/B²) Σ_ij (ψ_s − ψ_t)²_ij`` (arXiv 1904.01802, Taylor-RBF kernel).

    Args:
        student: (B, d) student features v.
        teacher: (B, D) teacher embeddings a (constants); D may differ from d.
        gamma: γ of the RBF kernel.
        order: Taylor order P.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: the batch sizes differ.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"cc_loss: batch sizes differ ({student.shape[0]} vs {teacher.shape[0]})")
    psi_s = taylor_rbf_correlation(student, gamma, order)
    psi_t = taylor_rbf_correlation(teacher.detach(), gamma, order)
    return (psi_s - psi_t).pow(2).mean()


def cc_repdistiller_loss(student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> torch.Tensor:
    """RepDistiller's CC: ``mean_{i<B} Σ_k |Δ_i|_k |Δ_{i+1}|_k`` with ``Δ = f_s − f_t``.

    Args:
        student_embed: (B, m) embedded student features e_s(v).
        teacher_embed: (B, m) embedded teacher features e_t(a).

    Returns:
        Scalar tensor (0 for a batch of one: there is no consecutive pair).

    Raises:
        ValueError: the shapes differ.
    """
    if student_embed.shape != teacher_embed.shape:
        raise ValueError(
            f"cc_repdistiller_loss: shapes differ ({tuple(student_embed.shape)} vs {tuple(teacher_embed.shape)})"
        )
    delta = (student_embed.float() - teacher_embed.float()).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register("cc")
class CorrelationCongruence(DistillMethod):
    """Correlation congruence (arXiv 1904.01802). Heads: none (``taylor_rbf``), or the two linear
    embeddings ``embed_student`` (d -> m) and ``embed_teacher`` (D -> m) (``repdistiller``)."""

    sections = {"cc": CCConfig}

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        c: CCConfig = cfg["cc"]
        if c.variant == "repdistiller":
            self.embed_student = nn.Linear(dims.student_dim, c.embed_dim)
            self.embed_teacher = nn.Linear(dims.teacher_dim, c.embed_dim)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"cc": w · L_CC}`` in the student group (with ``repdistiller`` it also trains both
        embeddings, as RepDistiller's single optimiser does)."""
        c: CCConfig = self.cfg["cc"]
        w = c.resolved_weight
        terms = LossTerms()
        if not w:
            return terms
        if c.variant == "repdistiller":
            value = cc_repdistiller_loss(
                self.embed_student(student.feature), self.embed_teacher(teacher.embedding.detach())
            )
        else:
            value = cc_loss(student.feature, teacher.embedding, c.gamma, c.order)
        terms.student["cc"] = w * value
        return terms
