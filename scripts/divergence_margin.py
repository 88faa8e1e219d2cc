"""How far normal training stays from the divergence check (``train.divergence_factor``, xmkd.train.LossGuard).

Trains every main method of params.yaml for one seed, in this process, with the default ``train`` section, on the
pipeline's own inputs (``data/configs`` is not needed: the runs are resolved from params.yaml; ``data/features``
and ``data/teacher`` must exist: ``dvc repro embed_teacher``). For every step after the first it records the loss
the guard sees (sum of the absolute values of the terms) over the guard's reference (median of the first
``train.divergence_steps`` steps), and prints, per method, the largest ratio and where it occurred. A ratio
reaching ``divergence_factor`` would have stopped the run. Usage, from the repo root::

    python scripts/divergence_margin.py --seed 0 [--methods kd dkd]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

import xmkd.train as train_module
from xmkd.config import load_params
from xmkd.data.features import FeatureCache
from xmkd.distill import TeacherOutputs, run_distillation
from xmkd.runs import resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=None, help="default: params.yaml's methods")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params()
    runs = resolve(params)
    cache = FeatureCache(Path("data/features"))
    teacher = TeacherOutputs.load(Path("data/teacher"), cache)
    worst: dict[str, Any] = {}
    check = train_module.LossGuard.check

    def probe(self: train_module.LossGuard, values: dict[str, float], epoch: int, step: int) -> None:
        if self.first:
            ratio = sum(abs(v) for v in values.values()) / statistics.median(self.first)
            if ratio > worst["ratio"]:
                worst.update(ratio=ratio, epoch=epoch, step=step)
        check(self, values, epoch, step)

    train_module.LossGuard.check = probe  # type: ignore[method-assign]
    for method in args.methods or params["methods"]:
        worst.update(ratio=0.0, epoch=0, step=0)
        rc = runs[method]
        history = run_distillation(rc, args.seed, cache, teacher)[2]
        print(json.dumps({"method": method, "max_ratio": round(worst["ratio"], 3), "epoch": worst["epoch"],
                          "step": worst["step"], "factor": rc.train.divergence_factor, "epochs": len(history)}),
              flush=True)


if __name__ == "__main__":
    main()
