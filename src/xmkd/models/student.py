"""Video students built from factorised (2+1)D convolutions (Tran et al., "A Closer Look at
Spatiotemporal Convolutions for Action Recognition", CVPR 2018, arXiv 1711.11248).

Two architectures, selected by ``student.arch``:

- ``r2plus1d_small``: a small R(2+1)D ResNet (one BasicBlock per stage, widths w, 2w, 4w, 8w) with a
  stride-1 stem, sized for 8x32x32 clips on a laptop CPU. Its blocks are torchvision's own
  ``BasicBlock``/``Conv2Plus1D``.
- ``r2plus1d_18``: torchvision's ``r2plus1d_18`` from scratch (2 blocks per stage, 512-d).
- ``r2plus1d_ref``: the reference implementation's "R(2+1)D-18", one block per stage (1, 1, 1, 1), 512-d
  (:mod:`xmkd.models.r21d_reference`); the paper profile's student.

- ``audio_cnn``: the audio student of the reverse direction (video teacher -> audio student): a log-mel
  CNN in the layout of the audio teacher (CNN14 in miniature), whose last conv map gives the tokens.

All return a :class:`StudentOutput` with the token feature map ``V`` that MNF attends over, its
mean ``v`` and the logits ``p_v``, as the reference implementation's ``R2Plus1DNet`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, NamedTuple

import torch
from torch import nn
from torchvision.models.video import r2plus1d_18
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

# Kinetics-400 statistics used by torchvision's video models; frames arrive as uint8 RGB.
_MEAN = (0.43216, 0.394666, 0.37645)
_STD = (0.22803, 0.22145, 0.216989)


class StudentOutput(NamedTuple):
    """What a student returns.

    Attributes:
        feature_map: (B, N, d) tokens over T' x H' x W' (N = T'H'W'), the keys/values of MNF.
        feature: (B, d) pooled feature ``v`` = mean of the tokens (the retrieval embedding).
        logits: (B, C) class scores ``p_v``.
    """

    feature_map: torch.Tensor
    feature: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class StudentConfig:
    """``student`` section of params.yaml.

    Attributes:
        arch: ``r2plus1d_small`` (CPU default), ``r2plus1d_18`` (torchvision, 2 blocks per stage),
            ``r2plus1d_ref`` (the reference code's 1-block-per-stage R(2+1)D, paper profile), ``audio_cnn`` or
            ``sequence_conv`` (precomputed 512-d feature sequences, e.g. CORSMAL: :mod:`xmkd.models.sequence`).
        width: channels of the first stage of ``r2plus1d_small`` (stages: w, 2w, 4w, 8w); the
            embedding dimension is ``8 * width``. Ignored by ``r2plus1d_18`` (512-d).
        stem_temporal_stride: temporal stride of the stem's 3x1x1 convolution in ``r2plus1d_small``
            (2 halves the cost on the CPU: 1.9 vs 3.5 ms per 8x32x32 clip and training step, measured
            on 2 cores). Ignored by ``r2plus1d_18``.
        audio_channels: ``audio_cnn`` only: conv-block widths; the embedding dimension is the last one.
        n_mels: ``audio_cnn`` only: mel bands of the input log-mels (filled from ``features.n_mels``).
    """

    arch: Literal["r2plus1d_small", "r2plus1d_18", "r2plus1d_ref", "audio_cnn", "sequence_conv"] = "r2plus1d_small"
    width: int = 16
    stem_temporal_stride: int = 2
    audio_channels: list[int] | None = None
    n_mels: int = 40

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"student.width must be >= 1, got {self.width}")

    @property
    def embed_dim(self) -> int:
        """Dimension d of the student feature."""
        if self.arch == "audio_cnn":
            return (self.audio_channels or [8, 16, 32, 64])[-1]
        return 512 if self.arch in ("r2plus1d_18", "r2plus1d_ref") else 8 * self.width


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) -> float (B, 3, T, H, W), normalised with Kinetics mean/std.

    Runs on whatever device ``frames`` is on, so uint8 can be moved to a GPU first (4x fewer bytes).
    """
    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(_MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(_STD, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def _prepare(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) clips are normalised here, on their device; float input passes through."""
    return normalize_frames(x) if x.dtype == torch.uint8 else x


def _layer(inplanes: int, planes: int, stride: int) -> nn.Module:
    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(
            nn.Conv3d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(planes)
        )
    return BasicBlock(inplanes, planes, Conv2Plus1D, stride=stride, downsample=down)


class R2Plus1DSmall(nn.Module):
    """Small R(2+1)D ResNet for low-resolution clips.

    Input (B, 3, T, H, W) float; stem (2+1)D: 1x3x3 spatial conv at spatial stride ``stem_stride``,
    then a 3x1x1 temporal conv at temporal stride ``stem_temporal_stride``; then four stages of one
    torchvision BasicBlock(Conv2Plus1D) each, at strides 1, 2, 2, 2 (each stride-2 stage halves T, H
    and W, T not below 1). For 8x32x32 input the feature map is (B, 8w, 1, 2, 2): 4 tokens.
    """

    def __init__(self, num_classes: int, width: int = 16, stem_stride: int = 2, stem_temporal_stride: int = 2) -> None:
        super().__init__()
        w = width
        mid = 3 * 3 * 3 * 3 * w // (3 * 3 * 3 + 3 * w)
        self.stem = nn.Sequential(
            nn.Conv3d(3, mid, kernel_size=(1, 3, 3), stride=(1, stem_stride, stem_stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, w, kernel_size=(3, 1, 1), stride=(stem_temporal_stride, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(w),
            nn.ReLU(inplace=True),
        )
        self.layers = nn.Sequential(
            _layer(w, w, 1), _layer(w, 2 * w, 2), _layer(2 * w, 4 * w, 2), _layer(4 * w, 8 * w, 2)
        )
        self.fc = nn.Linear(8 * w, num_classes)
        self.embed_dim = 8 * w

    def forward(self, x: torch.Tensor) -> StudentOutput:
        """x: uint8 clips (B, T, H, W, 3) or normalised float (B, 3, T, H, W) -> :class:`StudentOutput`."""
        fmap = self.layers(self.stem(_prepare(x)))  # (B, d, T', H', W')
        return _outputs(fmap, self.fc)


class R2Plus1D18(nn.Module):
    """torchvision ``r2plus1d_18`` (random init) exposing its last feature map as tokens."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        net = r2plus1d_18(weights=None, num_classes=num_classes)
        self.stem, self.layers = net.stem, nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.fc = net.fc
        self.embed_dim = 512

    def forward(self, x: torch.Tensor) -> StudentOutput:
        """x: uint8 clips (B, T, H, W, 3) or normalised float (B, 3, T, H, W) (paper: 16x112x112)."""
        return _outputs(self.layers(self.stem(_prepare(x))), self.fc)


class AudioStudent(nn.Module):
    """Log-mel CNN student (reverse direction): (B, n_mels, F) dB log-mels -> :class:`StudentOutput`.

    Per-band input BatchNorm, a 2x2 average pooling (halves time and frequency resolution: 4x cheaper,
    1.0 vs 4.1 ms per clip and training step on 1 CPU thread), then conv blocks of two 3x3 conv-BN-ReLU + 2x2 average pooling (the audio
    teacher's blocks, after PANNs CNN14, Kong et al. arXiv 1912.10211); the last block's map
    (B, d, n_mels', F') gives N = n_mels' x F' tokens, their mean is the feature ``v`` (post-ReLU, >= 0).
    """

    def __init__(self, num_classes: int, channels: list[int], n_mels: int) -> None:
        super().__init__()
        from xmkd.models.teacher import _block

        self.input_bn = nn.BatchNorm2d(n_mels)
        chans = (1, *channels)
        self.blocks = nn.Sequential(nn.AvgPool2d(2), *[_block(a, b) for a, b in pairwise(chans)])
        self.fc = nn.Linear(channels[-1], num_classes)
        self.embed_dim = channels[-1]

    def forward(self, logmel: torch.Tensor) -> StudentOutput:
        """logmel: (B, n_mels, F) float dB -> :class:`StudentOutput`."""
        x = logmel.float().unsqueeze(1).transpose(1, 2)  # (B, n_mels, 1, F)
        x = self.input_bn(x).transpose(1, 2)  # (B, 1, n_mels, F)
        return _outputs(self.blocks(x), self.fc)  # tokens over (n_mels', F')


def _outputs(fmap: torch.Tensor, fc: nn.Module) -> StudentOutput:
    tokens = fmap.flatten(2).transpose(1, 2)  # (B, N, d)
    feature = tokens.mean(dim=1)  # (B, d) == global average pool
    return StudentOutput(tokens, feature, fc(feature))


def build_student(cfg: StudentConfig, num_classes: int) -> nn.Module:
    """Build the student named by ``cfg.arch`` for ``num_classes`` classes (random init).

    Video students take uint8 frames (B, T, H, W, 3); the audio student takes log-mels (B, n_mels, F).
    """
    if cfg.arch == "r2plus1d_18":
        return R2Plus1D18(num_classes)
    if cfg.arch == "r2plus1d_ref":
        from xmkd.models.r21d_reference import R2Plus1DReference  # it builds on this module's helpers

        return R2Plus1DReference(num_classes)
    if cfg.arch == "sequence_conv":
        from xmkd.models.sequence import SequenceStudent  # it imports StudentOutput from this module

        return SequenceStudent(num_classes, 512, 8 * cfg.width)  # R(2+1)D features (CORSMAL); d = 8 * width
    if cfg.arch == "audio_cnn":
        return AudioStudent(num_classes, list(cfg.audio_channels or [8, 16, 32, 64]), cfg.n_mels)
    return R2Plus1DSmall(num_classes, cfg.width, stem_temporal_stride=cfg.stem_temporal_stride)
