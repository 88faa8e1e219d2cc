"""Launching one seed as a distributed data-parallel (DDP) job, on torchrun's own machinery.

``distributed.nproc * distributed.nnodes > 1`` (params.yaml section ``distributed``, :class:`DistributedConfig`)
makes :func:`xmkd.experiment.run_all` train the seeds one after another, each as a DDP job started by
:func:`launch`: ``torch.distributed.launcher.api.elastic_launch``, the launcher behind ``torchrun``, with its c10d
rendezvous:

- one node (``nnodes: 1``): torchrun's ``--standalone``: a c10d store on a free local port, a fresh run id;
- several nodes: a c10d store at ``rdzv_endpoint``'s host, port ``+ seed_index`` (a fresh port per seed), run id
  ``<run>-seed<S>``, hosted by this node (the one whose stage launched it). Every other node runs the plain
  ``torchrun`` command line :func:`torchrun_command` returns (``python -m xmkd.node join --run <run>`` runs it
  for every seed in order).

Every process runs :func:`xmkd.experiment.run_rank` (the entry point is passed in, so this module does not
import the experiment code above it). Why torchrun and not Lightning Fabric or Accelerate: docs/scale.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from xmkd.cli import StageTerminated
from xmkd.errors import TrainingError

#: how long a node other than node 0 waits (s) for node 0 to open a seed's rendezvous: node 0 evaluates the
#: previous seed alone first (checkpoint, test set) while the other nodes are already waiting
NODE_WAIT_S = 3600


@dataclass(frozen=True)
class DistributedConfig:
    """``distributed`` section of params.yaml: how many processes train one seed.

    Attributes:
        nproc: processes per node (one per GPU on CUDA); 1 = no DDP. With ``nproc * nnodes > 1`` the seeds run
            one after another, each with ``nproc * nnodes`` processes that each take ``train.batch_size /
            (nproc * nnodes)`` clips per step (the global batch stays ``train.batch_size``).
        nnodes: machines taking part (see ``rdzv_endpoint``).
        rdzv_endpoint: ``host:port`` of node 0 (the machine that runs the stage) when ``nnodes > 1``; ports
            ``port .. port + len(seeds) - 1`` must be free there (one rendezvous per seed). None on one node.
        backend: communication backend: ``auto`` (``nccl`` on CUDA, ``gloo`` on the CPU), ``gloo`` or ``nccl``.
    """

    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    backend: Literal["auto", "gloo", "nccl"] = "auto"

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ValueError(
                f"distributed.nproc and distributed.nnodes must be >= 1 (got {self.nproc}, {self.nnodes}); 1 = no DDP"
            )
        if self.nnodes > 1:
            host, _, port = (self.rdzv_endpoint or "").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"distributed.nnodes = {self.nnodes} needs distributed.rdzv_endpoint = 'host:port' of node 0 (the "
                    f"machine that runs the stage), e.g. 'node0.example.org:29400'; got {self.rdzv_endpoint!r}."
                )
        elif self.rdzv_endpoint is not None:
            raise ValueError(
                "distributed.rdzv_endpoint is only used with distributed.nnodes > 1 (one node uses a local rendezvous "
                "on a free port): set distributed.rdzv_endpoint: null, or distributed.nnodes to the number of machines."
            )

    @property
    def world_size(self) -> int:
        """Processes in a job: ``nproc * nnodes``."""
        return self.nproc * self.nnodes

    @property
    def enabled(self) -> bool:
        """True when seeds are trained with DDP (more than one process)."""
        return self.world_size > 1

    def endpoint(self, seed_index: int) -> str:
        """The rendezvous ``host:port`` of the seed at ``seed_index`` (port + seed_index); several nodes only."""
        host, _, port = str(self.rdzv_endpoint).rpartition(":")
        return f"{host}:{int(port) + seed_index}"


def threads_per_process(cfg: DistributedConfig, num_threads: int) -> int:
    """torch threads of each of the ``nproc`` processes on a node: ``num_threads`` (``train.num_threads``), or with
    0 (auto) this machine's cores shared out between them (at least 1)."""
    return num_threads if num_threads > 0 else max(1, (os.cpu_count() or 1) // cfg.nproc)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` on CUDA, ``gloo`` on the CPU.

    Raises:
        TrainingError: ``nccl`` asked for on the CPU.
    """
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise TrainingError(
            "distributed.backend is 'nccl' but training runs on the CPU (NCCL needs CUDA): set distributed.backend: "
            "auto or gloo."
        )
    return backend


def preflight(cfg: DistributedConfig, device: torch.device) -> None:
    """Checks that need the machine (backend, CUDA devices) before any process starts.

    Raises:
        TrainingError: NCCL on the CPU, or fewer CUDA devices than ``nproc``.
    """
    resolve_backend(cfg.backend, device)
    if device.type == "cuda" and torch.cuda.device_count() < cfg.nproc:
        raise TrainingError(
            f"distributed.nproc = {cfg.nproc} processes on this node, but only {torch.cuda.device_count()} CUDA "
            "device(s): one process per GPU; lower distributed.nproc (or set train.device: cpu)."
        )


def torchrun_command(cfg: DistributedConfig, config_path: Path | str, run: str, seed: int, seed_index: int,
                     threads: int) -> list[str]:
    """The plain ``torchrun`` command line with which a node other than node 0 takes part in one seed's job.

    c10d rendezvous at ``rdzv_endpoint`` port ``+ seed_index``, run id ``<run>-seed<S>`` (as :func:`launch` on
    node 0, which hosts the store: ``is_host=0`` here, and a wait of up to :data:`NODE_WAIT_S` for it).
    """
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={cfg.nnodes}", f"--nproc-per-node={cfg.nproc}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.endpoint(seed_index)}", f"--rdzv-id={run}-seed{seed}",
        f"--rdzv-conf=is_host=0,read_timeout={NODE_WAIT_S},join_timeout={NODE_WAIT_S}", "--max-restarts=0",
        "-m", "xmkd.node", "rank", "--config", str(config_path), "--seed", str(seed), "--threads", str(threads),
    ]  # fmt: skip


@contextlib.contextmanager
def _restored_process_state(threads: int) -> Iterator[None]:
    """The launch changes process-wide state: the agent installs its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers
    and sets ``TORCHELASTIC_SIGNALS_TO_HANDLE``; the workers inherit ``OMP_NUM_THREADS``. Restore it all after."""
    sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
    handlers = {s: signal.getsignal(s) for s in sigs}
    keys = ("OMP_NUM_THREADS", "PYTHONUNBUFFERED", "TORCHELASTIC_SIGNALS_TO_HANDLE")
    env = {k: os.environ.get(k) for k in keys}
    os.environ.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    try:
        yield
    finally:
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure_message(err: Exception) -> str:
    """The failed worker's own message (``DataError: ...``) from torchelastic's ``ChildFailedError``."""
    try:
        rank, failure = err.get_first_failure()  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return str(err)
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    return f"rank {rank}: {msg or f'exit status {failure.exitcode}'}"


def launch(cfg: DistributedConfig, entrypoint: Callable[..., Any], args: Sequence[Any], *, run: str, seed: int,
           seed_index: int, threads: int, device: torch.device) -> Any:
    """Run ``entrypoint(*args)`` in ``cfg.nproc`` processes on this node (x ``cfg.nnodes`` nodes) with torchrun's
    launcher, and return what local rank 0 of this node returned (whatever global rank the rendezvous gave it).

    Args:
        cfg: the ``distributed`` section; entrypoint: a picklable module-level function (started by ``spawn``).
        run, seed, seed_index: name the job (run id, rendezvous port) and its errors.
        threads: torch threads per process (``OMP_NUM_THREADS`` of the workers).
        device: the training device (checked by :func:`preflight`).

    Raises:
        TrainingError: a process failed (its message is quoted), or the machine cannot run the job.
        StageTerminated: this process got SIGTERM / SIGINT while the job ran (its workers are stopped).
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    preflight(cfg, device)
    logs = Path(tempfile.mkdtemp(prefix="xmkd-ddp-"))
    several = cfg.nnodes > 1
    config = LaunchConfig(
        min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.nproc, rdzv_backend="c10d",
        rdzv_endpoint=cfg.endpoint(seed_index) if several else "localhost:0",
        rdzv_configs={"is_host": True, "join_timeout": NODE_WAIT_S} if several else {},
        run_id=f"{run}-seed{seed}" if several else uuid.uuid4().hex, max_restarts=0,
        logs_specs=DefaultLogsSpecs(log_dir=str(logs)),
    )  # fmt: skip
    try:
        with _restored_process_state(threads):
            returned = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        raise TrainingError(
            f"distributed training of run '{run}' seed {seed} ({cfg.nproc} processes x {cfg.nnodes} node(s)) failed "
            f"on {_failure_message(e)}"
        ) from None
    except SignalException as e:
        raise StageTerminated(128 + int(e.sigval)) from e
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    # keyed by global rank; this node's ranks are consecutive, its local rank 0 has the smallest (on several nodes
    # the rendezvous may give this node any group rank, so that is not necessarily 0)
    return returned[min(returned)]
