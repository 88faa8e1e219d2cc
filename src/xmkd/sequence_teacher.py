"""The CORSMAL audio teacher: a GRU over VGGish sequences, trained per fold on its training containers only.

As the source's audio model (v-iashin/CORSMAL, "VGGish + GRU"; Iashin et al., arXiv 2012.01311): a GRU over the
(T, 128) VGGish rows of a recording, its last hidden state (of the real steps: packed sequences, so padding is
never read) is the embedding, a linear layer the logits. Trained with Adam and cross-entropy on the fold's
``training`` recordings, the last epoch's model is used (no selection), then frozen; it embeds every recording.

The CORSMAL pipeline's stage ``teacher@<fold>`` (``stages/corsmal_teacher.py``) writes, per fold, the same files
as the main pipeline's ``embed_teacher`` (``embeddings.npy``, ``logits.npy``, ``ids.txt``) and its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass(frozen=True)
class SequenceTeacherConfig:
    """hidden: GRU width (= embedding D); epochs, batch_size, lr, weight_decay: Adam training; seed."""

    hidden: int = 128
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


class GRUTeacher(nn.Module):
    """(B, T, D + 1) packed sequences (mask last) -> (embedding (B, hidden), logits (B, C))."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = (x[..., -1] > 0.5).sum(1).clamp_min(1).cpu()
        _, h = self.gru(pack_padded_sequence(x[..., :-1], lengths, batch_first=True, enforce_sorted=False))
        emb = h[-1]
        return emb, self.fc(emb)


def classification_summary(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """top-1, mean class accuracy (over classes present) and weighted F1 (scikit-learn) of (N,) predictions."""
    acc = [float((pred[labels == c] == c).mean()) for c in range(num_classes) if (labels == c).any()]
    return {"top1": float((pred == labels).mean()), "mean_class_acc": float(np.mean(acc)),
            "f1_weighted": float(f1_score(labels, pred, average="weighted"))}


def train_teacher(audio: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, cfg: SequenceTeacherConfig,
                  num_classes: int = 4) -> tuple[GRUTeacher, list[float]]:
    """Train a :class:`GRUTeacher` on ``audio[train_idx]`` ((N, T, 129) packed); returns (frozen model, losses)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = GRUTeacher(audio.shape[-1] - 1, cfg.hidden, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = torch.from_numpy(audio[train_idx]), torch.from_numpy(labels[train_idx])
    losses = []
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        total = 0.0
        for i in range(0, len(y), cfg.batch_size):
            b = perm[i: i + cfg.batch_size]
            loss = nn.functional.cross_entropy(model(x[b])[1], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        losses.append(total / len(y))
    model.eval().requires_grad_(False)
    return model, losses


@torch.no_grad()
def embed_all(model: GRUTeacher, audio: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, hidden), logits (N, C)) float32 of every packed sequence."""
    outs = [model(torch.from_numpy(audio[i: i + batch])) for i in range(0, len(audio), batch)]
    return (torch.cat([o[0] for o in outs]).numpy().astype(np.float32),
            torch.cat([o[1] for o in outs]).numpy().astype(np.float32))


def fold_teacher(audio: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                 cfg: SequenceTeacherConfig, num_classes: int = 4,
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float], list[float]]:
    """Train on ``train_idx`` only, embed every recording; metrics on both subsets.

    Args:
        audio: (N, T, 129) packed VGGish sequences (mask last). labels: (N,) int64. train_idx, test_idx: rows.

    Returns:
        (embeddings (N, hidden), logits (N, C), metrics {train_/test_ top1, mean_class_acc, f1_weighted,
        num_train, num_test, final_loss}, per-epoch training losses).
    """
    model, losses = train_teacher(audio, labels, train_idx, cfg, num_classes)
    emb, logits = embed_all(model, audio)
    pred = logits.argmax(1)
    metrics = {f"train_{k}": v for k, v in classification_summary(pred[train_idx], labels[train_idx], num_classes).items()}
    metrics |= {f"test_{k}": v for k, v in classification_summary(pred[test_idx], labels[test_idx], num_classes).items()}
    metrics |= {"num_train": float(len(train_idx)), "num_test": float(len(test_idx)), "final_loss": losses[-1]}
    return emb, logits, metrics, losses
