"""Collectives of distributed training: the all-reduce / all-gather helpers the training loop and methods use.

Every function is a no-op (or returns its input) outside an initialised process group of more than one process,
so a method calls them unconditionally. The lowest layer of the training code: it imports torch only, and the
methods (e.g. CRD's memory bank, :mod:`xmkd.methods.crd`), the DDP strategy (:mod:`xmkd.parallel`) and the
contrastive terms that need the global batch build on it. Where each is used and why the averages are right:
docs/scale.md#distributed-training-ddp.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (B, ...) of every rank along dim 0, in rank order -> (world_size * B, ...).

    Returns ``t`` itself outside distributed training. No gradient flows through the result. Every rank must
    pass the same shape (true for batches drawn by ``DistributedSampler``, which pads every rank to the same
    number of clips).

    Raises:
        RuntimeError: (from the collective) shapes differ between ranks.
    """
    if not is_distributed():
        return t
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every rank the gradient of the *global* loss w.r.t. its own rows."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.rank, ctx.rows = dist.get_rank(), t.shape[0]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous()
        dist.all_reduce(grad)  # Σ over ranks of d(rank loss)/d(gathered rows)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_rows` (B, ...) -> (world_size * B, ...), but differentiable: for in-batch terms
    (contrastive losses) computed over the global batch.

    If rank r's loss L_r uses the gathered rows, the backward pass gives rank q the sum over ranks of
    dL_r/d(rows of q) (an all-reduce of the gradient), so after DDP's averaging the gradient is that of
    mean_r L_r, the loss of the global batch. ``t`` itself outside distributed training. Every rank must call
    it at the same point of the forward pass (the backward holds a collective too).
    """
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def average_(tensors: Iterable[torch.Tensor]) -> None:
    """Replace every tensor (in place) by its mean over the ranks; a no-op outside distributed training.

    Tensors are flattened into one buffer per dtype (one collective each). All ranks must pass tensors of the
    same shapes, dtypes and order. Integer tensors are averaged with integer division (use it for counters
    that are equal on every rank).
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = collections.defaultdict(list)
    for t in tensors:
        by_dtype[(t.dtype, t.device)].append(t)
    for (dtype, _), group in by_dtype.items():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat = flat / world if dtype.is_floating_point else flat // world
        offset = 0
        for t in group:
            n = t.numel()
            t.data.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def average_floating_buffers_(module: nn.Module) -> None:
    """Average every floating-point buffer of ``module`` (BN running statistics, EMA centres) over the ranks."""
    average_(b for b in module.buffers() if b.is_floating_point())


def average_grads_(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks (in place), in one collective.

    A parameter whose gradient is None on every rank stays None (so Adam skips it, as in the single-process
    run); one that has a gradient on some rank but not here gets zeros here first, so all ranks step alike.
    """
    if not is_distributed() or not params:
        return
    world = dist.get_world_size()
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat(
        [present]
        + [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().reshape(-1) for p in params]
    )
    dist.all_reduce(flat)
    offset = len(params)
    for i, p in enumerate(params):
        n = p.numel()
        if flat[i] > 0:
            g = (flat[offset : offset + n] / world).view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def reduce_epoch_sums(
    sums: dict[str, float], n_seen: int, n_correct: int, device: torch.device
) -> tuple[dict[str, float], int, int]:
    """Sum an epoch's per-rank accumulators over the ranks (every rank gets the global totals).

    Args:
        sums: {metric: sum over this rank's clips of (value x clips)}; the same keys on every rank.
        n_seen / n_correct: clips seen / classified correctly on this rank.
        device: where the collective's tensor lives (the training device: NCCL needs CUDA tensors).

    Returns:
        (global sums, global n_seen, global n_correct); the inputs unchanged outside distributed training.
    """
    if not is_distributed():
        return sums, n_seen, n_correct
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [n_seen, n_correct], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    vals = t.tolist()
    return dict(zip(keys, vals[: len(keys)], strict=True)), int(round(vals[-2])), int(round(vals[-1]))


def broadcast_float(value: float | None, device: torch.device, src: int = 0) -> float:
    """``value`` of rank ``src`` on every rank (other ranks pass None). Outside distributed training: value."""
    if not is_distributed():
        return float("nan") if value is None else float(value)
    t = torch.tensor([float("nan") if value is None else value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=src)
    return float(t.item())
