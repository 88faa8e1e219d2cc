"""``c2kd``: Huo, Zhang, Bai, Zhou, Dong & Tao, "C2KD: Bridging the Modality Gap for Cross-Modal Knowledge
Distillation", CVPR 2024 (no arXiv version; CVF open access).

Reference implementations: the authors' code (github.com/huofushuo/C2KD, ``ave/utils/helper.py``
``train_network_distill`` and ``ntkl``, ``ave/utils/module.py`` ``Tea`` / ``Stu``) and MST-Distill's port
(github.com/Gray-OREO/MST-Distill, ``main-C2KD.py``, ``KD_methods/C2KD.py`` ``ProxyNet1D``,
``batch_kendall_tau_gpu``), whose defaults are the authors' (``--krc 0.0``, temperature 1). Formulas re-derived
and written anew.

C2KD puts a *proxy* head on each side: p_t = P_t(a) on the teacher's feature and p_s = P_s(v) on the student's.
Each network and its proxy teach each other both ways, and the two proxies exchange only their non-target-class
knowledge, and only on the clips where they rank the classes alike (on-the-fly selection). With z_t the teacher's
logits, z_s the student's, y the target class, ``sg`` a stop-gradient and ``KL(p ‖ q) = Σ_k p_k log(p_k / q_k)``
(batch mean):

    L = CE(z_t, y) + CE(z_s, y)                                           (the loop adds the student's CE)
      + KL(σ(sg z_t) ‖ σ(p_t)) + KL(σ(sg p_t) ‖ σ(z_t))                  teacher ↔ its proxy
      + KL(σ(sg z_s) ‖ σ(p_s)) + KL(σ(sg p_s) ‖ σ(z_s))                  student ↔ its proxy
      + (1/B) Σ_i m_i · [NT(p_s,i ‖ sg p_t,i) + NT(p_t,i ‖ sg p_s,i)]     proxies, non-target classes
    m_i = 1[τ_b(p_t,i, p_s,i) > κ]                                        Kendall's τ_b over the C classes

``NT(q ‖ sg p) = KL(σ(p ⊙ (1 − e_y) / T) ‖ σ(q ⊙ (1 − e_y) / T))``: the reference masks the target class by
*multiplying its logit by 0* (``logits * (~gt_mask)``), so the target class keeps a logit of 0 in both softmaxes;
that is the faithful default (``ntkl_drop_target: false``). The fix the paper's "non-target classes" describes,
``ntkl_drop_target: true``, drops the target column and renormalises over the C − 1 others (as DKD's NCKD).
The mean is over the whole batch, selected or not, as in the reference. The proxies are the reference's
``ProxyNet1D``: ``Linear(n, n) → BatchNorm1d → LeakyReLU(0.1) → Linear(n, C)`` with Kaiming-normal (fan-out)
weights.

Adaptation to this pipeline (the teacher is frozen): C2KD fine-tunes a *pretrained* teacher network jointly with
the student (MST-Distill's ``main-C2KD.py`` loads the teacher's checkpoint before the joint training). Here the audio
teacher is frozen and only its outputs reach the method, so what is fine-tuned is the teacher's last layer: with
``c2kd.teacher_init: pretrained`` (default) ``z_t = z_t^frozen + ΔW a + Δb`` with ΔW, Δb initialised to 0. The
teacher's classifier is linear on its embedding (``z_t^frozen = W_0 a + b_0``, :mod:`xmkd.models.teacher`), so this
is exactly the last layer fine-tuned from its pretrained weights ``(W_0 + ΔW, b_0 + Δb)``. ``teacher_init: scratch``
is a fresh linear head ``z_t = W_t a + b_t`` (the teacher side learnt from nothing; reported as an option). P_t
reads a.

Few-labels regime: CE(z_t, ·) and the non-target split use the label, or for an unlabelled clip the frozen
teacher's prediction (:func:`~xmkd.methods.base.teacher_target`); the loop's CE(z_s, y) uses labelled clips only.
A training batch of a single clip (BatchNorm cannot normalise it) gets no C2KD term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register, teacher_target
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class C2KDConfig:
    """``c2kd`` section (defaults = the authors' code, huofushuo/C2KD ``ave/main_overlap_tag.py``).

    Attributes:
        krc: κ in [-1, 1), the Kendall rank-correlation threshold of the on-the-fly selection (``--krc 0.0``).
        temperature: T > 0 of the non-target KL (``ntkl(..., temperature=1)``).
        ntkl_drop_target: false = faithful (the target logit set to 0, kept in the softmax); true = the target
            class removed and the C − 1 non-target classes renormalised.
        teacher_init: ``pretrained`` = the teacher's last layer fine-tuned from the frozen teacher's weights
            (a zero-initialised residual on its logits; C2KD fine-tunes a pretrained teacher); ``scratch`` = a fresh
            linear head on the frozen embedding.
    """

    krc: float = 0.0
    temperature: float = 1.0
    ntkl_drop_target: bool = False
    teacher_init: str = "pretrained"

    def __post_init__(self) -> None:
        if self.teacher_init not in ("pretrained", "scratch"):
            raise ValueError(f"c2kd.teacher_init must be 'pretrained' or 'scratch', got {self.teacher_init!r}")
        if not -1.0 <= self.krc < 1.0:
            raise ValueError(f"c2kd.krc must be in [-1, 1) (a Kendall tau threshold), got {self.krc}")
        if self.temperature <= 0:
            raise ValueError(f"c2kd.temperature must be > 0, got {self.temperature}")


class ProxyHead(nn.Module):
    """C2KD's proxy network on a pooled feature (MST-Distill ``ProxyNet1D``): (B, n) -> (B, C) logits."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.bn = nn.BatchNorm1d(in_dim)
        self.fc2 = nn.Linear(in_dim, num_classes)
        for m in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n) float -> (B, C) logits."""
        return self.fc2(F.leaky_relu(self.bn(self.fc1(x)), 0.1))


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kendall's τ_b between the rows of ``x`` and ``y`` (scipy.stats.kendalltau's default variant).

    ``τ_b = (n_c − n_d) / sqrt((n_0 − t_x)(n_0 − t_y))`` over the n_0 = C(C − 1)/2 pairs of columns, t_x and t_y
    the pairs tied in x and in y (C2KD's ``batch_kendall_tau_gpu``; 0 where a row is constant).

    Args:
        x, y: (B, C) float, C >= 2.

    Returns:
        (B,) float in [-1, 1].
    """
    c = x.shape[1]
    i, j = torch.triu_indices(c, c, offset=1, device=x.device)
    sx = torch.sign(x[:, i] - x[:, j])  # (B, pairs)
    sy = torch.sign(y[:, i] - y[:, j])
    prod = sx * sy
    n0 = float(i.numel())
    denom = torch.sqrt((n0 - (sx == 0).sum(1).float()) * (n0 - (sy == 0).sum(1).float()))
    num = (prod > 0).sum(1).float() - (prod < 0).sum(1).float()
    return torch.where(denom > 0, num / denom.clamp_min(1e-12), torch.zeros_like(num))


