"""Feature-sequence student: a masked temporal 1-D convolution over precomputed per-step features.

Input: the packed sequences of :mod:`xmkd.data.sequences`, (B, T, D + 1) for one view or (B, V, T, D + 1) for
V views, the last channel being the validity mask (1 real step, 0 padding). Network: a per-step LayerNorm of the
D input features (``input_norm: layer``; the R(2+1)D features are non-negative, mean 0.8, unnormalised: without
it the student barely trains, docs/corsmal.md "Calibration"), a 1x1 projection D -> d + ReLU computed on the real
steps only, then two residual blocks of a kernel-3 temporal convolution + ReLU (padded steps are zeroed before
and after every convolution, so padding never leaks into real steps), a masked mean over the real steps gives
``v``, dropout and a linear layer the logits. Tokens ``V`` for MNF's attention are the per-step features
(B, T, d), zero at padded steps. Steps beyond the batch's longest real sequence are dropped first (the outputs do
not depend on how much padding a batch carries).

Multi-view (the 4 CORSMAL cameras): in training mode one view is drawn per sample (torch's RNG, so seeded),
i.e. a view is an augmentation; in eval mode the outputs of all V views are averaged: logits, feature and
tokens (mean over views). Temporal convolutions over clip features: as the 1-D conv heads used on precomputed
R(2+1)D / VGGish features (e.g. Lea et al., "Temporal Convolutional Networks", arXiv 1611.05267).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class SequenceStudentConfig:
    """``corsmal.student`` section of params.yaml (the CORSMAL video student).

    Attributes:
        width: d = 8 x width (the student feature's dimension, as ``student.width`` of the video students).
        dropout: on the pooled feature before the classifier.
        input_norm: ``layer`` (per-step LayerNorm of the input features) or ``none``.
    """

    width: int = 8
    dropout: float = 0.2
    input_norm: Literal["layer", "none"] = "layer"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"corsmal.student.width must be >= 1, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"corsmal.student.dropout must lie in [0, 1), got {self.dropout}")

    @property
    def embed_dim(self) -> int:
        """d, the dimension of the student feature ``v``."""
        return 8 * self.width


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, d, T), mask (B, 1, T) float -> (B, d, T), zero at padded steps."""
        return (x + torch.relu(self.conv(x * mask))) * mask


class SequenceStudent(nn.Module):
    """Masked temporal-conv student over feature sequences (see the module docstring).

    Args:
        num_classes: C. input_dim: D of the per-step features (512 for R(2+1)D). embed_dim: d.
        dropout: on the pooled feature before the classifier. input_norm: ``layer`` or ``none``.
    """

    def __init__(self, num_classes: int, input_dim: int = 512, embed_dim: int = 64, dropout: float = 0.2,
                 input_norm: str = "layer") -> None:
        super().__init__()
        if input_norm not in ("layer", "none"):
            raise ValueError(f"input_norm must be 'layer' or 'none', got {input_norm!r}")
        self.input_dim, self.embed_dim = input_dim, embed_dim
        self.norm = nn.LayerNorm(input_dim) if input_norm == "layer" else nn.Identity()
        self.proj = nn.Conv1d(input_dim, embed_dim, kernel_size=1)
        self.blocks = nn.ModuleList([_Block(embed_dim), _Block(embed_dim)])
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)

    def _one(self, x: torch.Tensor) -> StudentOutput:
        """x (B, T, D + 1) -> outputs of one view (tokens (B, T', d) with T' = the longest real sequence)."""
        if x.shape[-1] != self.input_dim + 1:
            raise ValueError(f"sequence student expects (B, T, {self.input_dim + 1}) packed input, got {tuple(x.shape)}")
        real = x[..., -1] > 0.5  # (B, T)
        x = x[:, : max(int(real.sum(1).max()), 1)]  # drop the steps no sequence of the batch reaches
        real = real[:, : x.shape[1]]
        feats, mask = x[..., :-1].float(), real.unsqueeze(-1).float()  # (B, T, D), (B, T, 1)
        # the 1x1 projection on the real steps only (the same as the convolution, at a fraction of the cost)
        h = feats.new_zeros(*real.shape, self.embed_dim)
        h[real] = torch.relu(F.linear(self.norm(feats[real]), self.proj.weight.squeeze(-1), self.proj.bias))
        h = h.transpose(1, 2)  # (B, d, T)
        m = mask.transpose(1, 2)  # (B, 1, T)
        for blk in self.blocks:
            h = blk(h, m)
        tokens = h.transpose(1, 2)  # (B, T, d)
        pooled = tokens.sum(1) / mask.sum(1).clamp_min(1.0)
        return StudentOutput(tokens, pooled, self.fc(self.drop(pooled)))

    def forward(self, x: torch.Tensor) -> StudentOutput:
        """x: (B, T, D + 1) or (B, V, T, D + 1) packed sequences -> :class:`StudentOutput`
        (tokens (B, T', d) with T' <= T the longest real sequence of the batch, feature (B, d), logits (B, C))."""
        if x.dim() == 3:
            return self._one(x)
        if x.dim() != 4:
            raise ValueError(f"sequence student expects (B, T, D+1) or (B, V, T, D+1), got {tuple(x.shape)}")
        b, v = x.shape[:2]
        if self.training:
            pick = torch.randint(v, (b,), device=x.device)
            return self._one(x[torch.arange(b, device=x.device), pick])
        out = self._one(x.flatten(0, 1))  # (B V, ...)
        return StudentOutput(*(t.unflatten(0, (b, v)).mean(1) for t in out))


def build_sequence_student(cfg: SequenceStudentConfig, num_classes: int, input_dim: int = 512) -> SequenceStudent:
    """The CORSMAL video student of ``corsmal.student`` (random init)."""
    return SequenceStudent(num_classes, input_dim, cfg.embed_dim, cfg.dropout, cfg.input_norm)
