"""The CORSMAL audio teacher: a GRU over VGGish sequences, trained per fold on its training containers only.

As the source's audio model (v-iashin/CORSMAL, "VGGish + GRU"; Iashin et al., arXiv 2012.01311): a GRU over the
(T, 128) VGGish rows of a recording, its last hidden state (of the real steps: packed sequences, so padding is
never read) is the embedding, a linear layer the logits. Trained with Adam and cross-entropy on the fold's
``training`` recordings, the last epoch's model is used (no selection), then frozen; it embeds every recording.

CLI (writes the same ``data/teacher`` files as ``embed_teacher``, plus ``metrics/teacher.json``)::

    python -m xmkd.sequence_teacher --fold 0 [--root DIR] [--out data/teacher] [--metrics metrics/teacher.json]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from xmkd.data import corsmal


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


def fold_teacher(arrays: corsmal.CorsmalArrays, fold: int, cfg: SequenceTeacherConfig
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Train on ``fold``'s training containers, embed every recording; metrics on both subsets."""
    audio = arrays.audio[:, 0]
    tr, te = arrays.subset_indices(fold, "training"), arrays.subset_indices(fold, "testing")
    model, losses = train_teacher(audio, arrays.labels, tr, cfg)
    emb, logits = embed_all(model, audio)
    pred = logits.argmax(1)
    metrics = {f"train_{k}": v for k, v in classification_summary(pred[tr], arrays.labels[tr], 4).items()}
    metrics |= {f"test_{k}": v for k, v in classification_summary(pred[te], arrays.labels[te], 4).items()}
    metrics |= {"fold": float(fold), "num_train": float(len(tr)), "num_test": float(len(te)), "final_loss": losses[-1]}
    return emb, logits, metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.sequence_teacher")
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--root", default=None)
    ap.add_argument("--out", default="data/teacher")
    ap.add_argument("--metrics", default="metrics/teacher.json")
    ap.add_argument("--epochs", type=int, default=SequenceTeacherConfig.epochs)
    args = ap.parse_args(argv)

    def run() -> None:
        torch.set_num_threads(1)
        arrays = corsmal.load_arrays(corsmal.scan(args.root))
        emb, logits, metrics = fold_teacher(arrays, args.fold, SequenceTeacherConfig(epochs=args.epochs))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, arr in (("embeddings", emb), ("logits", logits)):
            np.save(out / f".{name}.tmp.npy", arr)
            os.replace(out / f".{name}.tmp.npy", out / f"{name}.npy")
        (out / "ids.txt").write_text("".join(f"{i}\n" for i in arrays.ids))
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n")
        print(f"fold {args.fold}: teacher test top-1 {metrics['test_top1']:.4f}, F1 {metrics['test_f1_weighted']:.4f}")

    from xmkd.cli import run_main

    run_main(run)


if __name__ == "__main__":
    main()
