"""``cmc``: Tian, Krishnan & Isola, "Contrastive Multiview Coding", ECCV 2020, arXiv 1906.05849,
used as a cross-modal distillation baseline as in CCL (Chen et al., "Distilling Audio-Visual Knowledge
by Compositional Contrastive Learning", CVPR 2021, arXiv 2104.10955).

The two views are the student's video feature ``v`` (B, d) and the frozen, precomputed teacher audio
embedding ``a`` (B, D). Each goes through a learnable linear projection head and L2 normalisation
(CMC's encoders end in a linear layer to a 128-d embedding followed by L2 normalisation, official
``models/alexnet.py``): ``z_v = W_v v / ‖W_v v‖``, ``z_a = W_a a / ‖W_a a‖`` (both F-dimensional).
Only the student and the two heads learn; the teacher embedding is a constant.

Loss: the two-view contrastive loss of CMC (Sec. 3.1: ``L(V1, V2) = L_contrast^{V1,V2} +
L_contrast^{V2,V1}``, a sum over both anchors), each direction in its softmax (InfoNCE) form with
the batch's other clips as negatives. With ``S_ij = z_v,i · z_a,j / τ`` (B, B):

    L_va = -(1/B) Σ_i log( exp(S_ii) / Σ_j exp(S_ij) )      (video anchor, audio candidates)
    L_av = -(1/B) Σ_j log( exp(S_jj) / Σ_i exp(S_ij) )      (audio anchor, video candidates)
    L_cmc = λ · (L_va + L_av)

What differs from the original, and why: CMC's official code (HobbitLong/CMC ``NCE/NCEAverage.py``,
``NCECriterion.py``) draws K = 4096/16384 negatives from a momentum-updated memory bank and scores them
with NCE (or, in a later version, a softmax over the K + 1 candidates). That memory-bank NCE objective
applied between a student and a teacher *is* CRD (arXiv 1910.10699 builds on CMC's code and loss), and
is implemented here as the ``crd`` method. ``cmc`` is therefore the in-batch softmax (InfoNCE) form
(CMC's ``NCESoftmaxLoss`` objective with the batch's other clips as its K negatives, the setting of
CCL, whose own contrastive terms, yanbeic/CCL ``loss/nce_loss.py``, also contrast within the batch),
so the two baselines differ in what they contrast against instead of duplicating each other; it also
needs no per-clip state. With in-batch negatives both directions back-propagate into the student
through ``z_v`` (in CMC's memory-bank form the candidates are constants).

Precision: computed in float32 with autocast disabled (logits up to 1/0.07 ≈ 14.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class CMCConfig:
    """``cmc`` section.

    Attributes:
        feat_dim: F, output dimension of both projection heads (CMC ``--feat_dim 128``, official
            ``train_CMC.py``).
        temperature: τ (CMC ``--nce_t`` 0.07, the official default for ImageNet; README of
            HobbitLong/CMC; 0.1 for STL-10).
        weight: λ, weight of ``L_va + L_av`` (1: CCL adds its contrastive terms to the
            classification loss unweighted, ``total_loss_v = sum([loss_cls_v, loss_ct_av, ...])`` in
            yanbeic/CCL ``training.py``; CMC itself trains on the contrastive loss alone).
    """

    feat_dim: int = 128
    temperature: float = 0.07
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.feat_dim < 1:
            raise ValueError(f"cmc.feat_dim must be >= 1, got {self.feat_dim}")
        if self.temperature <= 0:
            raise ValueError(f"cmc.temperature must be > 0, got {self.temperature}")
        if self.weight < 0:
            raise ValueError(f"cmc.weight must be >= 0, got {self.weight}")


def symmetric_infonce(z_v: torch.Tensor, z_a: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of the in-batch two-view contrastive loss.

    Args:
        z_v: (B, F) L2-normalised video embeddings.
        z_a: (B, F) L2-normalised audio embeddings; row i is the positive of ``z_v[i]``.
        temperature: τ > 0.

    Returns:
        (L_va, L_av): scalars; ``L_va`` = mean_i CE(row i of S, i), ``L_av`` = mean_j CE(column j of
        S, j), with ``S = z_v z_aᵀ / τ`` (B, B).
    """
    logits = z_v @ z_a.T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)


@register("cmc")
class CMC(DistillMethod):
    """Contrastive Multiview Coding between student video and teacher audio (arXiv 1906.05849).

    Heads: ``proj_v`` (Linear d -> F) and ``proj_a`` (Linear D -> F); no buffers.
    """

    sections = {"cmc": CMCConfig}

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        c: CMCConfig = cfg["cmc"]
        self.proj_v = nn.Linear(dims.student_dim, c.feat_dim)
        self.proj_a = nn.Linear(dims.teacher_dim, c.feat_dim)

    def embed(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d), (B, D) -> L2-normalised (B, F) video and audio embeddings, in float32."""
        return F.normalize(self.proj_v(v.float()), dim=1), F.normalize(self.proj_a(a.float()), dim=1)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"cmc": λ · (L_va + L_av)}`` (student group: both directions reach the student)."""
        c: CMCConfig = self.cfg["cmc"]
        with torch.autocast(device_type=student.feature.device.type, enabled=False):
            z_v, z_a = self.embed(student.feature, teacher.embedding)
            l_va, l_av = symmetric_infonce(z_v, z_a, c.temperature)
            top1 = (z_v @ z_a.T).argmax(dim=1).eq(torch.arange(len(z_v), device=z_v.device)).float().mean()
        terms = LossTerms(student={"cmc": c.weight * (l_va + l_av)})
        terms.logs = {"cmc_va": l_va.item(), "cmc_av": l_av.item(), "cmc_top1": top1.item()}
        return terms
