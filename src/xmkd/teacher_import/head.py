"""The classification head on frozen embeddings (:class:`EmbeddingHead`): its training, its logits, top-k
accuracy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmkd.errors import ConfigError, DataError, TrainingError
from xmkd.teacher_import.config import TeacherImportConfig


class EmbeddingHead(nn.Module):
    """Classification head on frozen embeddings: (B, D) -> logits (B, C).

    The input normalisation (``normalize``) is part of the module (buffers ``mean``/``std`` for ``standardize``),
    so ``head(raw_embeddings)`` gives the logits.
    """

    def __init__(
        self, dim: int, num_classes: int, kind: str = "linear", hidden_dim: int = 512, dropout: float = 0.0,
        normalize: str = "none",
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim, num_classes)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
            )
        else:
            raise ConfigError(f"teacher_import.head = {kind!r}: choose 'linear' or 'mlp'.")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) raw embeddings -> (B, D) head input."""
        if self.normalize == "l2":
            return F.normalize(x, dim=1)
        if self.normalize == "standardize":
            return (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 raw embeddings -> (B, C) logits."""
        return self.net(self.prepare(x))


def train_head(
    embeddings: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, num_classes: int, cfg: TeacherImportConfig
) -> tuple[EmbeddingHead, list[dict[str, float]]]:
    """Train a classification head on the rows ``train_idx`` (CPU, seeded: same inputs -> same head).

    Runs torch single-threaded (restored afterwards): the steps are too small for threads to pay off.

    Args:
        embeddings: (N, D) float32 raw embeddings.
        labels: (N,) int64 class indices in [0, num_classes).
        train_idx: (n,) rows to train on.
        num_classes: C.
        cfg: head, normalisation and optimiser settings.

    Returns:
        (head in eval mode, per-epoch {"loss", "train_top1"} measured on the fly over the epoch).

    Raises:
        DataError: no training row, or a label outside [0, num_classes).
        TrainingError: the loss becomes NaN/inf.
    """
    if len(train_idx) == 0:
        raise DataError("no clip in the 'training' subset has a teacher embedding: nothing to train the head on.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}].")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (B, 512) x (512, C) steps: extra threads only add sync cost (measured 3-12x slower)
    try:
        return _train_head(embeddings, labels, train_idx, num_classes, cfg)
    finally:
        torch.set_num_threads(threads)


def _train_head(
    embeddings: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, num_classes: int, cfg: TeacherImportConfig
) -> tuple[EmbeddingHead, list[dict[str, float]]]:
    torch.manual_seed(cfg.seed)
    x = torch.as_tensor(embeddings[train_idx], dtype=torch.float32)
    y = torch.as_tensor(labels[train_idx], dtype=torch.long)
    head = EmbeddingHead(x.shape[1], num_classes, cfg.head, cfg.hidden_dim, cfg.dropout, cfg.normalize)
    if cfg.normalize == "standardize":
        head.mean.copy_(x.mean(0))
        head.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.randperm(len(y), generator=gen)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"teacher head loss is {loss.item()} at epoch {epoch}: lower teacher_import.lr or set "
                    "teacher_import.normalize: standardize."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        sched.step()
        history.append({"loss": loss_sum / len(y), "train_top1": correct / len(y)})
    return head.eval(), history


@torch.no_grad()
def head_logits(head: EmbeddingHead, embeddings: np.ndarray, batch: int = 4096) -> np.ndarray:
    """(N, D) raw embeddings -> (N, C) float32 logits of the head in eval mode."""
    head.eval()
    out = [head(torch.as_tensor(embeddings[i : i + batch], dtype=torch.float32)) for i in range(0, len(embeddings), batch)]
    return torch.cat(out).numpy().astype(np.float32)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits; (N, C), (N,) -> float in [0, 1]."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())
