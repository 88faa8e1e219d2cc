"""Modality Noise Filter (MNF) of Xia et al., "Robust Cross-Modal Knowledge Distillation for
Unconstrained Videos", arXiv 2304.07775, Sec. 3.2, as the reference implementation computes it
(GeWu-Lab/cross-modal-distillation, ``models/modality_noise_filter.py``; written anew here).

Given the teacher embedding ``a`` (B, d) and the student's token map ``V`` (B, N, d):

- gate ``g = sigmoid(W2 · ReLU(BN(W1 · [a ; mean(V)])))`` with W1: 2d -> d/2, W2: d/2 -> d;
- selected audio ``a' = g ⊙ a``;
- cross-modal attention, query ``a'`` (one token), keys = values = the tokens of ``V``
  (``nn.MultiheadAttention(d, heads)``), then Linear-BN-ReLU -> ``v'`` (B, d);
- a classifier head on ``v'`` -> ``p_sv`` (B, C).

If the teacher's dimension differs from the student's, ``a`` is first mapped to d by a learnable
linear projection (the reference has D = d = 512 and no projection; with D = d it is the identity).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class MNFOutput(NamedTuple):
    """Outputs of :class:`ModalityNoiseFilter` (B = batch, d = student dim, C = classes, N = tokens).

    Attributes:
        logits: (B, C) ``p_sv``, prediction from the filtered feature.
        feature: (B, d) ``v'``, the selected video feature CSC contrasts ``v`` against.
        selected_audio: (B, d) ``a' = g ⊙ a``.
        audio: (B, d) ``a`` after the (optional) projection.
        gate: (B, d) ``g`` in (0, 1).
        attention: (B, 1, N) attention weights of the audio query over the video tokens.
    """

    logits: torch.Tensor
    feature: torch.Tensor
    selected_audio: torch.Tensor
    audio: torch.Tensor
    gate: torch.Tensor
    attention: torch.Tensor


class ModalityNoiseFilter(nn.Module):
    """MNF module (arXiv 2304.07775). See the module docstring for the computation.

    Args:
        dim: d, the student feature dimension (must be divisible by ``heads`` and >= 2).
        teacher_dim: D, the teacher embedding dimension.
        num_classes: C.
        heads: attention heads (2 in the reference).

    Raises:
        ValueError: if ``dim`` is not divisible by ``heads``.
    """

    def __init__(self, dim: int, teacher_dim: int, num_classes: int, heads: int = 2) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MNF: student dim {dim} must be divisible by mnf.heads={heads}")
        self.proj = nn.Identity() if teacher_dim == dim else nn.Linear(teacher_dim, dim)
        self.gate_net = nn.Sequential(
            nn.Linear(2 * dim, dim // 2),  # W1
            nn.BatchNorm1d(dim // 2),
            nn.ReLU(),
            nn.Linear(dim // 2, dim),  # W2
        )
        self.attn = nn.MultiheadAttention(dim, num_heads=heads, batch_first=True)
        self.trans = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.classifier = nn.Linear(dim, num_classes)

    @property
    def gate_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W1, W2): the gate's linear weights, (d/2, 2d) and (d, d/2)."""
        return self.gate_net[0].weight, self.gate_net[3].weight

    def forward(self, audio: torch.Tensor, tokens: torch.Tensor) -> MNFOutput:
        """audio: (B, D) teacher embedding; tokens: (B, N, d) student feature map -> :class:`MNFOutput`."""
        a = self.proj(audio)  # (B, d)
        v = tokens.mean(dim=1)  # (B, d), as the reference recomputes it from the map
        gate = torch.sigmoid(self.gate_net(torch.cat([a, v], dim=-1)))  # (B, d)
        a_sel = gate * a  # (B, d)
        out, attn = self.attn(a_sel.unsqueeze(1), tokens, tokens)  # (B, 1, d), (B, 1, N)
        feat = self.trans(out.squeeze(1))  # (B, d)
        return MNFOutput(self.classifier(feat), feat, a_sel, a, gate, attn)
