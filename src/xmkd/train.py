"""The one training loop every distillation method goes through, and its data plumbing.

A batch is (student input, label, teacher embedding, teacher logits, position in the subset). The student input is
whatever the student's ``forward`` takes: uint8 frames for a video student (4x fewer bytes; pinned and copied
non-blocking on CUDA; normalised on the device inside the student), log-mels for an audio student (the reverse
direction). Each step:

    total_student = ce_weight · CE(p_v, y) + Σ LossTerms.student
    total_heads   = Σ LossTerms.heads_only
    total_heads.backward(inputs=method parameters, retain_graph=True)   # never reaches the student
    total_student.backward()
    optimiser.step()   # one Adam over student + method heads

A non-finite loss stops training with a :class:`TrainingError` naming the term, epoch and step; the
stage then writes nothing, so earlier outputs stay intact.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xmkd.ddp import DistContext, average_floating_buffers_, average_grads_, broadcast_float, reduce_epoch_sums
from xmkd.errors import TrainingError
from xmkd.methods.base import DistillMethod, TeacherBatch, labelled_cross_entropy
from xmkd.models.student import StudentOutput


@dataclass(frozen=True)
class TrainConfig:
    """``train`` section of params.yaml.

    Attributes:
        epochs: training epochs (the last epoch's model is evaluated; no test-set model selection).
        batch_size: clips per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2, as ``torch.optim.Adam``).
        milestones: points in training, in epochs, at which the learning rate is multiplied by ``gamma``
            (multistep decay). Applied per optimiser step, so a fraction is allowed: ``[1.5]`` decays half-way
            through the second epoch; an integer ``m`` decays after epoch ``m`` (as ``MultiStepLR``).
        gamma: learning-rate decay factor.
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
        num_threads: CPU threads for torch (intra-op) per seed worker (per process with DDP); 0 = auto (the
            cores shared out between the seed workers, or between the ``nproc`` processes).
        seed_workers: processes training the seeds of one run at the same time; 0 = auto (all seeds
            at once on a CPU, capped at cores + 1; 1 on CUDA). See :mod:`xmkd.experiment`.
        num_workers: DataLoader worker processes (0 = load in the main process).
        amp: bf16 autocast on CUDA (ignored on the CPU).
        nproc: processes per node for distributed data-parallel training (DDP, :mod:`xmkd.ddp`); 1 = one
            process per seed, as before. With ``nproc * nnodes > 1`` the seeds run one after another, each with
            ``nproc * nnodes`` processes that each take ``batch_size / (nproc * nnodes)`` clips per step (the
            global batch stays ``batch_size``). One process per GPU on CUDA.
        nnodes: machines taking part (multi-node DDP; see ``rdzv_endpoint``).
        rdzv_endpoint: ``host:port`` of node 0 (the machine that runs the stage) when ``nnodes > 1``; ports
            ``port .. port + len(seeds) - 1`` must be free there (one rendezvous per seed). None on one node.
        backend: DDP communication backend: ``auto`` (``nccl`` on CUDA, ``gloo`` on the CPU), ``gloo`` or
            ``nccl``.
        label_fraction: share of the training clips whose label the student sees (1 = all, the default;
            < 1 = the few-labels regime: every clip keeps its sound and teacher outputs, cross-entropy and each
            method's label terms use the labelled clips only). The labelled clips are the same for every seed
            and method: ``round(label_fraction * n_c)`` (at least 1) per class, drawn with ``label_seed``.
        label_seed: seed of that draw.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    milestones: list[float] | None = None
    gamma: float = 0.1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0
    seed_workers: int = 0
    num_workers: int = 0
    amp: bool = True
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    label_fraction: float = 1.0
    label_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"train.label_fraction must be in (0, 1] (1 = every clip labelled), got {self.label_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be >= 1")
        if self.num_threads < 0 or self.seed_workers < 0:
            raise ValueError("train.num_threads and train.seed_workers must be >= 0 (0 = auto)")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        bad = [m for m in self.milestones or [] if not 0 < m < self.epochs]
        if bad:
            raise ValueError(
                f"train.milestones {bad} must lie strictly between 0 and train.epochs = {self.epochs} (they are "
                "points in training, in epochs); drop them or change train.epochs."
            )
        self._check_distributed()

    def _check_distributed(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ValueError(f"train.nproc and train.nnodes must be >= 1 (got {self.nproc}, {self.nnodes}); 1 = no DDP")
        world = self.nproc * self.nnodes
        if world > 1 and self.batch_size % world:
            raise ValueError(
                f"train.batch_size = {self.batch_size} must be a multiple of train.nproc x train.nnodes = {world} "
                "(each process takes batch_size / (nproc x nnodes) clips per step): change one of them."
            )
        if world > 1 and self.seed_workers > 1:
            raise ValueError(
                f"train.seed_workers = {self.seed_workers} with train.nproc x train.nnodes = {world}: distributed runs "
                "train the seeds one after another; set train.seed_workers: 0 (or 1)."
            )
        if self.nnodes > 1:
            host, _, port = (self.rdzv_endpoint or "").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"train.nnodes = {self.nnodes} needs train.rdzv_endpoint = 'host:port' of node 0 (the machine that "
                    f"runs the stage), e.g. 'node0.example.org:29400'; got {self.rdzv_endpoint!r}."
                )
        elif self.rdzv_endpoint is not None:
            raise ValueError(
                "train.rdzv_endpoint is only used with train.nnodes > 1 (one node uses a local rendezvous on a free "
                "port): set train.rdzv_endpoint: null, or train.nnodes to the number of machines."
            )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU.

    Raises:
        TrainingError: ``cuda`` requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available: set train.device: auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ClipDataset(Dataset):
    """Clips of one subset with their frozen teacher outputs.

    Args:
        inputs: (N_all, ...) student inputs: (N_all, T, H, W, 3) uint8 frames (may be a memmap) for a video
            student, (N_all, n_mels, frames) float32 log-mels for an audio student.
        labels: (N_all,) int64.
        teacher_embedding: (N_all, D) float32; teacher_logits: (N_all, C) float32.
        indices: rows of this subset.
        in_memory: copy this subset's inputs into RAM (fast for small benchmarks).
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        teacher_embedding: np.ndarray,
        teacher_logits: np.ndarray,
        indices: np.ndarray,
        in_memory: bool = True,
    ) -> None:
        self.indices = np.asarray(indices)
        self.inputs = np.ascontiguousarray(inputs[self.indices]) if in_memory else inputs
        self.in_memory = in_memory
        self.labels = torch.as_tensor(labels[self.indices], dtype=torch.long)
        self.emb = torch.as_tensor(np.asarray(teacher_embedding[self.indices]), dtype=torch.float32)
        self.logits = torch.as_tensor(np.asarray(teacher_logits[self.indices]), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(student input, e.g. frames (T, H, W, 3) uint8, label, teacher embedding (D,), teacher logits (C,), position i)."""
        row = i if self.in_memory else int(self.indices[i])
        return torch.from_numpy(np.asarray(self.inputs[row])), self.labels[i], self.emb[i], self.logits[i], i


