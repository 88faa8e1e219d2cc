"""Command line of the DDP processes torchrun starts, and of the machines that join a multi-node run.

``python -m xmkd.node rank --config data/configs/<run>.json --seed S --threads T``
    one DDP process (what ``torchrun ... -m xmkd.node rank ...`` runs on a node other than node 0;
    :func:`xmkd.experiment.run_rank`; node 0's processes are started by the stage itself, :mod:`xmkd.launch`).

``python -m xmkd.node join --run <run> [--print]``
    this machine's share of a multi-node run (``distributed.nnodes > 1``): for every seed of the run, in order,
    the plain ``torchrun`` command of :func:`xmkd.launch.torchrun_command` (c10d rendezvous at
    ``distributed.rdzv_endpoint``, port + seed index). ``--print`` prints the commands instead of running them.
    Run it from the repo root, with the run's inputs in place (``data/configs/<run>.json``, features, teacher).
"""

from __future__ import annotations

import os

PARENT = os.getppid()  # torchrun's agent, read before the slow imports below (it may die meanwhile)

import argparse  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

from xmkd.errors import ConfigError, TrainingError  # noqa: E402
from xmkd.experiment import run_rank  # noqa: E402
from xmkd.launch import threads_per_process, torchrun_command  # noqa: E402
from xmkd.runs import load_run_config  # noqa: E402


def join_commands(run: str) -> list[list[str]]:
    """The ``torchrun`` command line of every seed of ``run`` (``data/configs/<run>.json``), in seed order.

    Raises:
        ConfigError: the run is not multi-node (``distributed.nnodes`` < 2).
    """
    config_path = Path(f"data/configs/{run}.json")
    rc = load_run_config(config_path)
    if rc.distributed.nnodes < 2:
        raise ConfigError(
            f"run '{run}' has distributed.nnodes = {rc.distributed.nnodes}: nothing to join (node 0, the machine that "
            "runs the stage, trains it alone); set distributed.nnodes and distributed.rdzv_endpoint in params.yaml first."
        )
    threads = threads_per_process(rc.distributed, rc.train.num_threads)
    return [torchrun_command(rc.distributed, config_path, rc.name, s, i, threads) for i, s in enumerate(rc.seeds)]


def join(run: str, dry_run: bool = False) -> None:
    """Run (or with ``dry_run`` print) :func:`join_commands` one after another.

    Raises:
        TrainingError: a seed's torchrun exited with an error.
    """
    for cmd in join_commands(run):
        print(shlex.join(cmd), flush=True)
        if not dry_run and (code := subprocess.call(cmd)) != 0:
            raise TrainingError(f"run '{run}': `{shlex.join(cmd)}` failed (exit status {code}); see its output above.")


def main(argv: list[str] | None = None) -> None:
    """``python -m xmkd.node rank ...`` or ``python -m xmkd.node join --run <run>`` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.node", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rank", help="one DDP process (started by torchrun)")
    r.add_argument("--config", required=True)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--threads", type=int, default=1)
    j = sub.add_parser("join", help="this machine's share of a multi-node run, from the repo root")
    j.add_argument("--run", required=True)
    j.add_argument("--print", action="store_true", help="print the torchrun commands instead of running them")
    args = ap.parse_args(argv)
    if args.cmd == "rank":
        run_rank(args.config, args.seed, args.threads, parent_pid=PARENT)
    else:
        join(args.run, dry_run=args.print)


if __name__ == "__main__":
    from xmkd.cli import run_main

    run_main(main)
