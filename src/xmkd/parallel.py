"""How the training loop runs over processes: one process (:class:`SingleProcess`), or one rank of a distributed
data-parallel job (:class:`DataParallel`).

The loop (:func:`xmkd.train.train`) and its step (:func:`xmkd.train.train_step`) hold no distributed code: they
call a strategy at fixed points, and everything that differs between one process and a DDP job is here:

==========================  ==================================  ==============================================
hook                        one process                         DDP rank (see docs/scale.md, "Distributed")
==========================  ==================================  ==============================================
``train_loader``            seeded shuffling ``DataLoader``     ``DistributedSampler(shuffle=True, seed)``,
                                                                ``batch_size / world_size`` clips per step
``reseed``                  nothing                             ranks > 0: own torch RNG stream (:func:`rank_seed`)
``wrap``                    the student itself                  ``DistributedDataParallel(student)``
``set_epoch``               nothing                             ``sampler.set_epoch(epoch)``
``after_backward``          nothing                             heads' gradients averaged over the ranks
``after_step``              nothing                             BatchNorm buffers averaged; ``method.sync_buffers()``
``reduce_epoch``            nothing                             epoch sums added over the ranks
``on_main``                 ``fn()``                            ``fn()`` on rank 0, broadcast to the others
``finish``                  nothing                             debug hash of the weights; leave the group
==========================  ==================================  ==============================================

The method's heads are not wrapped in DDP: they get gradients from two backward passes (the ``heads_only`` terms
with ``inputs=``, then the student terms), which DDP's reducer does not allow for one forward; ``after_backward``
averages them explicitly. The process group itself is created by :meth:`DataParallel.join` from the environment
torchrun (:mod:`xmkd.launch`) sets.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xmkd.collectives import average_floating_buffers_, average_grads_, broadcast_float, reduce_epoch_sums
from xmkd.errors import TrainingError

#: set to a folder to make every rank write ``rank-<r>.sha256`` (hash of its final student + method state) there
DEBUG_DIR_ENV = "XMKD_DDP_DEBUG_DIR"


class SyncsBuffers(Protocol):
    """What the DDP strategy needs of a distillation method (:class:`xmkd.methods.base.DistillMethod`)."""

    def sync_buffers(self) -> None: ...  # noqa: D102


def make_loader(
    ds: Dataset, batch_size: int, num_workers: int, shuffle: bool, seed: int, device: torch.device
) -> DataLoader:
    """``DataLoader`` with a seeded shuffling generator (same seed -> same batch order); pinned memory on CUDA."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s torch RNG during training: ``seed`` itself on rank 0 (the single-process stream),
    a 63-bit value derived from (seed, rank) by NumPy's ``SeedSequence`` on the other ranks."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def state_digest(student_state: dict[str, torch.Tensor], method_state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of two state_dicts' names, dtypes, shapes and exact values (e.g. a checkpoint's)."""
    h = hashlib.sha256()
    for prefix, state in (("student", student_state), ("method", method_state)):
        for name, t in sorted(state.items()):
            buf = io.BytesIO()
            np.save(buf, t.detach().cpu().contiguous().numpy(), allow_pickle=False)
            h.update(f"{prefix}.{name}".encode())
            h.update(buf.getvalue())
    return h.hexdigest()


class SingleProcess:
    """Training in one process: every hook is the identity (see the module docstring).

    Attributes:
        rank / world_size / local_rank: 0 / 1 / 0.
        reports: True: this process saves the checkpoint, evaluates and returns the seed's result.
    """

    rank, world_size, local_rank = 0, 1, 0
    reports = True

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (validation, per-epoch callbacks)."""
        return self.rank == 0

    def train_loader(self, ds: Dataset, batch_size: int, num_workers: int, seed: int, device: torch.device) -> DataLoader:
        """The training clips in a new seeded order every epoch (:func:`make_loader`, shuffled)."""
        return make_loader(ds, batch_size, num_workers, True, seed, device)

    def reseed(self, seed: int) -> None:
        """After the models are built: nothing to do in one process."""

    def wrap(self, student: nn.Module, device: torch.device) -> nn.Module:
        """The module the loop calls for the forward pass: the student itself."""
        return student

    def set_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Before each epoch: nothing to do (the loader's generator reshuffles)."""

    def after_backward(self, head_params: Sequence[nn.Parameter]) -> None:
        """After both backward passes, before the optimiser step: nothing to do."""

    def after_step(self, model: nn.Module, method: SyncsBuffers) -> None:
        """After the optimiser step: nothing to do."""

    def reduce_epoch(
        self, sums: dict[str, float], n_seen: int, n_correct: int, device: torch.device
    ) -> tuple[dict[str, float], int, int]:
        """An epoch's accumulators (sums of value x clips, clips seen, clips right), unchanged."""
        return sums, n_seen, n_correct

    def on_main(self, fn: Callable[[], float], device: torch.device) -> float:
        """``fn()`` (e.g. the validation accuracy)."""
        return fn()

    def finish(self, student: nn.Module, method: nn.Module) -> None:
        """After training: nothing to do."""

    def close(self) -> None:
        """Release what the strategy holds: nothing in one process."""


class DataParallel(SingleProcess):
    """One rank of a DDP job (``torch.distributed`` process group already joined, see :meth:`join`).

    Args:
        rank: global rank, 0..world_size-1 (rank 0 validates; all ranks end with identical weights).
        world_size: processes in the job (``distributed.nproc * distributed.nnodes``).
        local_rank: rank on this node (selects the CUDA device).
        reports: this process saves the checkpoint, evaluates and hands the result back: local rank 0 of the
            node whose stage launched the job (so the outputs land where DVC runs, whatever global rank the
            rendezvous gave it); False on every other process.
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, reports: bool = False) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.reports = reports

    @classmethod
    def join(cls, backend: str, device: torch.device, reports: bool) -> DataParallel:
        """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

        Args:
            backend: ``gloo`` or ``nccl`` (:func:`xmkd.launch.resolve_backend`).
            device: the training device (on CUDA each process takes GPU ``LOCAL_RANK``).
            reports: as in the class docstring; only local rank 0 keeps it.

        Raises:
            TrainingError: not started by torchrun (``RANK`` etc. missing).
        """
        try:
            rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        except KeyError as e:
            raise TrainingError(
                f"environment variable {e} is not set: a DDP process must be started by torchrun "
                "(python -m torch.distributed.run, or xmkd.launch)."
            ) from None
        if device.type == "cuda":
            torch.cuda.set_device(local)
            dist.init_process_group(backend, device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend)
        return cls(rank, world, local, reports=reports and local == 0)

    def local_batch_size(self, batch_size: int) -> int:
        """Clips per step on each rank: ``batch_size // world_size`` (the global batch stays ``batch_size``).

        Raises:
            TrainingError: ``batch_size`` is not a multiple of ``world_size``.
        """
        if batch_size % self.world_size:
            raise TrainingError(
                f"train.batch_size = {batch_size} is not a multiple of the {self.world_size} processes "
                "(distributed.nproc x distributed.nnodes): set train.batch_size to a multiple of it."
            )
        return batch_size // self.world_size

    def train_loader(self, ds: Dataset, batch_size: int, num_workers: int, seed: int, device: torch.device) -> DataLoader:
        """This rank's share of the training clips, reshuffled every epoch (:meth:`set_epoch`).

        ``DistributedSampler(shuffle=True, seed=seed)`` permutes all N clips the same way on every rank (seeded by
        ``seed + epoch``) and gives rank r the clips r, r + W, r + 2W, ... of the permutation (padded by repeating
        clips to a multiple of W, so every rank takes the same number of steps).
        """
        sampler = DistributedSampler(ds, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        return DataLoader(
            ds,
            batch_size=self.local_batch_size(batch_size),
            sampler=sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def reseed(self, seed: int) -> None:
        """After the models are built (equal on every rank): ranks > 0 get their own torch RNG stream, so random
        draws during training (e.g. CRD's negatives) are independent across ranks (:func:`rank_seed`)."""
        if self.rank:
            torch.manual_seed(rank_seed(seed, self.rank))

    def wrap(self, student: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(student)`` on ``device`` (already moved there).

        No buffer sync at every forward (``forward_sync_buffers=False``; ``broadcast_buffers=False`` before torch
        2.14): :meth:`after_step` averages the BatchNorm statistics over the ranks after every step instead.
        """
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(student, device_ids=ids, **no_sync)

    def set_epoch(self, loader: DataLoader, epoch: int) -> None:
        """A new permutation every epoch, the same on every rank."""
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)

    def after_backward(self, head_params: Sequence[nn.Parameter]) -> None:
        """The method's heads are not under DDP (two backward passes): average their gradients over the ranks."""
        average_grads_(head_params)

    def after_step(self, model: nn.Module, method: SyncsBuffers) -> None:
        """Equal buffers on every rank: the student's floating-point buffers (BatchNorm running statistics) are
        averaged, and the method syncs its own (:meth:`~xmkd.methods.base.DistillMethod.sync_buffers`)."""
        average_floating_buffers_(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)
        method.sync_buffers()

    def reduce_epoch(
        self, sums: dict[str, float], n_seen: int, n_correct: int, device: torch.device
    ) -> tuple[dict[str, float], int, int]:
        """The epoch's accumulators summed over the ranks (:func:`xmkd.collectives.reduce_epoch_sums`)."""
        return reduce_epoch_sums(sums, n_seen, n_correct, device)

    def on_main(self, fn: Callable[[], float], device: torch.device) -> float:
        """``fn()`` on rank 0, its value broadcast to the other ranks (which wait)."""
        return broadcast_float(fn() if self.is_main else None, device)

    def finish(self, student: nn.Module, method: nn.Module) -> None:
        """After the last collective of training: with ``$XMKD_DDP_DEBUG_DIR`` set, write the SHA-256 of this
        rank's final student and method state to ``<dir>/rank-<rank>.sha256`` (a test aid); then leave the group
        (every rank, at the same point). The reporting process goes on alone (checkpoint, evaluation)."""
        folder = os.environ.get(DEBUG_DIR_ENV)
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            digest = state_digest(student.state_dict(), method.state_dict())
            (Path(folder) / f"rank-{self.rank}.sha256").write_text(digest + "\n")
        self.close()

    def close(self) -> None:
        """Leave the process group (a no-op when already left)."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
