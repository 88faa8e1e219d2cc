"""``xkd``: cross-modal distillation with MMD domain alignment, adapted to a frozen teacher embedding.

Sarkar & Etemad, "XKD: Cross-modal Knowledge Distillation with Domain Alignment for Video
Representation Learning", arXiv 2211.13929 (AAAI 2024). Loss formulas and hyper-parameters from the
official code (github.com/pritamqu/XKD: ``codes/train/models/xkd.py``, ``models/modules/loss.py``
(``MMD_Loss``, ``DINOLossX``), ``models/modules/projector.py`` (``DINOHead``),
``models/modules/__init__.py`` (``projector_dict``), ``configs/pretext/kinetics400/xkd.yaml``),
re-derived and written anew.

What XKD does (self-supervised): each modality has a student (a ViT trained by masked reconstruction
and by distillation) and a teacher (an EMA of the same-modality student); each network ends in a
DINO head (MLP -> L2-normalised bottleneck -> weight-normalised prototype layer -> LayerNorm).
Cross-modal distillation is DINO's cross-entropy from one modality's teacher to the other modality's
student; domain alignment is an MMD between the two modalities' head outputs, on the students
(``as2vs_align_loss``) and on the teachers (``vt2at_align_loss``, computed under ``no_grad``, so it
carries no gradient).

Adaptation here (teacher = frozen, precomputed audio embedding a (B, D); student video feature
v (B, d); no reconstruction, no EMA teachers, single view):

- Two learnable DINO heads of the official architecture (``projector_dict['2048-gelu-3-256-8192-norm3']``):
  ``h_s``: R^d -> R^k on the student feature and ``h_t``: R^D -> R^k on the teacher embedding.
  ``h_s(v)`` plays XKD's video-student output; ``h_t(a)`` plays the audio side: with gradient it is the
  audio-student output in the alignment term, detached it is the audio-teacher output in the
  distillation term.
- Alignment (XKD's ``as2vs_align_loss``, ``MMD_Loss(kernel_type='gaussian')``): the biased MMD²
  estimate with a sum of Gaussian kernels over bandwidths γ ∈ Γ = {1e-3, 1e-2, ..., 1e3},

      MMD²(X, Y) = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j),
      k(x, y) = Σ_{γ∈Γ} exp(-γ · max(‖x - y‖², 1e-30)),

  ``L_align = MMD²(h_s(v), h_t(a))`` (means include the diagonal, as the reference's). It updates the
  student, ``h_s`` and ``h_t``. The gradient-free teacher-teacher MMD has no counterpart.
- Distillation (XKD's ``at2vs_kd_loss``, ``DINOLossX``): DINO cross-entropy from the (detached)
  teacher projection to the student projection, with teacher centring and sharpening,

      q_i = softmax((h_t(a_i) - c) / τ_t),   L_distill = mean_i Σ_k -q_ik · log softmax(h_s(v_i) / τ_s)_k,
      c <- m·c + (1 - m)·mean_i h_t(a_i)     (after the loss; only in training mode).

  Chosen over a cosine loss because it is XKD's own distillation objective; the centring and the
  sharper teacher temperature are what keep the prototype targets from collapsing in DINO-style
  distillation, and the head's prototype layer has no meaning without the softmax over prototypes.
- Total: ``w_align · L_align + w_distill · L_distill`` (both in ``LossTerms.student``); the loop adds
  ``CE(p_v, y)``. XKD weighs ``(1·align + 1·cmkd + 5·recon) / 7``; without the reconstruction term the
  1 : 1 ratio of its coefficients is kept and the division by 7 is dropped.
- What trains ``h_t``: only L_align (XKD's audio teacher is an EMA of an audio student trained by
  reconstruction and by video -> audio distillation; neither exists with a frozen teacher). With
  ``xkd.align: false`` nothing would update ``h_t``, so it is frozen (``requires_grad=False``) at its
  random initialisation: the targets are then a fixed random DINO head on a. ``xkd.teacher_head:
  frozen`` freezes it in both settings, so that the ablation ``align: true`` vs ``false`` changes
  nothing but the MMD term.
- Omitted, as they need parts that do not exist here: masked reconstruction, the EMA teachers, the
  multi-view (global/local) crops, and the cross-modal attention re-weighting of the teachers' tokens
  (``align_feats``; our teacher is a pooled embedding without tokens). The original aligns the
  ViTs' final token representations through the heads; here the heads read the student's final pooled
  feature v and the teacher's embedding a.

The MMD value is logged in every step (``mmd``; without gradient when ``align`` is false), so the
domain gap can be watched with and without alignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput

MMD_MIN_SQDIST = 1e-30  # the reference clamps squared distances at 1e-30 (``my_cdist``)
DEFAULT_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # reference MMD_Loss.gaussian_kernel


@dataclass(frozen=True)
class XKDConfig:
    """``xkd`` section (defaults = the official code, github.com/pritamqu/XKD).

    Attributes:
        align: include the MMD alignment term (the paper's ablation: distillation with / without
            domain alignment).
        align_weight: weight of L_align (``xkd.yaml`` ``align_coeff: 1``).
        distill_weight: weight of L_distill (``xkd.yaml`` ``cmkd_coeff: 1``).
        gammas: kernel bandwidths γ of k(x, y) = Σ_γ exp(-γ‖x - y‖²) (``MMD_Loss.gaussian_kernel``).
        student_temp: τ_s (``xkd.yaml`` ``audio_temp_kwargs.student_temp: 0.1``, used by ``at2vs``).
        teacher_temp: τ_t of the audio teacher (``audio_temp_kwargs.teacher_temp: 0.07``; its warm-up
            starts at the same 0.07, so it is constant).
        center_momentum: m of the teacher centre (``center_momentum: [0.9, 0.9]``).
        out_dim: k, prototypes of the DINO heads (``projector_dict``: 8192).
        hidden_dim: width of the heads' MLP (2048).
        bottleneck_dim: bottleneck before the prototype layer (256).
        n_layers: linear layers of the heads' MLP (3).
        teacher_head: ``learnable`` (trained by L_align) or ``frozen`` (fixed random init).
        shared_norm: one LayerNorm module shared by all hidden layers of each head (faithful: the
            reference's ``DINOHead.__init__`` calls ``_build_norm`` once and appends the same module after
            every hidden Linear, ``codes/train/models/modules/projector.py``), or one per layer (false).
    """

    align: bool = True
    align_weight: float = 1.0
    distill_weight: float = 1.0
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    center_momentum: float = 0.9
    out_dim: int = 8192
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    teacher_head: Literal["learnable", "frozen"] = "learnable"
    shared_norm: bool = True

    def __post_init__(self) -> None:
        if self.student_temp <= 0 or self.teacher_temp <= 0:
            raise ValueError("xkd.student_temp and xkd.teacher_temp must be > 0")
        if not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError(f"xkd.center_momentum must be in [0, 1], got {self.center_momentum}")
        if not self.gammas or any(g <= 0 for g in self.gammas):
            raise ValueError(f"xkd.gammas must be a non-empty list of positive numbers, got {list(self.gammas)}")
        if min(self.out_dim, self.hidden_dim, self.bottleneck_dim, self.n_layers) < 1:
            raise ValueError("xkd.out_dim, hidden_dim, bottleneck_dim and n_layers must be >= 1")
        if self.align_weight < 0 or self.distill_weight < 0:
            raise ValueError("xkd.align_weight and xkd.distill_weight must be >= 0")


class DINOHead(nn.Module):
    """XKD's projector (``DINOHead`` with ``'2048-gelu-3-256-8192-norm3'``), written anew.

    ``x -> [Linear -> LayerNorm -> GELU] x (n_layers - 1) -> Linear(bottleneck) -> L2-normalise ->
    prototype layer -> LayerNorm (no affine)``. The prototype layer is a bias-free linear map whose
    rows are L2-normalised (weight normalisation with its gain fixed at 1, ``norm_last_layer=True``),
    i.e. cosine similarities to k learnable prototypes. MLP weights: truncated normal, std 0.02,
    biases 0 (as the reference); prototypes: PyTorch's default ``nn.Linear`` init (as the reference,
    whose init pass runs before the prototype layer is created).

    Args:
        in_dim: input dimension; out_dim: k; hidden_dim, bottleneck_dim, n_layers: MLP shape.
        shared_norm: one LayerNorm module (one set of affine parameters) after every hidden Linear, as the
            reference builds it; False: a LayerNorm per hidden layer.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, n_layers: int, shared_norm: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        norm = nn.LayerNorm(hidden_dim)
        for _ in range(n_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), norm if shared_norm else nn.LayerNorm(hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())
        self.out_norm = nn.LayerNorm(out_dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_dim) -> (B, k)."""
        z = F.normalize(self.mlp(x), dim=-1)
        return self.out_norm(z @ F.normalize(self.prototypes, dim=1).T)


def mmd_gaussian(x: torch.Tensor, y: torch.Tensor, gammas: tuple[float, ...] = DEFAULT_GAMMAS) -> torch.Tensor:
    """Biased MMD² with a sum of Gaussian kernels (XKD ``MMD_Loss``, DomainBed's estimator).

    Args:
        x: (n, k) sample of one domain; y: (m, k) sample of the other.
        gammas: bandwidths γ of ``k(x, y) = Σ_γ exp(-γ · max(‖x - y‖², 1e-30))``.

    Returns:
        Scalar ``mean K(x, x) + mean K(y, y) - 2 mean K(x, y)`` (all pairs, diagonals included),
        computed in float32 (outside autocast). ``mmd_gaussian(x, x) == 0``.
    """

    def kernel(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        sq = (p.pow(2).sum(1, keepdim=True) + r.pow(2).sum(1)[None, :] - 2.0 * p @ r.T).clamp_min(MMD_MIN_SQDIST)
        return sum(torch.exp(-g * sq) for g in gammas)  # type: ignore[return-value]

    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        return kernel(x, x).mean() + kernel(y, y).mean() - 2.0 * kernel(x, y).mean()


def dino_distill_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """DINO cross-entropy from a centred, sharpened teacher to the student (XKD ``DINOLossX``).

    Args:
        student_out: (B, k) student head outputs s.
        teacher_out: (B, k) teacher head outputs t (detached inside).
        center: (1, k) or (k,) running centre c of the teacher outputs.
        student_temp: τ_s; teacher_temp: τ_t.

    Returns:
        Scalar ``mean_i Σ_k -softmax((t_i - c)/τ_t)_k · log_softmax(s_i/τ_s)_k`` (float32).
    """
    with torch.autocast(device_type=student_out.device.type, enabled=False):
        q = torch.softmax((teacher_out.detach().float() - center.float()) / teacher_temp, dim=-1)
        return -(q * F.log_softmax(student_out.float() / student_temp, dim=-1)).sum(-1).mean()


@register("xkd")
class XKD(DistillMethod):
    """XKD-style distillation (arXiv 2211.13929) from a frozen teacher embedding.

    Heads: ``student_head`` (d -> k), ``teacher_head`` (D -> k; frozen when ``align`` is false or
    ``teacher_head: frozen``). Buffer ``center`` (1, k): the teacher centre c.
    """

    sections = {"xkd": XKDConfig}

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        c: XKDConfig = cfg["xkd"]
        shape = (c.out_dim, c.hidden_dim, c.bottleneck_dim, c.n_layers, c.shared_norm)
        self.student_head = DINOHead(dims.student_dim, *shape)
        self.teacher_head = DINOHead(dims.teacher_dim, *shape)
        if not c.align or c.teacher_head == "frozen":
            self.teacher_head.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, c.out_dim))

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """Terms ``distill`` and (with ``align``) ``align``, both in the student group."""
        c: XKDConfig = self.cfg["xkd"]
        s = self.student_head(student.feature)
        t = self.teacher_head(teacher.embedding.detach())
        terms = LossTerms()
        terms.student["distill"] = c.distill_weight * dino_distill_loss(
            s, t, self.center, c.student_temp, c.teacher_temp
        )
        if c.align:
            mmd = mmd_gaussian(s, t, c.gammas)
            terms.student["align"] = c.align_weight * mmd
        else:
            with torch.no_grad():
                mmd = mmd_gaussian(s, t, c.gammas)
        terms.logs = {"mmd": float(mmd.detach())}
        if self.training:
            self._update_center(t.detach())
        return terms

    @torch.no_grad()
    def _update_center(self, t: torch.Tensor) -> None:
        """c <- m·c + (1 - m)·mean_i t_i (t: (B, k))."""
        m = self.cfg["xkd"].center_momentum
        self.center.mul_(m).add_((1.0 - m) * t.float().mean(0, keepdim=True))
