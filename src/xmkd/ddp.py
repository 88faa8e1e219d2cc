"""Distributed data-parallel training of one seed: the launcher, the worker, and the collectives the loop uses.

``train.nproc > 1`` (or ``train.nnodes > 1``) makes :func:`xmkd.experiment.run_all` train the seeds one after
another, each through :func:`launch`, which runs

    python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=N -m xmkd.ddp worker \\
        --config data/configs/<run>.json --seed S --threads T --out <tmp>/result.pkl

(multi-node: ``--nnodes=M --node-rank=0 --rdzv-endpoint=host:port+i`` instead of ``--standalone``, see
:func:`torchrun_command`). Every worker process (:func:`worker`) joins the process group (``gloo`` on the CPU,
``nccl`` on CUDA; ``train.backend``), then runs the same code as a single-process seed
(:func:`xmkd.experiment.run_seed`) with a :class:`DistContext`:

- every rank seeds identically before building the models, so student and method heads start equal (DDP also
  broadcasts the student's weights from rank 0); after that, ranks > 0 reseed their torch RNG with a seed derived
  from (seed, rank) so that random draws during training (e.g. CRD's negatives) are independent across ranks,
  while rank 0 keeps the single-process stream;
- the training clips are split by a ``DistributedSampler(shuffle=True, seed=seed)`` (``set_epoch`` every
  epoch); each rank takes ``train.batch_size // world_size`` clips per step, so the *global* batch is still
  ``train.batch_size`` and the gradient is the mean over the global batch, as in the single-process run;
- the student is wrapped in ``DistributedDataParallel`` (gradients all-reduced during the second backward);
  the method's heads get their gradients from *two* backward passes (``heads_only`` with ``inputs=``, then the
  student group), which DDP's reducer does not allow for one forward, so they are not wrapped: their gradients
  are averaged over ranks explicitly (:func:`average_grads_`) after both backward passes, before the step;
- buffers: the student's floating-point buffers (BatchNorm running statistics) are averaged over ranks after
  every step (:func:`average_`), and so are the method's, through :meth:`DistillMethod.sync_buffers`; for a
  buffer updated as an exponential moving average of a batch mean (BN running mean, XKD's centre), the average
  of the ranks' updates *is* the update with the global batch. CRD's memory bank is instead kept identical on
  all ranks by gathering every rank's (row, embedding) updates in its loss (:func:`all_gather_rows`), and its
  normaliser Z is estimated from the global first batch. So all ranks end with identical weights and buffers;
- per-epoch metrics (loss sums, counts) are summed over ranks (:func:`reduce_epoch_sums`), so rank 0 logs
  global numbers; validation runs on rank 0 only (the others wait for its result);
- only rank 0 saves the checkpoint, evaluates on the test set and writes its result dict (pickle) to ``--out``;
  :func:`launch` returns it to the parent process, which does all MLflow logging and writes the metrics files.

What differs from the single-process run (so results agree within seed noise, not bit for bit): the order of
the clips (``DistributedSampler``'s permutation), BatchNorm batch statistics and in-batch contrastive terms
(CSC, CMC, ...) computed over the per-rank batch (``batch_size / world_size`` clips) instead of the whole batch.
SyncBatchNorm is not used (it is CUDA-only and would change the model's code path).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import inspect
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from xmkd.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from xmkd.runs import RunConfig
    from xmkd.train import TrainConfig

#: set to a folder to make every rank write ``rank-<r>.sha256`` (hash of its final student + method state) there
DEBUG_DIR_ENV = "XMKD_DDP_DEBUG_DIR"
_TAIL_LINES = 80


# ------------------------------------------------------------------------------------------------ collectives


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
    return dict(zip(keys, vals[: len(keys)])), int(round(vals[-2])), int(round(vals[-1]))


def broadcast_float(value: float | None, device: torch.device, src: int = 0) -> float:
    """``value`` of rank ``src`` on every rank (other ranks pass None). Outside distributed training: value."""
    if not is_distributed():
        return float("nan") if value is None else float(value)
    t = torch.tensor([float("nan") if value is None else value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=src)
    return float(t.item())


# ---------------------------------------------------------------------------------------------- context


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s torch RNG during training: ``seed`` itself on rank 0 (the single-process stream),
    a 63-bit value derived from (seed, rank) by NumPy's ``SeedSequence`` on the other ranks."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a DDP job (from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``).

    Attributes:
        rank: global rank, 0..world_size-1 (rank 0 saves, evaluates and reports).
        world_size: processes in the job (``train.nproc * train.nnodes``).
        local_rank: rank on this node (selects the CUDA device).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    def local_batch_size(self, batch_size: int) -> int:
        """Clips per step on each rank: ``batch_size // world_size`` (the global batch stays ``batch_size``).

        Raises:
            TrainingError: ``batch_size`` is not a multiple of ``world_size``.
        """
        if batch_size % self.world_size:
            raise TrainingError(
                f"train.batch_size = {batch_size} is not a multiple of the {self.world_size} processes "
                "(train.nproc x train.nnodes): set train.batch_size to a multiple of it, or change train.nproc."
            )
        return batch_size // self.world_size

    def train_loader(self, ds: Dataset, cfg: TrainConfig, seed: int, device: torch.device) -> DataLoader:
        """This rank's share of the training clips, reshuffled every epoch (call ``loader.sampler.set_epoch``).

        ``DistributedSampler(shuffle=True, seed=seed)`` permutes all N clips the same way on every rank (seeded
        by ``seed + epoch``) and gives rank r the clips r, r + W, r + 2W, ... of the permutation (padded by
        repeating clips to a multiple of W, so every rank takes the same number of steps).
        """
        sampler = DistributedSampler(ds, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        return DataLoader(
            ds,
            batch_size=self.local_batch_size(cfg.batch_size),
            sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
        )

    def reseed(self, seed: int) -> None:
        """After the models are built: give ranks > 0 their own torch RNG stream (see :func:`rank_seed`)."""
        if self.rank:
            torch.manual_seed(rank_seed(seed, self.rank))

    def wrap(self, student: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(student)`` on ``device`` (already moved there).

        No buffer sync at every forward (``forward_sync_buffers=False``; ``broadcast_buffers=False`` before torch
        2.14): the loop averages the BatchNorm statistics over the ranks after every step instead of copying
        rank 0's at every forward.
        """
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(student, device_ids=ids, **no_sync)

    def close(self) -> None:
        """Leave the process group (every rank, at the same point: after the last collective of training)."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def report_state(self, student: nn.Module, method: nn.Module) -> None:
        """Debug/test aid: with ``$XMKD_DDP_DEBUG_DIR`` set, write the SHA-256 of this rank's final student and
        method state (parameters and buffers) to ``<dir>/rank-<rank>.sha256``; otherwise do nothing."""
        folder = os.environ.get(DEBUG_DIR_ENV)
        if not folder:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        digest = state_digest(student.state_dict(), method.state_dict())
        (Path(folder) / f"rank-{self.rank}.sha256").write_text(digest + "\n")


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


# ------------------------------------------------------------------------------------------------ launcher


def world_size(cfg: TrainConfig) -> int:
    """Processes in a DDP job: ``train.nproc * train.nnodes``."""
    return cfg.nproc * cfg.nnodes


def is_ddp(cfg: TrainConfig) -> bool:
    """True when a run is trained with DDP (``train.nproc > 1`` or ``train.nnodes > 1``)."""
    return world_size(cfg) > 1


def threads_per_process(cfg: TrainConfig) -> int:
    """torch threads of each of the ``train.nproc`` processes on a node: ``train.num_threads``, or with 0 (auto)
    this machine's cores shared out between them (at least 1)."""
    return cfg.num_threads if cfg.num_threads > 0 else max(1, (os.cpu_count() or 1) // cfg.nproc)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` on CUDA, ``gloo`` on the CPU.

    Raises:
        TrainingError: ``nccl`` asked for on the CPU.
    """
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise TrainingError(
            "train.backend is 'nccl' but training runs on the CPU (NCCL needs CUDA): set train.backend: auto or gloo."
        )
    return backend


def _endpoint(endpoint: str, offset: int) -> str:
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + offset}"


def torchrun_command(config_path: Path | str, seed: int, seed_index: int, cfg: TrainConfig, threads: int,
                     out: Path | str | None, node_rank: int = 0) -> list[str]:
    """The ``torch.distributed.run`` command line that trains one seed on this node.

    One node: ``--standalone`` (a local rendezvous on a free port). Several nodes: static rendezvous with
    ``--node-rank`` (node 0, where the DVC stage runs, holds global rank 0, hence the outputs) at
    ``train.rdzv_endpoint``'s host, port ``+ seed_index`` (a fresh port per seed, so a node that finishes a seed
    early cannot join the previous seed's rendezvous).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if cfg.nnodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        cmd += [f"--nnodes={cfg.nnodes}", f"--node-rank={node_rank}",
                f"--rdzv-endpoint={_endpoint(str(cfg.rdzv_endpoint), seed_index)}"]
    cmd += [f"--nproc-per-node={cfg.nproc}", "--max-restarts=0", "-m", "xmkd.ddp", "worker",
            "--config", str(config_path), "--seed", str(seed), "--threads", str(threads)]
    if out is not None:
        cmd += ["--out", str(out)]
    return cmd


