"""``pkt``: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
ECCV 2018, arXiv 1803.10837.

The teacher's and the student's batch geometries are turned into conditional probability
distributions and matched with a KL divergence (Sec. 3 of the paper). With the paper's cosine kernel

    K(x_i, x_j) = ½ ( x_iᵀ x_j / (‖x_i‖ ‖x_j‖) + 1 )            ∈ [0, 1]

and the rows of the kernel matrix normalised to probabilities,

    p_ij = K(a_i, a_j) / Σ_k K(a_i, a_k)   (teacher),   q_ij = K(v_i, v_j) / Σ_k K(v_i, v_k)   (student)

the loss is

    L_pkt = w · (1 / B²) · Σ_i Σ_j p_ij · log( (p_ij + ε) / (q_ij + ε) ),     ε = 1e-7

as the authors' code computes it (passalis/probabilistic_kt ``nn/pkt.py`` ``cosine_similarity_loss``,
reproduced by RepDistiller ``distiller_zoo/PKT.py``): vectors are divided by ``‖x‖ + ε``; the row sums
include the diagonal k = i and the KL is averaged over all B² entries (the paper's equations exclude
k = i from the normalisation and sum over pairs; the constant 1/B² is absorbed into the weight).

The kernel matrices are B x B, so the student's dimension d and the teacher's D need not match: PKT has
no learnable heads. It acts on the student's final pooled feature v and the teacher's final embedding a,
as the paper (and RepDistiller, ``feat[-1]``) do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xmkd.methods.base import DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput

PKT_EPS = 1e-7  # the authors' eps (norm denominator and inside the log)


@dataclass(frozen=True)
class PKTConfig:
    """``pkt`` section.

    Attributes:
        weight: w, weight of L_pkt relative to CE(p_v, y) (weight 1). Default 30000 = RepDistiller
            ``scripts/run_cifar_distill.sh`` (``--distill pkt -a 0 -b 30000``), a CIFAR-100 value tuned
            for batch size 64; because the KL is averaged over B² entries its useful size grows with the
            batch (the paper trains with PKT alone, so it has no such weight).
    """

    weight: float = 30000.0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"pkt.weight must be >= 0, got {self.weight}")


def cosine_kernel_probabilities(x: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """Row-normalised cosine kernel: (B, dim) -> (B, B) with rows summing to 1.

    ``K_ij = (cos(x_i, x_j) + 1) / 2`` with ``x / (‖x‖ + eps)`` as the normalisation, then
    ``K_ij / Σ_k K_ik`` (the diagonal included, as in the authors' code).
    """
    x = x.float()
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    k = (x @ x.T + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """Probabilistic knowledge transfer loss (arXiv 1803.10837; authors' ``cosine_similarity_loss``).

    Args:
        student: (B, d) student features v.
        teacher: (B, D) teacher embeddings a (treated as constants); D may differ from d.
        eps: ε of the normalisation and of the log.

    Returns:
        Scalar ``mean_ij p_ij log((p_ij + ε) / (q_ij + ε))``.

    Raises:
        ValueError: the batch sizes differ.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"pkt_loss: batch sizes differ ({student.shape[0]} vs {teacher.shape[0]})")
    q = cosine_kernel_probabilities(student, eps)
    p = cosine_kernel_probabilities(teacher.detach(), eps)
    return (p * torch.log((p + eps) / (q + eps))).mean()


@register("pkt")
class PKT(DistillMethod):
    """Probabilistic knowledge transfer (arXiv 1803.10837) from the audio embedding; no learnable heads."""

    sections = {"pkt": PKTConfig}

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"pkt": w · L_pkt(v, a)}`` in the student group."""
        c: PKTConfig = self.cfg["pkt"]
        terms = LossTerms()
        if c.weight:
            terms.student["pkt"] = c.weight * pkt_loss(student.feature, teacher.embedding)
        return terms
