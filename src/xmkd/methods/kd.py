"""``kd``: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, arXiv 1503.02531.

Loss (the soft-target term scaled by T² so its gradients keep their size as T changes, Sec. 2):

    L = (1 - α) · CE(p_v, y) + α · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )

averaged over the batch (``batchmean``), with z_t the frozen teacher logits and z_s the student logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xmkd.methods.base import DistillMethod, LossTerms, TeacherBatch, kd_loss, register
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class KDConfig:
    """``kd`` section. temperature: T > 0; alpha: α in [0, 1], weight of the soft-target term."""

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"kd.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"kd.alpha must be in [0, 1], got {self.alpha}")


@register("kd")
class HintonKD(DistillMethod):
    """Logit distillation from the audio teacher (arXiv 1503.02531); no learnable heads."""

    sections = {"kd": KDConfig}
    distills = "logits"

    @property
    def ce_weight(self) -> float:
        """(1 - α)."""
        return 1.0 - self.cfg["kd"].alpha

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``{"kd": α · T² · KL}`` on the student logits."""
        c: KDConfig = self.cfg["kd"]
        return LossTerms(student={"kd": c.alpha * kd_loss(student.logits, teacher.logits, c.temperature)})