def _run_streaming(cmd: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``cmd``, echoing its merged stdout/stderr to ours; returns (exit code, last lines)."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        sys.stdout.flush()
        return proc.wait(), list(tail)


def _preflight(rc: RunConfig) -> None:
    """Checks that need the machine (CUDA devices, backend) before any process starts."""
    from xmkd.train import resolve_device

    device = resolve_device(rc.train.device)
    resolve_backend(rc.train.backend, device)
    if device.type == "cuda" and torch.cuda.device_count() < rc.train.nproc:
        raise TrainingError(
            f"train.nproc = {rc.train.nproc} processes on this node, but only {torch.cuda.device_count()} CUDA "
            "device(s): one process per GPU; lower train.nproc (or set train.device: cpu)."
        )
    DistContext(0, world_size(rc.train), 0).local_batch_size(rc.train.batch_size)


def launch(config_path: Path | str, seed: int, rc: RunConfig, threads: int, seed_index: int = 0) -> dict[str, Any]:
    """Train and evaluate one seed with ``train.nproc`` processes on this node (x ``train.nnodes`` nodes).

    Args:
        config_path: the run's resolved config (what every worker loads).
        seed: the seed; seed_index: its position in ``rc.seeds`` (selects the rendezvous port on several nodes).
        rc: the run config (already loaded from ``config_path``).
        threads: torch threads per process.

    Returns:
        Rank 0's result dict, as :func:`xmkd.experiment.run_seed` returns it.

    Raises:
        TrainingError: the job failed (the message carries the workers' error and the tail of their output),
            or the machine cannot run it (too few GPUs, NCCL on the CPU, batch not divisible).
    """
    _preflight(rc)
    tmp = Path(tempfile.mkdtemp(prefix="xmkd-ddp-"))
    try:
        out = tmp / "result.pkl"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        code, tail = _run_streaming(torchrun_command(config_path, seed, seed_index, rc.train, threads, out), env)
        if code != 0 or not out.exists():
            # the workers' own message: an XmkdError ("error: ...", see xmkd.cli), else a traceback's last line
            first = next((ln for ln in tail if ln.startswith("error: ")), None) or next(
                (ln for ln in tail if re.match(r"^\w+(Error|Exception)\b", ln)), f"exit status {code}"
            )
            raise TrainingError(
                f"distributed training of run '{rc.name}' seed {seed} ({rc.train.nproc} processes x "
                f"{rc.train.nnodes} node(s)) failed: {first}\n--- last lines of its output ---\n" + "\n".join(tail)
            )
        with out.open("rb") as fh:
            return pickle.load(fh)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ processes


def worker(config: str, seed: int, threads: int, out: str | None) -> None:
    """One DDP process (started by torchrun): join the group, train (and on rank 0: save, evaluate, report).

    Raises:
        TrainingError: NCCL asked for without CUDA, or anything :func:`xmkd.experiment.run_seed` raises.
    """
    from xmkd.experiment import run_seed
    from xmkd.runs import load_run_config
    from xmkd.train import resolve_device

    # 1x1x1 convolution weights get gradients in another memory layout than DDP's bucket: harmless, said once
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    rc = load_run_config(Path(config))
    device = resolve_device(rc.train.device)
    backend = resolve_backend(rc.train.backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend, device_id=torch.device("cuda", ctx.local_rank))
    else:
        dist.init_process_group(backend)
    try:
        res = run_seed(config, seed, threads, dist=ctx)  # leaves the group after training (DistContext.close)
    finally:
        ctx.close()
    if ctx.is_main and out is not None:
        fd, tmp = tempfile.mkstemp(dir=Path(out).parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(res, fh)
        os.replace(tmp, out)


def join(run: str, node_rank: int) -> None:
    """Run node ``node_rank`` (>= 1) of a multi-node run: every seed of ``data/configs/<run>.json`` in order, as
    the node that runs the stage (node 0) does. Outputs are written by node 0 only.

    Raises:
        ConfigError: the run is not multi-node, or ``node_rank`` is outside 1..nnodes-1.
        TrainingError: a seed's job failed.
    """
    from xmkd.runs import load_run_config

    config_path = Path(f"data/configs/{run}.json")
    rc = load_run_config(config_path)
    if rc.train.nnodes < 2 or not 1 <= node_rank < rc.train.nnodes:
        raise ConfigError(
            f"run '{run}' has train.nnodes = {rc.train.nnodes}: --node-rank must be in 1..nnodes-1 (node 0 is the "
            "one that runs the stage); set train.nnodes and train.rdzv_endpoint in params.yaml first."
        )
    _preflight(rc)
    threads = threads_per_process(rc.train)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    for i, seed in enumerate(rc.seeds):
        print(f"node {node_rank}: run '{run}' seed {seed}", flush=True)
        code, tail = _run_streaming(torchrun_command(config_path, seed, i, rc.train, threads, None, node_rank), env)
        if code != 0:
            raise TrainingError(
                f"node {node_rank}: run '{run}' seed {seed} failed (exit status {code}):\n" + "\n".join(tail)
            )


def main(argv: list[str] | None = None) -> None:
    """``python -m xmkd.ddp worker ...`` (started by torchrun) or ``python -m xmkd.ddp join --run X --node-rank K``."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.ddp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="one DDP process (started by torch.distributed.run)")
    w.add_argument("--config", required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--out", default=None, help="where rank 0 pickles its result dict")
    j = sub.add_parser("join", help="run node K (>= 1) of a multi-node run, from the repo root")
    j.add_argument("--run", required=True)
    j.add_argument("--node-rank", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        worker(args.config, args.seed, args.threads, args.out)
    else:
        join(args.run, args.node_rank)


if __name__ == "__main__":
    from xmkd.cli import run_main
    from xmkd.ddp import main as _main  # the importable module (not __main__), so classes are xmkd.ddp's

    run_main(_main)
