"""Stages distill@<method>, ablate@<name>, robust@<method>-<rate>, reverse@<method>: train and evaluate one
run for every seed (seeds in parallel worker processes; see src/xmkd/experiment.py).

Usage: python stages/distill.py --run <run name>   (run names: src/xmkd/runs.py)
Outputs: models/students/<run>/seed-<s>.pt, metrics/train/<run>.json (per-seed training history),
metrics/eval/<run>.json (per-seed test metrics), data/predictions/<run>.npz (per-seed test predictions).
MLflow: the stage run, with one child run per seed (its params, per-epoch metrics logged as each epoch ends, test
metrics), tags, datasets, descriptions, system metrics, the first seed's student as a model (src/xmkd/run_tracking.py).
A progress bar over the seeds' epochs on a terminal; one summary line at the end.
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
from xmkd.run_tracking import RunRecord, run_tags  # noqa: E402
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
    with stage_run(f"distill@{rc.name}", params=rc.to_json(), tags=run_tags(rc), system_metrics=True) as tracker, \
            RunRecord(tracker, rc) as record:
        results = run_all(rc, config_path, on_result=record.on_result, on_epoch=record.on_epoch)
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
        record.finish(results, cache)  # MLflow only, after the outputs: means, description, the MLflow model
    print(record.summary(results), flush=True)


if __name__ == "__main__":
    run_main(main)
