"""``mfh``: Xue, Gao, Ren & Zhao, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge
Distillation", ICLR 2023, arXiv 2206.06487, as MST-Distill implements its modality-general decisive feature
ranking (MGDFR).

Reference implementations: github.com/zihuixue/MFH and MST-Distill (github.com/Gray-OREO/MST-Distill,
``main-MGDFR.py``, ``KD_methods/MGDFR.py``, ``KD_methods/KD.py``), whose defaults are used here (``--ratio 0.75``,
``--alpha 0.5``, ``--repeat_permute 10``, KD temperature 4). Formulas re-derived and written anew.

The hypothesis: only the *modality-general decisive* features of the teacher, those that decide the label in both
modalities, can be transferred across modalities. MGDFR finds them in three steps and distils only them:

1. **Co-training.** Teacher and student are trained together, ``CE(z_t, y) + CE(z_s, y) + MSE(z_t, z_s)``.
2. **Salience.** For each teacher feature channel i, permute its values across the clips of a batch
   (a ↦ a^(π,i)) and measure how far the teacher's output moves from the student's:
   ``s_i = E_π E_batch MSE(h_t(a^(π,i)), z_s)``, averaged over ``repeat_permute`` permutations; s is min-max
   normalised. A channel whose permutation pushes the teacher away from the student carries what the two share.
3. **Distillation.** The ``ratio`` · D least salient channels are *frozen* to their batch mean
   (``my_freeze_new``) and the student learns by KD from the teacher's output on the filtered feature:
   ``L = (1 − α) · CE(z_s, y) + α · T² · KL(σ(z̃_t / T) ‖ σ(z_s / T))``, ``z̃_t = h_t(freeze(a))``.

Adaptation to this pipeline (the teacher is frozen, one training run per seed):

- The teacher network is frozen, so its trainable part in the co-training is a linear head
  ``h_t(a) = W_t a + b_t`` on the frozen embedding a (the layer MGDFR permutes is the teacher's penultimate
  one, as a here). Step 1's MSE trains h_t and the student jointly.
- The three steps share the run's ``train.epochs``: epochs 1..``co_epochs`` are step 1; the salience (step 2) is
  accumulated over the training batches of epoch ``co_epochs`` (the end of co-training, with the models as they
  are then), with no gradient; the mask is fixed at the first step after it and h_t is frozen from then on
  (MGDFR's teacher is in eval mode and outside the optimiser in step 3). MGDFR instead trains a *fresh* student
  in step 3; here the student of step 1 goes on.
- Few-labels regime: h_t's CE uses the label, or for an unlabelled clip the frozen teacher's prediction
  (:func:`~xmkd.methods.base.teacher_target`); the loop's CE(z_s, y) uses labelled clips only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.errors import ConfigError
from xmkd.methods.base import (
    Dims,
    DistillMethod,
    EpochCounter,
    LossTerms,
    TeacherBatch,
    kd_loss,
    register,
    teacher_target,
)
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class MFHConfig:
    """``mfh`` section (defaults = MST-Distill ``main-MGDFR.py``, arXiv 2206.06487).

    Attributes:
        ratio: share of the teacher's D channels removed (frozen to their batch mean), in [0, 1) (``--ratio 0.75``).
        alpha: α in [0, 1], weight of the KD term; the student's CE gets 1 − α in step 3 (``--alpha 0.5``).
        temperature: T > 0 of the KD term (``distillation_loss(..., T=4.0)``).
        repeat_permute: permutations per channel in the salience (``--repeat_permute 10``).
        co_epochs: epochs of co-training (step 1) before the distillation, >= 1 and below ``train.epochs``
            (MGDFR runs a separate 100-epoch co-training; here a third of the default 30 epochs).
    """

    ratio: float = 0.75
    alpha: float = 0.5
    temperature: float = 4.0
    repeat_permute: int = 10
    co_epochs: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"mfh.ratio must be in [0, 1) (the share of teacher channels removed), got {self.ratio}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"mfh.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"mfh.temperature must be > 0, got {self.temperature}")
        if self.repeat_permute < 1:
            raise ValueError(f"mfh.repeat_permute must be >= 1, got {self.repeat_permute}")
        if self.co_epochs < 1:
            raise ValueError(f"mfh.co_epochs must be >= 1 (the salience is measured at its end), got {self.co_epochs}")


def permutation_salience(
    head: nn.Module,
    embedding: torch.Tensor,
    student_logits: torch.Tensor,
    repeats: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MGDFR's channel salience on one batch: ``s_i = mean_r MSE(head(a^(π_r,i)), z_s)`` (arXiv 2206.06487).

    Channel i of the embedding is permuted across the batch (a fresh permutation π_r per channel and repeat), the
    other channels kept; the MSE is the mean over the batch and classes (``nn.MSELoss()``).

    Args:
        head: maps (..., D) embeddings to (..., C) logits (h_t).
        embedding: (B, D) teacher embedding a.
        student_logits: (B, C) z_s (treated as constants).
        repeats: permutations per channel, >= 1.
        generator: RNG of the permutations (the global one when None).

    Returns:
        (D,) float salience of each channel (not normalised).
    """
    a = embedding.detach().float()
    zs = student_logits.detach().float()
    b, d = a.shape
    eye = torch.eye(d, dtype=torch.bool, device=a.device)  # (D, D): row i = channel i
    out = torch.zeros(d, device=a.device)
    with torch.no_grad():
        for _ in range(repeats):
            perm = torch.argsort(torch.rand(d, b, generator=generator, device=a.device), dim=1)  # (D, B)
            shuffled = a.T.gather(1, perm)  # (D, B): channel i's values in permuted order
            x = torch.where(eye[:, None, :], shuffled[:, :, None], a[None, :, :])  # (D, B, D)
            out += ((head(x) - zs[None]) ** 2).mean(dim=(1, 2))
    return out / repeats


