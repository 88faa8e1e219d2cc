"""``rkd``: Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv 1904.05068.

RKD transfers the structure of a batch rather than individual outputs (Sec. 3 of the paper), with the
Huber loss ``l_δ`` (δ = 1; PyTorch's ``smooth_l1_loss``):

    l_δ(x, y) = ½ (x − y)²  if |x − y| <= 1,   |x − y| − ½  otherwise.

Distance-wise (Eq. 4-5): ψ_D(t_i, t_j) = ‖t_i − t_j‖ / μ, μ the mean distance over pairs i != j,

    L_D = (1 / B²) · Σ_{i,j} l_δ( ψ_D(t_i, t_j), ψ_D(s_i, s_j) ).

Angle-wise (Eq. 6-7): the cosine of the angle at the vertex of each triplet. The paper puts the vertex
in the middle (cos ∠ t_i t_j t_k = ⟨e^ij, e^kj⟩, e^ij = (t_i − t_j)/‖t_i − t_j‖); summing over all
triplets, naming the vertex first is the same loss, and is what is computed here:

    ψ_A(t_i, t_j, t_k) = ⟨u_ij, u_ik⟩,   u_ij = (t_j − t_i) / ‖t_j − t_i‖   (vertex t_i),

    L_A = (1 / B³) · Σ_{i,j,k} l_δ( ψ_A(t_i, t_j, t_k), ψ_A(s_i, s_j, s_k) ).

Total: ``L_rkd = w · (λ_D L_D + λ_A L_A)``, λ_D = 25, λ_A = 50.

As in the authors' code (lenscloth/RKD ``metric/loss.py`` ``RkdDistance``/``RKdAngle``): μ is the mean of
the non-zero entries of the distance matrix; the losses are means over all B² (distance, diagonal = 0
on both sides) and all B³ (angle; degenerate triplets with j = i or k = i give 0 on both sides) entries
rather than sums over distinct tuples; in the authors' classification script
(``run_distill_classification.py``) the embeddings are L2-normalised before both losses
(``rkd.normalize``).

Here s = v (student pooled feature, (B, d)) and t = a (teacher embedding, (B, D)): d and D need not
match, RKD has no learnable heads. The paper applies RKD to the final embedding (metric learning) or the
penultimate pooled features (classification), as here. Features are cast to float32 inside the loss
(pairwise distances by ‖x‖² + ‖y‖² − 2xᵀy are too inexact in bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xmkd.methods.base import DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput

PDIST_EPS = 1e-12  # clamp of the squared distances, as in the authors' pdist


@dataclass(frozen=True)
class RKDConfig:
    """``rkd`` section.

    Attributes:
        distance_weight: λ_D. Default 25 (the paper's classification setting; authors'
            ``run_distill_classification.py --dist_ratio`` default; RepDistiller ``RKDLoss(w_d=25)``).
        angle_weight: λ_A. Default 50 (same sources, ``--angle_ratio``; ``RKDLoss(w_a=50)``).
        weight: w, overall weight relative to CE(p_v, y) (weight 1). Default 1 = RepDistiller
            ``scripts/run_cifar_distill.sh`` (``--distill rkd -a 0 -b 1``) and the authors' script, where
            CE has weight 1 and the RKD terms carry λ_D, λ_A only (CIFAR-100 settings).
        normalize: L2-normalise v and a before both losses (authors' classification script: true;
            RepDistiller: false).
    """

    distance_weight: float = 25.0
    angle_weight: float = 50.0
    weight: float = 1.0
    normalize: bool = True

    def __post_init__(self) -> None:
        for name in ("distance_weight", "angle_weight", "weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"rkd.{name} must be >= 0, got {getattr(self, name)}")


def pairwise_distances(x: torch.Tensor, eps: float = PDIST_EPS) -> torch.Tensor:
    """Euclidean distance matrix (B, dim) -> (B, B), diagonal exactly 0.

    ``sqrt(clamp(‖x_i‖² + ‖x_j‖² − 2 x_iᵀx_j, eps))`` (the clamp keeps the square root differentiable
    for coincident points).
    """
    x = x.float()
    sq = x.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(eps).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD loss (arXiv 1904.05068, Eq. 4-5; authors' ``RkdDistance``).

    Args:
        student: (B, d) student features s.
        teacher: (B, D) teacher features t (constants).

    Returns:
        Scalar ``mean_ij l_δ(d^t_ij / μ_t, d^s_ij / μ_s)``; 0 for a batch of one.

    Raises:
        ValueError: the batch sizes differ.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"rkd_distance_loss: batch sizes differ ({student.shape[0]} vs {teacher.shape[0]})")
    if student.shape[0] < 2:
        return student.float().sum() * 0.0
    ds = pairwise_distances(student)
    dt = pairwise_distances(teacher.detach())
    ds = ds / ds[ds > 0].mean()
    dt = dt / dt[dt > 0].mean()
    return F.smooth_l1_loss(ds, dt)


def triplet_cosines(x: torch.Tensor) -> torch.Tensor:
    """(B, dim) -> (B, B, B): entry [i, j, k] = ⟨e_ij, e_ik⟩, e_ij = (x_j − x_i)/‖x_j − x_i‖ (0 if x_j = x_i)."""
    x = x.float()
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # e[i, j] = unit(x_j - x_i)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Angle-wise RKD loss (arXiv 1904.05068, Eq. 6-7; authors' ``RKdAngle``).

    Args:
        student: (B, d) student features s.
        teacher: (B, D) teacher features t (constants).

    Returns:
        Scalar ``mean_ijk l_δ(ψ_A(t_i, t_j, t_k), ψ_A(s_i, s_j, s_k))``.

    Raises:
        ValueError: the batch sizes differ.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"rkd_angle_loss: batch sizes differ ({student.shape[0]} vs {teacher.shape[0]})")
    return F.smooth_l1_loss(triplet_cosines(student), triplet_cosines(teacher.detach()))


@register("rkd")
class RKD(DistillMethod):
    """Relational KD (arXiv 1904.05068), distance- and angle-wise; no learnable heads."""

    sections = {"rkd": RKDConfig}

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"rkd_distance": w λ_D L_D, "rkd_angle": w λ_A L_A}`` in the student group."""
        c: RKDConfig = self.cfg["rkd"]
        s, t = student.feature.float(), teacher.embedding.detach().float()
        if c.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        terms = LossTerms()
        if c.weight and c.distance_weight:
            terms.student["rkd_distance"] = c.weight * c.distance_weight * rkd_distance_loss(s, t)
        if c.weight and c.angle_weight:
            terms.student["rkd_angle"] = c.weight * c.angle_weight * rkd_angle_loss(s, t)
        return terms
