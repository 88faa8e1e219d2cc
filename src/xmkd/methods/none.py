"""``none``: the student trained with cross-entropy on the labels only (no teacher)."""

from __future__ import annotations

from xmkd.methods.base import DistillMethod, register


@register("none")
class NoDistillation(DistillMethod):
    """Baseline without distillation: loss = ``CE(p_v, y)`` (added by the training loop)."""

    sections: dict[str, type] = {}
    uses_teacher = False
    distills = "none"
