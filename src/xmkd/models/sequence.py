"""Feature-sequence student: a masked temporal 1-D convolution over precomputed per-step features.

Input: the packed sequences of :mod:`xmkd.data.sequences`, (B, T, D + 1) for one view or (B, V, T, D + 1) for
V views, the last channel being the validity mask (1 real step, 0 padding). Network: a 1x1 projection D -> d,
then two residual blocks of a kernel-3 temporal convolution + BatchNorm-free ReLU (padded steps are zeroed
before and after every convolution, so padding never leaks into real steps' neighbours beyond the zero
padding a shorter clip would see), a masked mean over the real steps gives ``v``, a linear layer the logits.
Tokens ``V`` for MNF's attention are the per-step features (B, T, d), zero at padded steps.

Multi-view (the 4 CORSMAL cameras): in training mode one view is drawn per sample (torch's RNG, so seeded),
i.e. a view is an augmentation; in eval mode the outputs of all V views are averaged: logits, feature and
tokens (mean over views). Temporal convolutions over clip features: as the 1-D conv heads used on precomputed
R(2+1)D / VGGish features (e.g. Lea et al., "Temporal Convolutional Networks", arXiv 1611.05267).
"""

from __future__ import annotations

import torch
from torch import nn

from xmkd.models.student import StudentOutput


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
        dropout: on the pooled feature before the classifier.
    """

    def __init__(self, num_classes: int, input_dim: int = 512, embed_dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.input_dim, self.embed_dim = input_dim, embed_dim
        self.proj = nn.Conv1d(input_dim, embed_dim, kernel_size=1)
        self.blocks = nn.ModuleList([_Block(embed_dim), _Block(embed_dim)])
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)

    def _one(self, x: torch.Tensor) -> StudentOutput:
        """x (B, T, D + 1) -> outputs of one view."""
        if x.shape[-1] != self.input_dim + 1:
            raise ValueError(f"sequence student expects (B, T, {self.input_dim + 1}) packed input, got {tuple(x.shape)}")
        feats, mask = x[..., :-1].float(), (x[..., -1:] > 0.5).float()  # (B, T, D), (B, T, 1)
        m = mask.transpose(1, 2)  # (B, 1, T)
        h = torch.relu(self.proj(feats.transpose(1, 2))) * m
        for blk in self.blocks:
            h = blk(h, m)
        tokens = h.transpose(1, 2)  # (B, T, d)
        pooled = tokens.sum(1) / mask.sum(1).clamp_min(1.0)
        return StudentOutput(tokens, pooled, self.fc(self.drop(pooled)))

    def forward(self, x: torch.Tensor) -> StudentOutput:
        """x: (B, T, D + 1) or (B, V, T, D + 1) packed sequences -> :class:`StudentOutput`
        (tokens (B, T, d), feature (B, d), logits (B, C))."""
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
