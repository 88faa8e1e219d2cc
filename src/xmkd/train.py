"""The one training loop every distillation method goes through, its one step, and its data plumbing.

A batch is (student input, label, teacher embedding, teacher logits, position in the subset). The student input is
whatever the student's ``forward`` takes: uint8 frames for a video student (4x fewer bytes; pinned and copied
non-blocking on CUDA; normalised on the device inside the student), log-mels for an audio student (the reverse
direction). Each step (:func:`train_step`, also what ``scripts/benchmark.py`` times):

    total_student = ce_weight · CE(p_v, y) + Σ LossTerms.student
    total_heads   = Σ LossTerms.heads_only
    total_heads.backward(inputs=method parameters, retain_graph=True)   # never reaches the student
    total_student.backward()
    optimiser.step()   # one Adam over student + method heads

The loop holds no distributed code: a strategy (:mod:`xmkd.parallel`: one process, or one DDP rank) is called at
fixed points (wrap the student, average the heads' gradients and the buffers, add up the epoch's sums).

A loss term that is not finite, or a loss that explodes (above ``train.divergence_factor`` times the median of the
first ``train.divergence_steps`` steps; :class:`LossGuard`), stops training with a :class:`TrainingError` naming
the run, seed, epoch, step and value; the stage then writes nothing, so earlier outputs stay intact.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from xmkd import parallel
from xmkd.errors import TrainingError
from xmkd.methods.base import DistillMethod, TeacherBatch, labelled_cross_entropy
from xmkd.models.student import StudentOutput
from xmkd.parallel import SingleProcess


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
            cores shared out between the seed workers, or between the ``distributed.nproc`` processes).
        seed_workers: processes training the seeds of one run at the same time; 0 = auto (all seeds
            at once on a CPU, capped at cores + 1; 1 on CUDA). See :mod:`xmkd.experiment`.
        num_workers: DataLoader worker processes (0 = load in the main process).
        amp: bf16 autocast on CUDA (ignored on the CPU).
        label_fraction: share of the training clips whose label the student sees (1 = all, the default;
            < 1 = the few-labels regime: every clip keeps its sound and teacher outputs, cross-entropy and each
            method's label terms use the labelled clips only). The labelled clips are the same for every seed
            and method: ``round(label_fraction * n_c)`` (at least 1) per class, drawn with ``label_seed``.
        label_seed: seed of that draw.
        divergence_factor: a step whose loss (sum of the absolute values of its terms) exceeds this many times
            the median loss of the first ``divergence_steps`` steps stops training with an error (:class:`LossGuard`);
            0 = never (a non-finite loss always stops it). Default 1000: on the default regime no step of any
            method went above 5.3 x its reference (docs/pipeline.md#bad-input), while ``train.lr: 1e6`` trips it at
            the second step.
        divergence_steps: how many first steps make the reference (fewer while training has taken fewer).

    DDP settings (``nproc``, ``nnodes``, ``rdzv_endpoint``, ``backend``) are in the ``distributed`` section
    (:class:`xmkd.launch.DistributedConfig`); the loop itself does not see them.
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
    label_fraction: float = 1.0
    label_seed: int = 0
    divergence_factor: float = 1000.0
    divergence_steps: int = 10

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
        if not (self.divergence_factor == 0 or self.divergence_factor > 1) or self.divergence_steps < 1:
            raise ValueError(
                f"train.divergence_factor must be 0 (off) or > 1 and train.divergence_steps >= 1, got "
                f"{self.divergence_factor} and {self.divergence_steps}"
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
    """DataLoader with a seeded shuffling generator (same seed -> same batch order); see :func:`parallel.make_loader`."""
    return parallel.make_loader(ds, cfg.batch_size, cfg.num_workers, shuffle, seed, device)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(student inputs (B, ...), labels (B,) int64 (-1 = unlabelled), teacher embedding (B, D), teacher logits (B, C),
position of each clip in the subset (B,) int64)."""


