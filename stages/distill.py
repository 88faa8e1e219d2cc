"""Stages distill@<method>, ablate@<name>, robust@<method>-<rate>, reverse@<method>: train and evaluate one
run for every seed (seeds in parallel worker processes; see src/xmkd/experiment.py).

Usage: python stages/distill.py --run <run name>   (run names: src/xmkd/runs.py)
Outputs: models/students/<run>/seed-<s>.pt, metrics/train/<run>.json (per-seed training history),
metrics/eval/<run>.json (per-seed test metrics), data/predictions/<run>.npz (per-seed test predictions).
MLflow: the stage run, with one child run per seed (its params, per-epoch metrics, test metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from xmkd.workers import SEED_WORKER_MODULES, start_forkserver

if __name__ == "__main__":
    # The seed workers' fork server imports torch & co. on the other core while this process imports them
    # below (see xmkd.workers). Not in the workers, which import this script as __mp_main__.
    start_forkserver(SEED_WORKER_MODULES)

import numpy as np  # noqa: E402

from xmkd.cli import run_main  # noqa: E402
from xmkd.data.features import FeatureCache  # noqa: E402
from xmkd.experiment import FEATURES, clip_conditions, run_all  # noqa: E402
from xmkd.runs import load_run_config  # noqa: E402
from xmkd.tracking import stage_run  # noqa: E402


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="run name, e.g. mnf_csc, ablate-no_mnf, robust-kd-0.6")
    args = ap.parse_args()
    config_path = Path(f"data/configs/{args.run}.json")
    rc = load_run_config(config_path)
    head = {"run": rc.name, "kind": rc.kind, "method": rc.method, "label": rc.label,
            "irrelevant_rate": rc.irrelevant_rate, "modality": rc.modality}
    with stage_run(f"distill@{rc.name}", params=rc.to_json()) as tracker:

        def log_seed(res: dict[str, Any]) -> None:
            child = tracker.child(f"{rc.name} seed {res['seed']}", {**rc.to_json(), "seed": res["seed"]},
                                  start=res["start"])
            for epoch, h in enumerate(res["history"], 1):
                child.log_metrics(h, step=epoch)
            child.log_metrics({**res["metrics"], "train_seconds": res["train_seconds"]})
            child.finish(end=res["end"])
            print(f"{rc.name} seed {res['seed']}: test top-1 {res['metrics']['top1']:.4f}, "
                  f"trained in {res['train_seconds']:.0f} s", flush=True)

        results = run_all(rc, config_path, on_result=log_seed)
        cache = FeatureCache(FEATURES)
        test = cache.indices("testing")
        cond = clip_conditions(rc, cache)
        pred_path = Path(f"data/predictions/{rc.name}.npz")
        pred_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=pred_path.parent, suffix=".npz")
        os.close(fd)
        np.savez_compressed(
            tmp, ids=cache.manifest["id"].to_numpy()[test].astype(str), labels=cache.targets()[test],
            seeds=np.array(rc.seeds), pred=np.stack([r["pred"] for r in results]),
            conditions=(cond[test] if cond is not None else np.array([""] * len(test))).astype(str),
        )
        os.replace(tmp, pred_path)
        _write_json(Path(f"metrics/train/{rc.name}.json"), {
            **head, "seeds": {str(r["seed"]): {"train_seconds": r["train_seconds"],
                                              "history": [{"epoch": i + 1, **h} for i, h in enumerate(r["history"])]}
                              for r in results}})
        _write_json(Path(f"metrics/eval/{rc.name}.json"), {
            **head, "seeds": {str(r["seed"]): {k: round(v, 6) for k, v in sorted(r["metrics"].items())}
                              for r in results}})
        keys = sorted(set().union(*(r["metrics"] for r in results)))
        means = {}
        for k in keys:
            vals = np.array([r["metrics"].get(k, np.nan) for r in results], dtype=float)
            if np.isfinite(vals).any():
                means[f"mean/{k}"] = float(vals[np.isfinite(vals)].mean())
        tracker.log_metrics(means)
        tracker.log_artifact(f"metrics/eval/{rc.name}.json")
        top1 = [r["metrics"]["top1"] for r in results]
        print(f"{rc.name}: test top-1 {np.mean(top1):.4f} ± {np.std(top1, ddof=1) if len(top1) > 1 else 0:.4f} "
              f"over seeds {list(rc.seeds)}")


if __name__ == "__main__":
    run_main(main)