def removed_channels(salience: torch.Tensor, ratio: float) -> torch.Tensor:
    """The ``int(ratio · D)`` least salient channels after min-max normalisation (MGDFR ``sort_idx[0: ratio·D]``).

    Args:
        salience: (D,) float; ratio: in [0, 1).

    Returns:
        (D,) bool, True for a removed channel (ties broken by the lower index).
    """
    s = salience.float()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    k = int(ratio * len(s))
    mask = torch.zeros(len(s), dtype=torch.bool, device=s.device)
    mask[torch.argsort(s, stable=True)[:k]] = True
    return mask


def freeze_channels(embedding: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """MGDFR's ``my_freeze_new``: the removed channels set to their batch mean, the others unchanged.

    Args:
        embedding: (B, D); removed: (D,) bool.

    Returns:
        (B, D) new tensor.
    """
    a = embedding.detach().float()
    return torch.where(removed[None, :], a.mean(dim=0, keepdim=True), a)


@register("mfh")
class MFH(DistillMethod):
    """Modality-focusing distillation by MGDFR (arXiv 2206.06487): co-training, permutation salience, KD from the
    teacher's modality-general channels only (see the module docstring for the frozen-teacher adaptation).

    Heads:
        teacher_head: Linear(D, C), h_t.

    Buffers:
        counter.clips_seen: () int64, training clips seen (the phase comes from the epoch).
        salience_sum: (D,) float, Σ over the batches of the last co-training epoch of their salience.
        salience_batches: () float, how many batches that sum holds.
        removed: (D,) bool, the removed (frozen) channels, fixed at the first distillation step.
        fixed: () bool, whether ``removed`` is fixed.
    """

    sections = {"mfh": MFHConfig}
    distills = "logits"

    def __init__(self, dims: Dims, cfg: dict[str, Any]) -> None:
        super().__init__(dims, cfg)
        self.teacher_head = nn.Linear(dims.teacher_dim, dims.num_classes)
        self.counter = EpochCounter("mfh", dims.num_train, "train it with the training-set size")
        self.register_buffer("salience_sum", torch.zeros(dims.teacher_dim))
        self.register_buffer("salience_batches", torch.zeros(()))
        self.register_buffer("removed", torch.zeros(dims.teacher_dim, dtype=torch.bool))
        self.register_buffer("fixed", torch.zeros((), dtype=torch.bool))
        self._distilling = False

    @property
    def ce_weight(self) -> float:
        """1 in co-training, 1 − α in the distillation (MGDFR's ``(1 - alpha) * loss_s``), as of the last batch."""
        return 1.0 - self.cfg["mfh"].alpha if self._distilling else 1.0

    def _fix_mask(self) -> None:
        if float(self.salience_batches) <= 0:
            raise ConfigError(
                "method 'mfh' reached its distillation step with no salience measured (no training batch in its "
                f"last co-training epoch {self.cfg['mfh'].co_epochs}); set mfh.co_epochs below train.epochs."
            )
        self.removed.copy_(removed_channels(self.salience_sum / self.salience_batches, self.cfg["mfh"].ratio))
        self.fixed.fill_(True)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """Step 1 terms (``mfh_teacher_ce``, ``mfh_co``) up to epoch ``co_epochs``, then step 3's ``mfh_kd``;
        advances the clip counter in training mode (in eval mode: the terms of the phase reached, nothing recorded).

        Args:
            student: outputs with ``logits`` (B, C).
            teacher: frozen teacher outputs with ``embedding`` (B, D) and ``logits`` (B, C).
            labels: (B,) int64, -1 for an unlabelled clip.

        Raises:
            ConfigError: the distillation step starts with no salience measured (see :meth:`_fix_mask`).
        """
        c: MFHConfig = self.cfg["mfh"]
        a = teacher.embedding.detach().float()
        z_s = student.logits.float()
        epoch = self.counter.epoch if self.training else None  # outside training: the phase the run has reached
        self._distilling = epoch > c.co_epochs if epoch is not None else bool(self.fixed)
        logs: dict[str, float] = {"mfh_distilling": float(self._distilling)}
        if not self._distilling:
            z_t = self.teacher_head(a)
            terms = {
                "mfh_teacher_ce": F.cross_entropy(z_t, teacher_target(labels, teacher.logits)),
                "mfh_co": F.mse_loss(z_t, z_s),
            }
            if epoch == c.co_epochs:
                self.salience_sum += permutation_salience(self.teacher_head, a, z_s, c.repeat_permute)
                self.salience_batches += 1
        else:
            if not bool(self.fixed):
                self._fix_mask()
            with torch.no_grad():
                z_t = self.teacher_head(freeze_channels(a, self.removed))
            terms = {"mfh_kd": c.alpha * kd_loss(z_s, z_t, c.temperature)}
            logs["mfh_kept_channels"] = float((~self.removed).sum())
        if self.training:
            self.counter.advance(len(labels))
        return LossTerms(student=terms, logs=logs)
