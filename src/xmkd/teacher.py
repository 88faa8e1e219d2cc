"""Teacher pretraining and export.

The audio teacher is trained on audio-only labelled data (FSDD's official training takes, with
ESC-50 background from the benchmark's *training* background pool mixed in as augmentation), never
on the benchmark's clips; then it is frozen and embeds every clip's own sound track.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from xmkd.data.audio import LogMelConfig, logmel
from xmkd.errors import TrainingError
from xmkd.models.teacher import AudioCNN, TeacherNetConfig
from xmkd.progress import progress_bar
from xmkd.train import resolve_device, seed_everything


@dataclass(frozen=True)
class TeacherConfig:
    """``teacher`` section of params.yaml.

    Attributes:
        net: architecture (channels, embed_dim D, dropout).
        epochs / batch_size / lr / weight_decay: Adam training of the teacher.
        background_prob: probability that a training utterance gets ESC-50 background.
        snr_db: [low, high] range (dB) of the augmentation SNR, drawn uniformly.
        eval_snr_db: SNR (dB) of the noisy FSDD-test check.
        seed: RNG seed of teacher training.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    net: TeacherNetConfig = field(default_factory=TeacherNetConfig)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    background_prob: float = 0.8
    snr_db: tuple[float, float] = (0.0, 15.0)
    eval_snr_db: float = 5.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


# augment(rng, index) -> mono waveform (n_samples,) float32 of training utterance `index`
Augment = Callable[[np.random.Generator, int], np.ndarray]


