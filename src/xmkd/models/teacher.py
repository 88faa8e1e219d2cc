"""Audio teacher: a small CNN on log-mel spectrograms.

It plays the role PANNs CNN14 plays in Xia et al. (arXiv 2304.07775): a frozen audio network whose
embedding ``a`` (post-ReLU, like CNN14's 512-d ``embedding``, so ``a >= 0``) and logits are what the
video student distils from. The layout follows CNN14's in miniature (Kong et al., "PANNs",
arXiv 1912.10211): conv blocks of two 3x3 convs with BN/ReLU and 2x2 average pooling, then mean over
time + max over time of the frequency-averaged map, then an FC + ReLU embedding and a classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn


class TeacherOutput(NamedTuple):
    """embedding: (B, D) post-ReLU audio embedding ``a``; logits: (B, C)."""

    embedding: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class TeacherNetConfig:
    """Architecture of the audio teacher.

    Attributes:
        channels: output channels of the conv blocks (each block halves time and frequency).
        embed_dim: D, dimension of the teacher embedding ``a``.
        dropout: dropout before the embedding FC, in [0, 1).
    """

    channels: tuple[int, ...] = (32, 64, 128)
    embed_dim: int = 128
    dropout: float = 0.2


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
    )


class AudioCNN(nn.Module):
    """Log-mel CNN: (B, n_mels, F) dB log-mel -> :class:`TeacherOutput`."""

    def __init__(self, num_classes: int, cfg: TeacherNetConfig, n_mels: int) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(n_mels)  # per-mel-band normalisation, as in CNN14 (bn0)
        chans = (1, *cfg.channels)
        self.blocks = nn.Sequential(*[_block(a, b) for a, b in pairwise(chans)])
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.channels[-1], cfg.embed_dim)
        self.classifier = nn.Linear(cfg.embed_dim, num_classes)
        self.embed_dim = cfg.embed_dim

    def forward(self, logmel: torch.Tensor) -> TeacherOutput:
        """logmel: (B, n_mels, F) float dB -> embedding (B, D) >= 0 and logits (B, C)."""
        x = logmel.unsqueeze(1).transpose(1, 2)  # (B, n_mels, 1, F)
        x = self.input_bn(x).transpose(1, 2)  # (B, 1, n_mels, F)
        x = self.blocks(x).mean(dim=2)  # (B, C', F') frequency-averaged
        x = x.mean(dim=2) + x.amax(dim=2)  # (B, C') CNN14-style temporal pooling
        emb = torch.relu(self.fc(self.dropout(x)))  # (B, D)
        return TeacherOutput(emb, self.classifier(emb))