def to_device(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every tensor of a batch on ``device`` (non-blocking: pinned host memory copies asynchronously on CUDA)."""
    return tuple(t.to(device, non_blocking=True) for t in batch)


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """The loop's mixed precision: bf16 autocast on CUDA when ``amp``, disabled otherwise (and on the CPU)."""
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
        inputs, y, emb, logits_t, _ = to_device(batch, device)
        with autocast(device, amp):
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


class LossGuard:
    """Stops training on a non-finite loss term, or on a loss that explodes relative to the first steps.

    The loss of a step is ``Σ_terms |value|`` (every student and heads-only term, CE included; absolute values, so
    terms of either sign count). The reference is the median of the first ``steps`` steps' losses (while fewer
    steps have been taken: of those so far). A step whose loss exceeds ``factor x reference`` raises; ``factor``
    0 turns that check off. A diverging run (e.g. ``train.lr: 1e6``) grows by orders of magnitude within a few
    steps; normal training stays within a few times its start.

    Args:
        factor: ``train.divergence_factor``; steps: ``train.divergence_steps``.
        where: names the run in the error, e.g. ``"run 'kd' seed 0 (method 'kd')"``.
        lr: ``train.lr``, quoted in the error.
    """

    def __init__(self, factor: float, steps: int, where: str, lr: float) -> None:
        self.factor, self.steps, self.where, self.lr = factor, steps, where, lr
        self.first: list[float] = []

    def check(self, values: dict[str, float], epoch: int, step: int) -> None:
        """Check one step's loss terms (before its backward pass).

        Args:
            values: {term name: value} of the step; epoch: 1-based; step: 0-based within the epoch.

        Raises:
            TrainingError: a term is NaN or infinite, or the loss exceeds the threshold.
        """
        for name, v in values.items():
            if not math.isfinite(v):
                raise TrainingError(
                    f"loss term '{name}' = {v} at epoch {epoch}, step {step} ({self.where}): training diverged. Lower "
                    f"train.lr (now {self.lr:g}), check the method's weights in params.yaml, or check the input "
                    "features; no output of this stage was written, earlier results are untouched."
                )
        loss = sum(abs(v) for v in values.values())
        if self.factor > 0 and self.first:
            ref = statistics.median(self.first)
            if ref > 0 and loss > self.factor * ref:
                raise TrainingError(
                    f"loss {loss:.4g} (sum of |terms| {', '.join(f'{k}={v:.3g}' for k, v in values.items())}) at epoch "
                    f"{epoch}, step {step} ({self.where}) exceeds train.divergence_factor x the median loss of the first "
                    f"{len(self.first)} steps = {self.factor:g} x {ref:.4g} = {self.factor * ref:.4g}: training "
                    f"diverged. Lower train.lr (now {self.lr:g}); raise train.divergence_factor only if this loss may "
                    "legitimately grow that much. No output of this stage was written, earlier results are untouched."
                )
        if len(self.first) < self.steps:
            self.first.append(loss)


class StepOutput(NamedTuple):
    """What one :func:`train_step` returns.

    Attributes:
        values: {term name: value} of every loss term (``ce`` first, then the student, then the heads-only terms).
        logs: the method's scalar diagnostics (:attr:`LossTerms.logs`).
        logits: (B, C) the student's logits on the batch (detached).
        lr: the student group's learning rate this step used.
    """

    values: dict[str, float]
    logs: dict[str, float]
    logits: torch.Tensor
    lr: float


def train_step(
    model: nn.Module,
    method: DistillMethod,
    opt: torch.optim.Optimizer,
    head_params: list[torch.Tensor],
    batch: Batch,
    device: torch.device,
    amp: bool,
    strategy: SingleProcess | None = None,
    check: Callable[[dict[str, float]], None] | None = None,
) -> StepOutput:
    """One optimiser step of any method (the loop's, and what ``scripts/benchmark.py`` times).

    Forward (under :func:`autocast`), ``method.loss``, ``ce_weight · CE`` over the labelled clips; ``check`` sees
    every term's value (e.g. :meth:`LossGuard.check`, raising before any gradient is taken); the heads-only terms
    backpropagate into ``head_params`` only (``inputs=``), then the student terms into student and heads; the
    strategy averages what DDP does not (heads' gradients); one optimiser step; the strategy syncs buffers.

    Args:
        model: the student, or the strategy's wrapper of it (``DistributedDataParallel``); in train mode.
        method: the distillation method (train mode); opt / head_params: from :func:`make_optimiser`.
        batch: a :data:`Batch` already on ``device``.
        amp: ``train.amp``; strategy: :class:`xmkd.parallel.SingleProcess` by default.

    Returns:
        A :class:`StepOutput`.

    Raises:
        TrainingError: from ``check``.
    """
    strategy = strategy or SingleProcess()
    inputs, y, emb, logits_t, index = batch
    with autocast(device, amp):
        s: StudentOutput = model(inputs)
        terms = method.loss(s, TeacherBatch(emb, logits_t, index), y)
        ce = method.ce_weight * labelled_cross_entropy(s.logits.float(), y)
    student_terms = {"ce": ce, **terms.student}
    values = {name: float(value.detach()) for name, value in {**student_terms, **terms.heads_only}.items()}
    if check is not None:
        check(values)
    opt.zero_grad(set_to_none=True)
    if terms.heads_only:
        sum(terms.heads_only.values()).backward(inputs=head_params, retain_graph=True)
    sum(student_terms.values()).backward()  # DDP all-reduces the student's gradients here
    strategy.after_backward(head_params)  # heads: not under DDP (two backward passes), averaged explicitly
    lr = opt.param_groups[0]["lr"]  # the rate this step uses
    opt.step()
    strategy.after_step(model, method)  # DDP: BN running statistics and the method's buffers equal on every rank
    return StepOutput(values, terms.logs, s.logits.detach(), lr)


def train(
    student: nn.Module,
    method: DistillMethod,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: TrainConfig,
    device: torch.device,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    strategy: SingleProcess | None = None,
    where: str = "",
) -> list[dict[str, float]]:
    """Train ``student`` with ``method`` (one loop for every method; each step is :func:`train_step`).

    Args:
        student: module mapping (B, 3, T, H, W) to :class:`StudentOutput`.
        method: the distillation method (its parameters are trained with the student).
        train_loader / val_loader: batches of (student inputs, labels, teacher emb, teacher logits, position);
            ``train_loader`` from ``strategy.train_loader`` (under DDP: this rank's share).
        cfg: optimisation settings.
        device: where to train.
        on_epoch_end: the per-epoch hook: called after every epoch with (epoch (1-based), that epoch's metrics,
            the dict appended to the history), on the main process only (global rank 0 of a DDP job, where the
            metrics are already the global ones). E.g. live logging to MLflow; it must not change the metrics.
        strategy: one process (default) or a DDP rank (:mod:`xmkd.parallel`).
        where: names the run in errors (e.g. ``"run 'kd' seed 0"``).

    Returns:
        Per-epoch metrics: mean of every loss term, ``train_top1``, ``val_top1``, ``lr``, ``seconds``
        (over all ranks' clips in a DDP job; ``seconds`` is each rank's own, ``val_top1`` rank 0's).

    Raises:
        TrainingError: a loss term is NaN or infinite, or the loss explodes (:class:`LossGuard`).
    """
    strategy = strategy or SingleProcess()
    student.to(device)
    method.to(device)
    model = strategy.wrap(student, device)  # DDP forwards the StudentOutput unchanged
    opt, head_params = make_optimiser(student, method, cfg)
    steps_per_epoch = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lr_factor(cfg, steps_per_epoch))
    guard = LossGuard(cfg.divergence_factor, cfg.divergence_steps,
                      f"{where} (method '{method.name}')" if where else f"method '{method.name}'", cfg.lr)
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        student.train()
        method.train()
        strategy.set_epoch(train_loader, epoch)
        t0 = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        n_seen, n_correct = 0, 0
        for step, batch in enumerate(train_loader):
            batch = to_device(batch, device)
            y = batch[1]
            out = train_step(model, method, opt, head_params, batch, device, cfg.amp, strategy,
                             check=lambda values, e=epoch, k=step: guard.check(values, e, k))
            sched.step()
            for name, v in out.values.items():
                sums[f"loss/{name}"] += v * len(y)
            for k, v in out.logs.items():
                sums[k] += v * len(y)
            n_seen += len(y)
            n_correct += int((out.logits.argmax(1) == y).sum())  # never true for an unlabelled clip (-1)
            sums["_labelled"] += float((y >= 0).sum())  # summed like the losses (and over ranks)
        sums, n_seen, n_correct = strategy.reduce_epoch(sums, n_seen, n_correct, device)
        labelled = sums.pop("_labelled")
        metrics = {k: v / n_seen for k, v in sums.items()}
        metrics["loss/total"] = sum(v for k, v in metrics.items() if k.startswith("loss/"))
        metrics["train_top1"] = n_correct / max(labelled, 1.0)  # over the labelled training clips
        metrics["lr"] = out.lr  # the rate of the epoch's last step
        metrics["seconds"] = time.perf_counter() - t0
        if val_loader is not None:
            metrics["val_top1"] = strategy.on_main(lambda: _top1(student, method, val_loader, device, cfg.amp), device)
        history.append(metrics)
        if on_epoch_end is not None and strategy.is_main:
            on_epoch_end(epoch, metrics)
    return history


def _top1(student: nn.Module, method: DistillMethod, loader: DataLoader, device: torch.device, amp: bool) -> float:
    pred = predict(student, method, loader, device, amp)
    return float((pred["logits"].argmax(1) == pred["labels"]).mean())
