"""``mnf_csc``: Modality Noise Filter + Contrastive Semantic Calibration.

Xia et al., "Robust Cross-Modal Knowledge Distillation for Unconstrained Videos", arXiv 2304.07775,
implemented as the reference code computes it (GeWu-Lab/cross-modal-distillation: ``train.py``,
``loss/csc_loss.py``, ``models/modality_noise_filter.py``; formulas re-derived and written anew).

Terms (v = student feature, V = its tokens, a = teacher embedding, MNF gives a', v', p_sv):

- CSC, Eq. (6)-(8) of the paper; reference ``CSC_Loss``: with v and v' L2-normalised,
  ``s_ij = v_i · v'_j / τ_ij``, ``P_ij = softmax_j(s_ij)``, ``m_ij = 1[y_i = y_j]``,
  ``L_csc = mean_i [ -Σ_j m_ij log(P_ij + 1e-10) / Σ_j m_ij ]`` (the 1e-10 is the reference's).
  Adaptive temperature ``τ_ij = cos(v_i, a'_j).detach() + τ0`` (``csc.adaptive: true``), else ``τ0``.
- MNF classification: ``CE(p_sv, y)`` (weight ``mnf.ce_weight``, the reference's ``cls_n_weight``).
- Triplet (``--use_triplet``): ``mean_i max(0, cos(v_i, a_i) - cos(v_i, a'_i) + margin)``
  (anchor v, negative the raw audio a, positive the selected audio a').
- Gate norm (``--use_norm``): ``0.001 · mean_row(‖W‖_1)``. The reference loops over [W1, W2] but
  *assigns* instead of accumulating, so only W2 counts: ``mnf.gate_norm_on: w2`` reproduces that
  (default, faithful); ``both`` sums the term over W1 and W2 (the evident intent).

Gradient flow (reference: two optimisers, ``a_loss.backward(retain_graph=True)``, then the video
optimiser's ``zero_grad()``, then ``v_loss.backward()``), reproduced here in one optimiser step:

- student  <- CE(p_v, y) + λ·L_csc            (``LossTerms.student``; CSC reaches the student through
  v and through V in the attention)
- MNF      <- CE(p_sv, y) + L_norm + L_triplet (``LossTerms.heads_only``: never the student) + λ·L_csc

Known issue of the reference: ``cos + τ0`` can be <= 0 when ``cos < -τ0``, which flips or blows up
the logits. With post-ReLU features (the reference's R(2+1)D ``v`` and CNN14 ``a``, and this
project's student and teacher) cos >= 0 and it cannot happen; the fraction of pairs with τ <= 0 is
logged (``tau_nonpositive_frac``) and ``csc.tau_min`` (default ``null`` = faithful, no guard)
clamps τ from below when set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from xmkd.methods.base import (
    Dims,
    DistillMethod,
    LossTerms,
    TeacherBatch,
    labelled_cross_entropy,
    positive_mask,
    register,
)  # fmt: skip
from xmkd.models.mnf import ModalityNoiseFilter
from xmkd.models.student import StudentOutput

CSC_EPS = 1e-10  # added inside the log, as in the reference CSC_Loss


@dataclass(frozen=True)
class MNFConfig:
    """``mnf`` section.

    Attributes:
        heads: attention heads (reference: 2).
        ce_weight: weight of CE(p_sv, y) (reference ``--cls_n_weight``, 1).
        triplet: include the triplet term (reference ``--use_triplet``).
        triplet_margin: margin of the triplet term (reference ``--margin``, 0.2).
        gate_norm_weight: weight of the gate L1 term (reference: 0.001 with ``--use_norm``; 0 disables).
        gate_norm_on: ``w2`` (faithful: only W2, see module docstring) or ``both``.
        lr_scale: learning rate of the MNF module (and of the projection of the no-MNF ablation) as a
            multiple of ``train.lr``. Faithful default 0.2: the reference trains the audio-side module with its
            own optimiser at ``learning_rate * 0.2``, same weight decay and milestones (``train_utils.py``,
            ``get_train_module_utils``); 1.0 trains it with the student's rate.
        enabled: false = the "without MNF" ablation: no filter at all, CSC is computed between the student
            feature v and the raw teacher embedding a (τ_ij = cos(v_i, a_j) + τ0; a linear projection
            D -> d only when the dimensions differ), and the MNF terms (CE(p_sv), triplet, gate norm) vanish.
    """

    heads: int = 2
    ce_weight: float = 1.0
    triplet: bool = True
    triplet_margin: float = 0.2
    gate_norm_weight: float = 0.001
    gate_norm_on: Literal["w2", "both"] = "w2"
    lr_scale: float = 0.2

    def __post_init__(self) -> None:
        if not self.lr_scale > 0:
            raise ValueError(f"mnf.lr_scale must be > 0 (a multiple of train.lr), got {self.lr_scale}")
    enabled: bool = True


@dataclass(frozen=True)
class CSCConfig:
    """``csc`` section.

    Attributes:
        temperature: τ0 (reference ``--threshold``: 0.07 UCF51, 0.2 ActivityNet).
        adaptive: τ_ij = cos(v_i, a'_j) + τ0 (reference ``--with_adj``) if true, else τ0.
        weight: λ, weight of L_csc (reference ``--adj_loss``, 1).
        tau_min: if set, clamp τ_ij >= tau_min (a guard the reference lacks); null = faithful.
    """

    temperature: float = 0.07
    adaptive: bool = True
    weight: float = 1.0
    tau_min: float | None = None

    def __post_init__(self) -> None:
        if not self.adaptive and self.temperature <= 0:
            raise ValueError(f"csc.temperature must be > 0 with a fixed temperature, got {self.temperature}")


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, d), (B', d) -> (B, B') cosine similarities."""
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def csc_loss(
    v: torch.Tensor, v_sel: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor | float
) -> torch.Tensor:
    """Contrastive Semantic Calibration loss (arXiv 2304.07775, reference ``CSC_Loss``).

    Args:
        v: (B, d) student features (normalised inside).
        v_sel: (B, d) MNF-selected features v' (normalised inside).
        labels: (B,) int class indices; positives are pairs with equal labels.
        tau: (B, B) per-pair temperatures τ_ij, or a scalar τ0.

    Returns:
        Scalar ``mean_i[-Σ_j m_ij log(softmax_j(s_ij) + 1e-10) / Σ_j m_ij]``, computed in float32 outside
        autocast (as crd, cmc and ccl do): the reference trains in fp32, and with τ ≈ 0.07 bf16 cosines
        (8 bits of mantissa) would move the logits s_ij = cos / τ by up to ~0.06.
    """
    with torch.autocast(device_type=v.device.type, enabled=False):
        t = tau.float() if isinstance(tau, torch.Tensor) else tau
        logits = cosine_matrix(v.float(), v_sel.float()) / t  # (B, B)
        log_p = torch.log(torch.softmax(logits, dim=1) + CSC_EPS)
        mask = positive_mask(labels).to(logits.dtype)  # (B, B), diagonal always 1; unlabelled: itself only
        return (-(log_p * mask).sum(1) / mask.sum(1)).mean()


def csc_temperature(v: torch.Tensor, a_sel: torch.Tensor, cfg: CSCConfig) -> torch.Tensor:
    """τ_ij (B, B) float32: ``cos(v_i, a'_j).detach() + τ0`` if adaptive else τ0, clamped at tau_min if set."""
    b = v.shape[0]
    if cfg.adaptive:
        with torch.autocast(device_type=v.device.type, enabled=False):
            tau = cosine_matrix(v.float(), a_sel.float()).detach() + cfg.temperature
    else:
        tau = torch.full((b, b), cfg.temperature, device=v.device, dtype=torch.float32)
    if cfg.tau_min is not None:
        tau = tau.clamp_min(cfg.tau_min)
    return tau


def triplet_loss(anchor: torch.Tensor, negative: torch.Tensor, positive: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean_i max(0, cos(anchor_i, negative_i) - cos(anchor_i, positive_i) + margin)``; inputs (B, d)."""
    cos_an = F.cosine_similarity(anchor, negative, dim=1, eps=1e-12)
    cos_ap = F.cosine_similarity(anchor, positive, dim=1, eps=1e-12)
    return torch.clamp_min(cos_an - cos_ap + margin, 0.0).mean()


def gate_norm(weights: tuple[torch.Tensor, torch.Tensor], on: str) -> torch.Tensor:
    """Mean over rows of the rows' L1 norms, of W2 only (``on='w2'``) or summed over W1 and W2."""
    ws = weights[1:] if on == "w2" else weights
    return sum(w.abs().sum(dim=1).mean() for w in ws)  # type: ignore[return-value]


@register("mnf_csc")
class MNFCSC(DistillMethod):
    """MNF + CSC distillation (arXiv 2304.07775); its head is a :class:`ModalityNoiseFilter`."""

    sections = {"mnf": MNFConfig, "csc": CSCConfig}

    @property
    def head_lr_scale(self) -> float:
        """``mnf.lr_scale`` (0.2 in the reference)."""
        return float(self.cfg["mnf"].lr_scale)

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        self.mnf: ModalityNoiseFilter | None = None
        self.proj: torch.nn.Module = torch.nn.Identity()
        if cfg["mnf"].enabled:
            self.mnf = ModalityNoiseFilter(dims.student_dim, dims.teacher_dim, dims.num_classes, cfg["mnf"].heads)
        elif dims.teacher_dim != dims.student_dim:
            self.proj = torch.nn.Linear(dims.teacher_dim, dims.student_dim)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """Terms ``csc`` (student group) and ``ce_mnf``, ``triplet``, ``gate_norm`` (heads only).

        With ``mnf.enabled: false`` only ``csc``, between v and the raw (projected) teacher embedding.
        """
        m: MNFConfig = self.cfg["mnf"]
        c: CSCConfig = self.cfg["csc"]
        v = student.feature
        if self.mnf is None:
            a = self.proj(teacher.embedding)  # (B, d)
            tau = csc_temperature(v, a, c)
            terms = LossTerms()
            if c.weight:
                terms.student["csc"] = c.weight * csc_loss(v, a, labels, tau)
            terms.logs = {"tau_mean": tau.mean().item(), "tau_nonpositive_frac": (tau <= 0).float().mean().item()}
            return terms
        out = self.mnf(teacher.embedding, student.feature_map)
        tau = csc_temperature(v, out.selected_audio, c)
        terms = LossTerms()
        if c.weight:
            terms.student["csc"] = c.weight * csc_loss(v, out.feature, labels, tau)
        terms.heads_only["ce_mnf"] = m.ce_weight * labelled_cross_entropy(out.logits, labels)
        if m.triplet:
            terms.heads_only["triplet"] = triplet_loss(v, out.audio, out.selected_audio, m.triplet_margin)
        if m.gate_norm_weight:
            terms.heads_only["gate_norm"] = m.gate_norm_weight * gate_norm(self.mnf.gate_weights, m.gate_norm_on)
        terms.logs = {
            "gate_mean": out.gate.mean().item(),
            "tau_mean": tau.mean().item(),
            "tau_nonpositive_frac": (tau <= 0).float().mean().item(),
            "mnf_acc": (out.logits.argmax(1) == labels).float().mean().item(),  # unlabelled clips count as wrong
        }
        return terms

    def diagnostics(self, student: StudentOutput, teacher: TeacherBatch) -> dict[str, torch.Tensor]:
        """Per clip (B,): ``gate_mean``, the mean of MNF's gate g, and ``gate_norm_ratio`` = ‖g ⊙ a‖ / ‖a‖,
        the share of the teacher embedding that passes; none without MNF."""
        if self.mnf is None:
            return {}
        out = self.mnf(teacher.embedding, student.feature_map)
        ratio = out.selected_audio.float().norm(dim=1) / out.audio.float().norm(dim=1).clamp_min(1e-12)
        return {"gate_mean": out.gate.mean(dim=1), "gate_norm_ratio": ratio}
