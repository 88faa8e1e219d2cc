"""The reference implementation's video student: R(2+1)D with one residual block per stage.

Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018,
arXiv 1711.11248. The MNF+CSC code (GeWu-Lab/cross-modal-distillation, ``models/r21d_with_featuremap.py``,
``generate_model(model_depth=18)``) and the CCL code both build ``R2Plus1DNet(layer_sizes=(1, 1, 1, 1))``
and call it "R(2+1)D-18"; torchvision's ``r2plus1d_18`` has two blocks per stage (2, 2, 2, 2). Written
anew from that description (``student.arch: r2plus1d_ref``):

* factorised conv (2+1)D: ``k_t x k x k`` -> spatial ``1 x k x k`` conv to M channels, BatchNorm, ReLU,
  temporal ``k_t x 1 x 1`` conv; ``M = floor(k_t k² C_in C_out / (k² C_in + k_t C_out))`` (the paper's
  Sec. 3.5 rule, which keeps the parameter count of the full 3-D conv); no biases;
* stem: (2+1)D ``3 x 7 x 7`` conv 3 -> 64, stride (1, 2, 2), then BatchNorm and ReLU;
* four stages of one block each, 64, 128, 256, 512 channels; stages 2-4 downsample by 2 in T, H and W
  in their first conv, and their shortcut is a (2+1)D ``1 x 1 x 1`` conv at stride 2 + BatchNorm;
  a block is ``relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))``;
* the last feature map (B, 512, T', H', W') gives the tokens ``V`` (B, T'H'W', 512) for MNF's attention,
  its global mean the feature ``v``, a linear layer the logits. For 16 x 112 x 112 clips: 2 x 7 x 7 = 98
  tokens, as the reference's comment says.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xmkd.models.student import StudentOutput, _outputs, _prepare

#: blocks per stage of the reference's "R(2+1)D-18" (``generate_model(model_depth=18)``)
REFERENCE_LAYERS = (1, 1, 1, 1)
WIDTHS = (64, 128, 256, 512)


def intermediate_channels(c_in: int, c_out: int, k_t: int, k: int) -> int:
    """M of a (2+1)D conv: ``floor(k_t k² C_in C_out / (k² C_in + k_t C_out))`` (arXiv 1711.11248 Sec. 3.5)."""
    return int(math.floor(k_t * k * k * c_in * c_out / (k * k * c_in + k_t * c_out)))


class SpatioTemporalConv(nn.Module):
    """(2+1)D conv: (B, C_in, T, H, W) -> (B, C_out, T / s_t, H / s, W / s); no bias, no final BN/ReLU.

    Args:
        c_in, c_out: channels; kernel: (k_t, k, k); stride: (s_t, s, s); padding: (p_t, p, p).
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int], padding: tuple[int, int, int]
    ) -> None:
        super().__init__()
        k_t, k, _ = kernel
        m = intermediate_channels(c_in, c_out, k_t, k)
        self.spatial = nn.Conv3d(c_in, m, (1, k, k), (1, stride[1], stride[2]), (0, padding[1], padding[2]), bias=False)
        self.bn = nn.BatchNorm3d(m)
        self.relu = nn.ReLU(inplace=True)
        self.temporal = nn.Conv3d(m, c_out, (k_t, 1, 1), (stride[0], 1, 1), (padding[0], 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W')."""
        return self.temporal(self.relu(self.bn(self.spatial(x))))


class SpatioTemporalResBlock(nn.Module):
    """Residual block of two 3x3x3 (2+1)D convs; ``downsample`` halves T, H, W (stride 2, shortcut conv)."""

    def __init__(self, c_in: int, c_out: int, downsample: bool) -> None:
        super().__init__()
        s = (2, 2, 2) if downsample else (1, 1, 1)
        self.conv1 = SpatioTemporalConv(c_in, c_out, (3, 3, 3), s, (1, 1, 1))
        self.bn1 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SpatioTemporalConv(c_out, c_out, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if downsample:
            self.shortcut = nn.Sequential(SpatioTemporalConv(c_in, c_out, (1, 1, 1), s, (0, 0, 0)), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W')."""
        res = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return torch.relu(self.shortcut(x) + res)


class R2Plus1DReference(nn.Module):
    """The reference's R(2+1)D student (module docstring), random init.

    Args:
        num_classes: C.
        layer_sizes: blocks per stage (the reference: 1, 1, 1, 1; ``model_depth=34`` would be 3, 4, 6, 3).

    Input uint8 clips (B, T, H, W, 3) or normalised float (B, 3, T, H, W); output :class:`StudentOutput`
    with d = 512.
    """

    def __init__(self, num_classes: int, layer_sizes: tuple[int, ...] = REFERENCE_LAYERS) -> None:
        super().__init__()
        if len(layer_sizes) != 4 or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be 4 positive block counts, got {layer_sizes}")
        self.stem = nn.Sequential(
            SpatioTemporalConv(3, WIDTHS[0], (3, 7, 7), (1, 2, 2), (1, 3, 3)), nn.BatchNorm3d(WIDTHS[0]), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        c_in = WIDTHS[0]
        for i, (c_out, n) in enumerate(zip(WIDTHS, layer_sizes, strict=True)):
            blocks = [SpatioTemporalResBlock(c_in, c_out, downsample=i > 0)]
            blocks += [SpatioTemporalResBlock(c_out, c_out, downsample=False) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        self.embed_dim = WIDTHS[-1]

    def forward(self, x: torch.Tensor) -> StudentOutput:
        """x: (B, T, H, W, 3) uint8 or (B, 3, T, H, W) float -> tokens (B, T'H'W', 512), feature, logits."""
        return _outputs(self.layers(self.stem(_prepare(x))), self.fc)