def train_teacher(
    augment: Augment,
    labels: np.ndarray,
    num_classes: int,
    cfg: TeacherConfig,
    mel: LogMelConfig,
    eval_sets: dict[str, tuple[np.ndarray, np.ndarray]],
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[AudioCNN, list[dict[str, float]]]:
    """Train the audio teacher.

    Args:
        augment: returns a freshly augmented waveform (n_samples,) of training item ``i`` (seeded rng).
        labels: (N,) int class of each training item.
        num_classes: C.
        cfg: training settings; mel: log-mel front end.
        eval_sets: name -> (waveforms (M, n_samples), labels (M,)) checked after every epoch (top-1).
        on_epoch: callback (epoch, metrics).

    Returns:
        (trained model in eval mode on the CPU, per-epoch metrics).

    Raises:
        TrainingError: non-finite loss.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    model = AudioCNN(num_classes, cfg.net, mel.n_mels).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    eval_mels = {k: (logmel(torch.from_numpy(w), mel), torch.from_numpy(y)) for k, (w, y) in eval_sets.items()}
    history = []
    n = len(labels)
    steps = -(-n // cfg.batch_size)  # batches per epoch
    bar = progress_bar(cfg.epochs * steps, "train_teacher", unit="batch")
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        total, correct, loss_sum = 0, 0, 0.0
        bar.set_description(f"train_teacher: epoch {epoch}/{cfg.epochs}")
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            wave = torch.from_numpy(np.stack([augment(rng, int(i)) for i in idx]))
            x = logmel(wave, mel).to(device)
            y = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
            out = model(x)
            loss = F.cross_entropy(out.logits, y)
            if not torch.isfinite(loss):
                raise TrainingError(f"teacher loss is {loss.item()} at epoch {epoch}: lower teacher.lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.logits.argmax(1) == y).sum())
            total += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", refresh=False)
        sched.step()
        metrics = {"loss": loss_sum / total, "train_top1": correct / total, "seconds": time.perf_counter() - t0}
        for name, (x, y) in eval_mels.items():
            emb, logits = embed(model, x, device)
            metrics[f"{name}_top1"] = float((logits.argmax(1) == y.numpy()).mean())
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics)
    bar.close()
    return model.cpu().eval(), history


@torch.no_grad()
def embed(
    model: AudioCNN,
    mels: torch.Tensor,
    device: torch.device | None = None,
    batch: int = 256,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen teacher on log-mels (N, n_mels, F) -> (embeddings (N, D), logits (N, C)) float32.

    ``desc``: when given, a progress bar with this text counts the clips (drawn on a terminal only).
    """
    device = device or torch.device("cpu")
    model.eval()
    embs, logits = [], []
    with progress_bar(len(mels), desc or "", unit="clip", disable=None if desc else True, leave=False) as bar:
        for start in range(0, len(mels), batch):
            out = model(torch.as_tensor(mels[start : start + batch]).float().to(device))
            embs.append(out.embedding.cpu().numpy())
            logits.append(out.logits.cpu().numpy())
            bar.update(len(out.logits))
    return np.concatenate(embs).astype(np.float32), np.concatenate(logits).astype(np.float32)


def make_augment(
    recordings: list[np.ndarray],
    backgrounds: list[np.ndarray],
    n_samples: int,
    cfg: TeacherConfig,
    target_rms: float,
) -> Augment:
    """Training-time mixing: a recording at a random offset (random crop if longer than the window),
    plus, with probability ``cfg.background_prob``, a random background segment at an SNR drawn
    uniformly from ``cfg.snr_db``; normalised to ``target_rms`` (the benchmark's level) and clipped.

    Args:
        recordings: mono waveforms (S_i,) at the log-mel sample rate.
        backgrounds: mono background waveforms (S_j,), each at least ``n_samples`` long.
        n_samples: window length in samples.
    """

    def augment(rng: np.random.Generator, i: int, force_snr: float | None = None) -> np.ndarray:
        rec = recordings[i].astype(np.float64)
        x = np.zeros(n_samples)
        if rec.shape[0] > n_samples:
            s = int(rng.integers(0, rec.shape[0] - n_samples + 1))
            seg, off = rec[s : s + n_samples], 0
        else:
            seg, off = rec, int(rng.integers(0, n_samples - rec.shape[0] + 1))
        x[off : off + seg.shape[0]] = seg
        add_bg = force_snr is not None or rng.random() < cfg.background_prob
        if add_bg and backgrounds:
            bg = backgrounds[int(rng.integers(len(backgrounds)))].astype(np.float64)
            s = int(rng.integers(0, max(1, bg.shape[0] - n_samples + 1)))
            b = np.pad(bg[s : s + n_samples], (0, max(0, n_samples - bg[s:].shape[0])))[:n_samples]
            snr = force_snr if force_snr is not None else rng.uniform(*cfg.snr_db)
            p_s, p_b = float(np.mean(seg**2)), float(np.mean(b**2))
            if p_b > 0:
                x = x + np.sqrt(p_s / (p_b * 10.0 ** (snr / 10.0))) * b
        level = float(np.sqrt(np.mean(x**2)))
        if level > 0:
            x = x * (target_rms / level)
        return np.clip(x, -1.0, 1.0).astype(np.float32)

    return augment  # type: ignore[return-value]


def load_teacher(path: str | os.PathLike[str], mel: LogMelConfig) -> tuple[AudioCNN, list[str]]:
    """Load the trained audio teacher written by ``stages/train_teacher.py``.

    Args:
        path: ``models/teacher.pt``.
        mel: the log-mel settings params.yaml gives now (must equal the teacher's).

    Returns:
        (the teacher in eval mode, its class names in its logits' order).

    Raises:
        DataError: the checkpoint is missing, or was trained on other log-mel settings.
    """
    from xmkd.config import parse_section
    from xmkd.errors import DataError

    if not Path(path).exists():
        raise DataError(f"{path} not found: run `dvc repro train_teacher` first.")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if LogMelConfig(**ckpt["logmel"]) != mel:
        raise DataError(
            "the teacher was trained on other log-mel settings than params.yaml 'features' now gives: "
            "re-run `dvc repro train_teacher`."
        )
    net = parse_section(TeacherNetConfig, ckpt["config"]["net"], "teacher.net")
    model = AudioCNN(len(ckpt["classes"]), net, mel.n_mels)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), list(ckpt["classes"])