def make_loader(ds: Dataset, cfg: TrainConfig, shuffle: bool, seed: int, device: torch.device) -> DataLoader:
    """DataLoader with a seeded shuffling generator (same seed -> same batch order)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )


def _to(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict(
    student: nn.Module,
    method: DistillMethod | None,
    loader: DataLoader,
    device: torch.device,
    amp: bool = True,
) -> dict[str, np.ndarray]:
    """Run the student (and the method's diagnostics) in eval mode over a loader.

    Returns:
        {"logits": (N, C), "features": (N, d), "labels": (N,), plus each diagnostic (N,)}, float32 numpy.
    """
    student.eval()
    if method is not None:
        method.eval()
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for batch in loader:
        inputs, y, emb, logits_t, _ = _to(batch, device)
        with _autocast(device, amp):
            s: StudentOutput = student(inputs)
            diag = method.diagnostics(s, TeacherBatch(emb, logits_t)) if method is not None else {}
        out["logits"].append(s.logits.float().cpu().numpy())
        out["features"].append(s.feature.float().cpu().numpy())
        out["labels"].append(y.cpu().numpy())
        for k, v in diag.items():
            out[k].append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multistep decay applied per optimiser step: the factor on ``train.lr`` before step ``k`` (0-based).

    The factor is ``gamma ** n``, ``n`` = the milestones ``m`` (in epochs) with ``k >= round(m * steps_per_epoch)``.
    For integer milestones this is exactly ``MultiStepLR`` stepped once per epoch; fractional milestones decay
    inside an epoch.

    Args:
        cfg: the ``train`` section (``milestones``, ``gamma``).
        steps_per_epoch: optimiser steps per epoch (``len(train_loader)``), >= 1.
    """
    bounds = sorted(round(m * steps_per_epoch) for m in cfg.milestones or [])
    return lambda k: cfg.gamma ** bisect.bisect_right(bounds, k)


def make_optimiser(
    student: nn.Module, method: DistillMethod, cfg: TrainConfig
) -> tuple[torch.optim.Adam, list[torch.Tensor]]:
    """One Adam over the student (``train.lr``) and the method's trainable heads (``train.lr * head_lr_scale``).

    Returns:
        (the optimiser, with param group 0 = the student and group 1 = the heads when there are any;
        the heads' trainable parameters, for the heads-only backward pass).
    """
    head_params = [p for p in method.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": list(student.parameters()), "lr": cfg.lr}]
    if head_params:  # their own group, on the same schedule (LambdaLR scales every group's initial rate)
        groups.append({"params": head_params, "lr": cfg.lr * method.head_lr_scale})
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay), head_params


def train(
    student: nn.Module,
    method: DistillMethod,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    dist: DistContext | None = None,
) -> list[dict[str, float]]:
    """Train ``student`` with ``method`` (one loop for every method).

    Args:
        student: module mapping (B, 3, T, H, W) to :class:`StudentOutput`.
        method: the distillation method (its parameters are trained with the student).
        train_loader / val_loader: batches of (student inputs, labels, teacher emb, teacher logits, position).
        cfg: optimisation settings.
        device: where to train.
        on_epoch: called after each epoch with (epoch, metrics) (e.g. to log to MLflow).
        dist: this process's place in a DDP job (None: single process). Then the student is wrapped in
            ``DistributedDataParallel``, the method heads' gradients and both modules' floating-point buffers
            are averaged over the ranks after the backward passes / the step, the epoch's sums are added up
            over the ranks, and validation runs on rank 0 only (see :mod:`xmkd.ddp`). ``train_loader`` must
            then hold this rank's share (:meth:`DistContext.train_loader`).

    Returns:
        Per-epoch metrics: mean of every loss term, ``train_top1``, ``val_top1``, ``lr``, ``seconds``
        (over all ranks' clips in a DDP job; ``seconds`` and ``val_top1`` are rank 0's).

    Raises:
        TrainingError: a loss term is NaN or infinite.
    """
    student.to(device)
    method.to(device)
    model = student if dist is None else dist.wrap(student, device)  # DDP forwards the StudentOutput unchanged
    opt, head_params = make_optimiser(student, method, cfg)
    steps_per_epoch = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lr_factor(cfg, steps_per_epoch))
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        student.train()
        method.train()
        if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new permutation every epoch, the same on every rank
        t0 = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        n_seen, n_correct = 0, 0
        for step, batch in enumerate(train_loader):
            inputs, y, emb, logits_t, index = _to(batch, device)
            with _autocast(device, cfg.amp):
                s: StudentOutput = model(inputs)
                terms = method.loss(s, TeacherBatch(emb, logits_t, index), y)
                ce = method.ce_weight * labelled_cross_entropy(s.logits.float(), y)
            student_terms = {"ce": ce, **terms.student}
            for name, value in {**student_terms, **terms.heads_only}.items():
                v = float(value.detach())
                if not math.isfinite(v):
                    raise TrainingError(
                        f"loss term '{name}' = {v} at epoch {epoch}, step {step} (method '{method.name}'): "
                        "training diverged. Lower train.lr, check the method's weights in params.yaml, or check the "
                        "input features; no output of this stage was written, earlier results are untouched."
                    )
                sums[f"loss/{name}"] += v * len(y)
            for k, v in terms.logs.items():
                sums[k] += v * len(y)
            opt.zero_grad(set_to_none=True)
            if terms.heads_only:
                sum(terms.heads_only.values()).backward(inputs=head_params, retain_graph=True)
            sum(student_terms.values()).backward()  # DDP all-reduces the student's gradients here
            if dist is not None:
                average_grads_(head_params)  # heads: not under DDP (two backward passes), averaged explicitly
            epoch_lr = opt.param_groups[0]["lr"]  # the rate this step used
            opt.step()
            sched.step()
            if dist is not None:
                average_floating_buffers_(student)  # BN running statistics, equal on every rank
                method.sync_buffers()
            n_seen += len(y)
            n_correct += int((s.logits.argmax(1) == y).sum())  # never true for an unlabelled clip (-1)
            sums["_labelled"] += float((y >= 0).sum())  # summed like the losses (and over ranks)
        if dist is not None:
            sums, n_seen, n_correct = reduce_epoch_sums(sums, n_seen, n_correct, device)
        labelled = sums.pop("_labelled")
        metrics = {k: v / n_seen for k, v in sums.items()}
        metrics["loss/total"] = sum(v for k, v in metrics.items() if k.startswith("loss/"))
        metrics["train_top1"] = n_correct / max(labelled, 1.0)  # over the labelled training clips
        metrics["lr"] = epoch_lr  # the rate of the epoch's last step
        metrics["seconds"] = time.perf_counter() - t0
        if val_loader is not None:
            val_top1 = None
            if dist is None or dist.is_main:
                pred = predict(student, method, val_loader, device, cfg.amp)
                val_top1 = float((pred["logits"].argmax(1) == pred["labels"]).mean())
            metrics["val_top1"] = val_top1 if dist is None else broadcast_float(val_top1, device)  # others wait
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return history
