"""``dkd``: Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022, arXiv 2203.08679.

Reference implementation: mdistiller (github.com/megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``,
defaults from ``mdistiller/engine/cfg.py``: ``DKD.CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0, T 4.0, WARMUP 20``);
formulas re-derived and written anew.

DKD splits the classical KD loss into a target-class part and a non-target-class part and weighs them
independently. With temperature T, target class y of a clip, logits z (student z_s, frozen teacher z_t):

    p = softmax(z / T)                                      (C classes)
    b = (p_y, 1 - p_y)                                      binary target / non-target probabilities
    p̂_k = p_k / (1 - p_y),  k ≠ y                         non-target classes, renormalised (C - 1)

    TCKD = T² · KL(b_t ‖ b_s)
    NCKD = T² · KL(p̂_t ‖ p̂_s)
    L    = CE(p_v, y) + min(e / W, 1) · (α · TCKD + β · NCKD)

each KL summed over its classes and averaged over the batch, e the current epoch counted from 1 and W the
warm-up length in epochs (mdistiller: ``min(epoch / warmup, 1.0)``). The paper's Eq. (6) is the identity this
decomposes: ``KD = TCKD + (1 - p_t,y) · NCKD`` (p_t,y the teacher's target probability), i.e. KD couples NCKD to
the teacher's confidence, which DKD replaces by the free weight β.

Implementation notes:

- Numerically, b is ``softmax([z_y / T, logsumexp_{k≠y}(z_k / T)])`` and p̂ the softmax over the C - 1
  non-target logits (the target column removed), so no ``log(0)`` or large-constant masking is needed
  (mdistiller subtracts ``1000 · gt_mask``, which gives the same values up to rounding).
- Few-labels regime: a training clip may carry :data:`~xmkd.methods.base.UNLABELLED` (-1). An unlabelled clip's
  target class is the teacher's prediction (``argmax z_t``) for the TCKD / NCKD split; CE (added by the
  training loop) still uses labelled clips only.
- Warm-up: the training loop has no epoch hook (:func:`xmkd.train.train` calls only ``loss``), so the method
  counts the clips it has been trained on in a buffer (``clips_seen``, incremented in :meth:`DKD.loss` in
  training mode, after the factor is computed, by the batch size times the DDP world size) and takes
  ``e = floor(clips_seen / num_train) + 1``. With a loader that yields every training clip once per epoch
  this is exactly mdistiller's 1-based epoch; under DDP the ``DistributedSampler`` padding (fewer than
  ``world_size`` clips per epoch) can move an epoch boundary forward by a step. ``num_train`` comes from
  :class:`~xmkd.methods.base.Dims`; a warm-up with ``num_train = 0`` (unknown) is refused with a ConfigError.
  ``warmup_epochs: 0`` switches the warm-up off (factor 1 from the first step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xmkd.methods.base import Dims, DistillMethod, EpochCounter, LossTerms, TeacherBatch, register, teacher_target
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class DKDConfig:
    """``dkd`` section (defaults = mdistiller's CIFAR-100 DKD config, arXiv 2203.08679).

    Attributes:
        alpha: α >= 0, weight of TCKD (``DKD.ALPHA 1.0``).
        beta: β >= 0, weight of NCKD (``DKD.BETA 8.0``).
        temperature: T > 0 (``DKD.T 4.0``).
        warmup_epochs: W >= 0, epochs over which the DKD term ramps up linearly (``DKD.WARMUP 20``); 0 = none.
    """

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: float = 20.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"dkd.temperature must be > 0, got {self.temperature}")
        if self.alpha < 0:
            raise ValueError(f"dkd.alpha must be >= 0, got {self.alpha}")
        if self.beta < 0:
            raise ValueError(f"dkd.beta must be >= 0, got {self.beta}")
        if self.warmup_epochs < 0:
            raise ValueError(f"dkd.warmup_epochs must be >= 0 (0 = no warm-up), got {self.warmup_epochs}")


def dkd_target(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Target class of each clip for the TCKD / NCKD split (arXiv 2203.08679): the label, or for an unlabelled clip
    the teacher's prediction (:func:`xmkd.methods.base.teacher_target`).

    Args:
        labels: (B,) int64 class indices, -1 for an unlabelled clip.
        teacher_logits: (B, C) z_t.

    Returns:
        (B,) int64 class indices in [0, C).
    """
    return teacher_target(labels, teacher_logits)


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip TCKD and NCKD of DKD (arXiv 2203.08679, Eq. 6), both scaled by T².

    Args:
        student_logits: (B, C) z_s, C >= 2.
        teacher_logits: (B, C) z_t (treated as constants).
        target: (B,) int64 target class of each clip, in [0, C) (see :func:`dkd_target`).
        temperature: T > 0.

    Returns:
        (tckd, nckd), each (B,): ``T² · KL(b_t ‖ b_s)`` over (target, non-target) and ``T² · KL(p̂_t ‖ p̂_s)`` over
        the C - 1 non-target classes renormalised (0 when C = 2).
    """
    t = temperature
    zs = student_logits.float() / t
    zt = teacher_logits.detach().float() / t
    b, c = zs.shape
    is_target = F.one_hot(target, c).bool()  # (B, C)
    zs_y, zt_y = zs[is_target], zt[is_target]  # (B,)
    zs_nt = zs[~is_target].view(b, c - 1)  # (B, C-1), the other classes in their original order
    zt_nt = zt[~is_target].view(b, c - 1)

    # binary (target, non-target) log-probabilities: log softmax([z_y, logsumexp_{k != y} z_k])
    log_bs = F.log_softmax(torch.stack([zs_y, torch.logsumexp(zs_nt, dim=1)], dim=1), dim=1)  # (B, 2)
    log_bt = F.log_softmax(torch.stack([zt_y, torch.logsumexp(zt_nt, dim=1)], dim=1), dim=1)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(dim=1) * t * t

    log_ps = F.log_softmax(zs_nt, dim=1)  # (B, C-1) p̂_s
    log_pt = F.log_softmax(zt_nt, dim=1)
    nckd = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1) * t * t
    return tckd, nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """DKD loss ``α · TCKD + β · NCKD`` (arXiv 2203.08679), batch mean, without the warm-up factor.

    Args:
        student_logits: (B, C) z_s.
        teacher_logits: (B, C) z_t (treated as constants).
        target: (B,) int64 target classes in [0, C) (see :func:`dkd_target`).
        alpha: α, weight of TCKD; beta: β, weight of NCKD; temperature: T > 0.

    Returns:
        Scalar tensor.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return (alpha * tckd + beta * nckd).mean()


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """mdistiller's DKD warm-up ``min(epoch / W, 1)`` (arXiv 2203.08679); 1 when ``W == 0``.

    Args:
        epoch: current epoch, counted from 1.
        warmup_epochs: W >= 0.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


@register("dkd")
class DKD(DistillMethod):
    """Decoupled Knowledge Distillation from the audio teacher's logits (arXiv 2203.08679); no learnable heads.

    Buffers:
        counter.clips_seen: () int64, training clips the method has been trained on over all ranks (for the warm-up).
    """

    sections = {"dkd": DKDConfig}
    distills = "logits"

    def __init__(self, dims: Dims, cfg: dict[str, Any]) -> None:
        super().__init__(dims, cfg)
        self.counter = EpochCounter("dkd", dims.num_train, "set dkd.warmup_epochs: 0")

    @property
    def clips_seen(self) -> torch.Tensor:
        """() int64, training clips seen over all ranks (the counter's buffer)."""
        return self.counter.clips_seen

    @property
    def epoch(self) -> int:
        """Current training epoch, counted from 1 (:class:`~xmkd.methods.base.EpochCounter`).

        Raises:
            ConfigError: ``dims.num_train`` is 0 (unknown).
        """
        return self.counter.epoch

    def current_warmup(self) -> float:
        """The warm-up factor ``min(e / W, 1)`` of the next training step."""
        c: DKDConfig = self.cfg["dkd"]
        if c.warmup_epochs <= 0:
            return 1.0
        return warmup_factor(self.epoch, c.warmup_epochs)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"dkd": min(e/W, 1) · (α · TCKD + β · NCKD)}`` on the student logits; advances the clip counter in
        training mode.

        Args:
            student: outputs with ``logits`` (B, C).
            teacher: frozen teacher outputs with ``logits`` (B, C).
            labels: (B,) int64, -1 for an unlabelled clip (its target class is the teacher's prediction).
        """
        c: DKDConfig = self.cfg["dkd"]
        factor = self.current_warmup()
        target = dkd_target(labels, teacher.logits)
        tckd, nckd = dkd_terms(student.logits, teacher.logits, target, c.temperature)
        value = factor * (c.alpha * tckd + c.beta * nckd).mean()
        if self.training:
            self.counter.advance(len(labels))
        logs = {"dkd_tckd": float(tckd.mean().detach()), "dkd_nckd": float(nckd.mean().detach()), "dkd_warmup": factor}
        return LossTerms(student={"dkd": value}, logs=logs)