def mutual_kl(net: torch.Tensor, proxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C2KD's two KL terms between a network's logits and its proxy's, each teaching the other.

    Args:
        net: (B, C) logits of the network (z_t or z_s); proxy: (B, C) logits of its proxy.

    Returns:
        ``(KL(σ(sg net) ‖ σ(proxy)), KL(σ(sg proxy) ‖ σ(net)))``, batch means (the first trains the proxy, the
        second the network).
    """
    to_proxy = F.kl_div(
        F.log_softmax(proxy, -1), F.log_softmax(net.detach(), -1), reduction="batchmean", log_target=True
    )
    to_net = F.kl_div(F.log_softmax(net, -1), F.log_softmax(proxy.detach(), -1), reduction="batchmean", log_target=True)
    return to_proxy, to_net


def non_target_kl(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float, drop_target: bool
) -> torch.Tensor:
    """Per-clip KL over the non-target classes, ``NT(student ‖ sg teacher)`` (C2KD ``ntkl``).

    Args:
        student: (B, C) logits that learn; teacher: (B, C) logits taught from (detached here).
        target: (B,) int64 target class in [0, C).
        temperature: T > 0.
        drop_target: False = the reference (target logit multiplied by 0 and kept); True = the target column
            removed, the C − 1 others renormalised.

    Returns:
        (B,) float ``Σ_k p_k (log p_k − log q_k)``.
    """
    t = temperature
    zs, zt = student.float(), teacher.detach().float()
    is_target = F.one_hot(target, zs.shape[1]).bool()
    if drop_target:
        b, c = zs.shape
        zs, zt = zs[~is_target].view(b, c - 1), zt[~is_target].view(b, c - 1)
    else:
        zs, zt = zs.masked_fill(is_target, 0.0), zt.masked_fill(is_target, 0.0)
    log_q = F.log_softmax(zs / t, dim=1)
    log_p = F.log_softmax(zt / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@register("c2kd")
class C2KD(DistillMethod):
    """C2KD (Huo et al., CVPR 2024) from the frozen audio teacher's embedding; heads: a linear teacher head and
    the two proxies (see the module docstring for the frozen-teacher adaptation).

    Heads:
        teacher_head: Linear(D, C): ``z_t = z_t^frozen + ΔW a + Δb`` (zero-initialised, ``teacher_init:
            pretrained``) or ``z_t = W_t a + b_t`` (``scratch``).
        proxy_t: :class:`ProxyHead` (D -> C) on a; proxy_s: :class:`ProxyHead` (d -> C) on the student's v.
    """

    sections = {"c2kd": C2KDConfig}
    distills = "logits"

    def __init__(self, dims: Dims, cfg: dict[str, Any]) -> None:
        super().__init__(dims, cfg)
        self.teacher_head = nn.Linear(dims.teacher_dim, dims.num_classes)
        self.residual = self.cfg["c2kd"].teacher_init == "pretrained"
        if self.residual:  # the fine-tuned last layer starts at the frozen teacher's
            nn.init.zeros_(self.teacher_head.weight)
            nn.init.zeros_(self.teacher_head.bias)
        self.proxy_t = ProxyHead(dims.teacher_dim, dims.num_classes)
        self.proxy_s = ProxyHead(dims.student_dim, dims.num_classes)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """C2KD terms of a batch (the loop adds CE(z_s, y)); all in the student group (one joint objective, as in
        the reference, whose terms on the teacher side reach only the heads).

        Args:
            student: outputs with ``feature`` v (B, d) and ``logits`` (B, C).
            teacher: frozen teacher outputs with ``embedding`` (B, D) and ``logits`` (B, C).
            labels: (B,) int64, -1 for an unlabelled clip.

        Returns:
            Terms ``c2kd_teacher_ce``, ``c2kd_teacher_proxy`` (both KL directions), ``c2kd_student_proxy`` and
            ``c2kd_proxies`` (the selected non-target KL); logs the selected share and the mean τ_b.
        """
        c: C2KDConfig = self.cfg["c2kd"]
        if self.training and len(labels) < 2:
            return LossTerms()
        a = teacher.embedding.detach().float()
        target = teacher_target(labels, teacher.logits)
        z_t = self.teacher_head(a) + (teacher.logits.detach().float() if self.residual else 0.0)
        p_t = self.proxy_t(a)
        p_s = self.proxy_s(student.feature.float())
        z_s = student.logits.float()

        t_to_proxy, t_to_net = mutual_kl(z_t, p_t)
        s_to_proxy, s_to_net = mutual_kl(z_s, p_s)
        tau = kendall_tau_b(p_t.detach(), p_s.detach())
        mask = (tau > c.krc).float()
        nt = non_target_kl(p_s, p_t, target, c.temperature, c.ntkl_drop_target) + non_target_kl(
            p_t, p_s, target, c.temperature, c.ntkl_drop_target
        )
        terms = {
            "c2kd_teacher_ce": F.cross_entropy(z_t, target),
            "c2kd_teacher_proxy": t_to_proxy + t_to_net,
            "c2kd_student_proxy": s_to_proxy + s_to_net,
            "c2kd_proxies": (mask * nt).mean(),
        }
        logs = {"c2kd_selected": float(mask.mean()), "c2kd_tau": float(tau.mean())}
        return LossTerms(student=terms, logs=logs)
