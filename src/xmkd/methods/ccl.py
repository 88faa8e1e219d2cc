"""``ccl``: Compositional Contrastive Learning.

Chen, Xian, Koepke, Shan & Akata, "Distilling Audio-Visual Knowledge by Compositional Contrastive
Learning", CVPR 2021, arXiv 2104.10955. Implemented as the official code computes the audio -> video
setting (github.com/yanbeic/CCL: ``models/composition_classifier.py``, ``loss/nce_loss.py``,
``loss/jsd_loss.py``, ``training.py::train_a_epoch``, ``main.py``; formulas re-derived and written anew).
MNF+CSC (arXiv 2304.07775) builds on this code base.

Notation: v (B, d) the student's pooled video feature, a (B, D) the frozen teacher audio embedding,
z_v (B, C) the student logits, y (B,) labels, τ the contrastive temperature.

Composition (reference ``CompositionClassifier`` with ``normalization=True``): the teacher embedding is
composed with the student embedding by residual learning,

    f = a + W_r [â ; v̂] + b_r          (â, v̂ = L2-normalised a, v; W_r: (D + d) -> D)
    z_f = W_c f + b_c                  (classifier of the composed embedding, D -> C)

Label-aware contrastive loss (reference ``NCELoss``), for two sets of embeddings x, x' (B, ·):
with x, x' L2-normalised, ``s_ij = x_i · x'_j``, ``P_ij = softmax_j(s_ij / τ)``, P_i = {j: y_j = y_i}
(always holds j = i), N_i = {j: y_j ≠ y_i},

    NCE(x, x') = mean_i [ -Σ_{j∈P_i} log(P_ij + ε) / |P_i|  -  Σ_{j∈N_i} log(1 - P_ij + ε) / |N_i| ]

with ε = 1e-10 (the reference's). Symmetrised pairs: ``ct(x, x') = NCE(x, x') + NCE(x', x)``, and
``L_vm = ct(v, f)`` (video <-> composed), ``L_va = ct(v, a)`` (video <-> audio), ``L_ma = ct(f, a)``
(composed <-> audio).

Distribution term (reference ``JSDLoss(weight=0.5)``, no temperature), with p = softmax(z_v),
q = softmax(z_f):

    L_div = 0.5 · mean_i [ KL(p_i ‖ q_i) + KL(q_i ‖ p_i) ]

The reference calls this "JSD" but computes the symmetrised KL (Jeffreys divergence), not the
mixture-based Jensen–Shannon divergence; ``ccl.divergence: symmetric_kl`` (default) reproduces the
code, ``js`` uses the textbook JSD ``½KL(p‖m) + ½KL(q‖m)``, m = (p + q)/2, with the same weight.
(The reference adds ε = 1e-10 inside ``log(p/q + ε)``; we use log-softmax differences instead, which
differ only for probability ratios below 1e-10.)

Gradient flow. The reference has two optimisers, ``optimizer_av`` over the composition head and
``optimizer`` over the video network, and two totals, ``total_loss_a = CE(z_f, y) + L_vm + L_ma + L_div``
and ``total_loss_v = CE(z_v, y) + L_vm + L_va + L_div``. Its current code (``training.py::train_a_epoch``
at HEAD, commit b590483 "fit to pytorch 1.7", 2021-07-07) runs ``optimizer_av.zero_grad();
total_loss_a.backward(); optimizer.zero_grad(); total_loss_v.backward(); optimizer_av.step();
optimizer.step()``: the video network's zero_grad discards total_loss_a's gradients on it, but the head's
zero_grad comes before both backward passes, so the head accumulates both totals:

    video network <- CE(z_v, y) + L_vm + L_va + L_div
    composition   <- CE(z_f, y) + 2 L_vm + L_ma + 2 L_div           (``ccl.head_gradient: reference``)

The first release (commit 5c18684, 2021-04-25) stepped ``optimizer_av`` before ``total_loss_v.backward()``,
so the head got ``total_loss_a`` alone, ``CE(z_f, y) + L_vm + L_ma + L_div`` (``head_gradient: separate``).
Both are reproduced in one optimiser step by the two groups of :class:`LossTerms`:

- ``student`` (student + heads): ``ct_vm`` = L_vm, ``ct_va`` = L_va, ``div`` = L_div. L_vm and L_div
  reach both student and composition head; L_va involves no head parameter (unless the projection
  below exists).
- ``heads_only`` (never the student): ``ce_comp`` = CE(z_f, y), ``ct_ma`` = L_ma, and with
  ``head_gradient: reference`` also ``ct_vm_head`` = L_vm and ``div_head`` = L_div (the second copy the
  head accumulates).
- The loop adds CE(z_v, y) itself (``ce_weight`` 1).

Adaptations to this project (teacher = a frozen, precomputed audio embedding):

- The reference has D = d = 512 (CNN14 audio embedding, R(2+1)D-18 feature), which its residual
  composition ``f = a + residual`` and its contrastive terms between v, f and a rely on. When D ≠ d
  here, a learnable linear map P: R^d -> R^D (no bias) projects v into the teacher space *for the
  contrastive terms only* (the composition still reads v itself); it is a head, trained by the student
  group (L_vm, L_va). With D = d (this project's default) there is no P and the method is the
  reference's.
- The reference drops clips whose audio feature is all zeros (missing audio) from the CCL terms;
  every clip here has a teacher embedding, so no clip is dropped.
- The reference's NCE divides by |N_i| = 0 when a batch holds a single class (NaN); here a row without
  negatives contributes no negative term (a guard the reference lacks; it changes nothing otherwise).
- Single clip per video, no temporal multi-clip sampling: that is the data pipeline's concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.methods.base import (
    Dims,
    DistillMethod,
    LossTerms,
    TeacherBatch,
    labelled_cross_entropy,
    positive_mask,
    register,
)  # fmt: skip
from xmkd.models.student import StudentOutput

NCE_EPS = 1e-10  # added inside both logs, as in the reference NCELoss


@dataclass(frozen=True)
class CCLConfig:
    """``ccl`` section (defaults = the official code's audio setting, github.com/yanbeic/CCL).

    Attributes:
        temperature: τ of the contrastive loss (``main.py``: ``NCELoss(temperature=0.5)`` for audio;
            0.1 is the image-teacher setting).
        contrastive_weight: weight of each contrastive term L_vm, L_va, L_ma (reference: plain sum, 1).
        divergence_weight: weight of L_div (``main.py``: ``JSDLoss(weight=0.5)``).
        divergence: ``symmetric_kl`` (what the reference's ``JSDLoss`` computes) or ``js`` (true JSD).
        composed_ce_weight: weight of CE(z_f, y) on the composition head (reference: 1).
        normalize_inputs: L2-normalise a and v before the residual MLP (``main.py``:
            ``generate_prediction(..., normalization=True)``).
        head_gradient: ``reference`` (faithful to the code at HEAD: the composition head gets
            CE_f + 2 L_vm + L_ma + 2 L_div) or ``separate`` (the first release: CE_f + L_vm + L_ma + L_div);
            see the module docstring. The student's gradient is the same in both.
    """

    temperature: float = 0.5
    contrastive_weight: float = 1.0
    divergence_weight: float = 0.5
    divergence: Literal["symmetric_kl", "js"] = "symmetric_kl"
    composed_ce_weight: float = 1.0
    normalize_inputs: bool = True
    head_gradient: Literal["reference", "separate"] = "reference"

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"ccl.temperature must be > 0, got {self.temperature}")
        for name in ("contrastive_weight", "divergence_weight", "composed_ce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"ccl.{name} must be >= 0, got {getattr(self, name)}")


class Composition(nn.Module):
    """Residual composition of the teacher embedding with the student embedding, and its classifier.

    ``f = a + W_r [â ; v̂] + b_r`` (hats: L2-normalised when ``normalize``), ``z_f = W_c f + b_c``
    (reference ``CompositionClassifier``: ``mlp`` (D + d) -> D, ``fc`` D -> C).

    Args:
        student_dim: d; teacher_dim: D; num_classes: C.
        normalize: L2-normalise both inputs of the residual MLP.
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Linear(teacher_dim + student_dim, teacher_dim)
        self.fc = nn.Linear(teacher_dim, num_classes)
        self.normalize = normalize

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a: (B, D) teacher embedding, v: (B, d) student feature -> (z_f (B, C), f (B, D))."""
        if self.normalize:
            x = torch.cat((F.normalize(a, dim=1), F.normalize(v, dim=1)), dim=1)
        else:
            x = torch.cat((a, v), dim=1)
        f = a + self.mlp(x)
        return self.fc(f), f


def nce_loss(x: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label-aware contrastive loss of CCL (arXiv 2104.10955; reference ``NCELoss``).

    Args:
        x: (B, k) anchors; x2: (B, k) candidates (both L2-normalised inside).
        labels: (B,) int class indices; pairs with equal labels are positives.
        temperature: τ > 0.

    Returns:
        Scalar ``mean_i[-Σ_{j∈P_i} log(P_ij+ε)/|P_i| - Σ_{j∈N_i} log(1-P_ij+ε)/|N_i|]``,
        ``P_ij = softmax_j(cos(x_i, x2_j)/τ)``; a row without negatives has no negative term.
        Computed in float32 (outside autocast).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):  # float32: 1 - P needs the precision
        x, x2 = F.normalize(x.float(), dim=1), F.normalize(x2.float(), dim=1)
        p = torch.softmax(x @ x2.T / temperature, dim=1)  # (B, B)
        pos = positive_mask(labels).to(p.dtype)  # unlabelled clips: their own pair only
        neg = 1.0 - pos
        pos_term = -(torch.log(p + NCE_EPS) * pos).sum(1) / pos.sum(1)
        neg_term = -(torch.log(1.0 - p + NCE_EPS) * neg).sum(1) / neg.sum(1).clamp_min(1.0)
        return (pos_term + neg_term).mean()


def symmetric_nce(x: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``NCE(x, x2) + NCE(x2, x)`` (the reference's symmetric use); inputs as :func:`nce_loss`."""
    return nce_loss(x, x2, labels, temperature) + nce_loss(x2, x, labels, temperature)


def divergence_loss(logits_p: torch.Tensor, logits_q: torch.Tensor, kind: str = "symmetric_kl") -> torch.Tensor:
    """Divergence between the class distributions p = softmax(logits_p), q = softmax(logits_q).

    Args:
        logits_p, logits_q: (B, C) logits (no temperature, as in the reference).
        kind: ``symmetric_kl``: ``mean_i[KL(p‖q) + KL(q‖p)]`` (reference ``JSDLoss`` before its
            weight); ``js``: ``mean_i[KL(p‖m) + KL(q‖m)]``, m = (p + q)/2, i.e. 2·JSD, so that both
            kinds take the reference's weight 0.5 the same way.

    Returns:
        Scalar tensor (unweighted).

    Raises:
        ValueError: unknown ``kind``.
    """
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "symmetric_kl":
        return ((p * (log_p - log_q)).sum(1) + (q * (log_q - log_p)).sum(1)).mean()
    if kind == "js":
        log_m = torch.log((p + q) / 2)
        return ((p * (log_p - log_m)).sum(1) + (q * (log_q - log_m)).sum(1)).mean()
    raise ValueError(f"unknown divergence '{kind}'; use 'symmetric_kl' or 'js'")


@register("ccl")
class CCL(DistillMethod):
    """Compositional contrastive distillation (arXiv 2104.10955).

    Heads: ``composition`` (:class:`Composition`), and ``project`` (d -> D, only when d ≠ D).
    """

    sections = {"ccl": CCLConfig}

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        c: CCLConfig = cfg["ccl"]
        d, dt = dims.student_dim, dims.teacher_dim
        self.composition = Composition(d, dt, dims.num_classes, c.normalize_inputs)
        self.project: nn.Module = nn.Identity() if d == dt else nn.Linear(d, dt, bias=False)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """Terms ``ct_vm``, ``ct_va``, ``div`` (student group) and ``ce_comp``, ``ct_ma`` (+ ``ct_vm_head``,
        ``div_head`` with ``head_gradient: reference``) (heads only)."""
        c: CCLConfig = self.cfg["ccl"]
        v, a = student.feature, teacher.embedding.detach()
        z_f, f = self.composition(a, v)
        z_f, f = z_f.float(), f.float()
        v_t = self.project(v).float()  # v in the teacher space (identity when d == D)
        a = a.float()
        tau, w = c.temperature, c.contrastive_weight
        terms = LossTerms()
        terms.student["ct_vm"] = w * symmetric_nce(v_t, f, labels, tau)
        terms.student["ct_va"] = w * symmetric_nce(v_t, a, labels, tau)
        if c.divergence_weight:
            terms.student["div"] = c.divergence_weight * divergence_loss(student.logits.float(), z_f, c.divergence)
        terms.heads_only["ce_comp"] = c.composed_ce_weight * labelled_cross_entropy(z_f, labels)
        terms.heads_only["ct_ma"] = w * symmetric_nce(f, a, labels, tau)
        if c.head_gradient == "reference":  # the head's second copy of L_vm and L_div (module docstring)
            terms.heads_only["ct_vm_head"] = terms.student["ct_vm"]
            if "div" in terms.student:
                terms.heads_only["div_head"] = terms.student["div"]
        terms.logs = {"comp_acc": (z_f.argmax(1) == labels).float().mean().item()}
        return terms
