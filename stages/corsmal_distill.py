"""Stages corsmal distill@<method>, ablate@<name>: train and evaluate one CORSMAL run on every container fold and
seed, the (fold, seed) pairs in parallel worker processes (src/xmkd/corsmal_run.py).

Usage: python stages/corsmal_distill.py --run <run name>   (run names: src/xmkd/corsmal_config.py)
Outputs: corsmal/runs/<run>/fold-<k>/{eval/<run>.json (per-seed held-out metrics), train/<run>.json (per-seed
training history, held-out F1 per epoch), <run>.npz (per-seed held-out predictions), seed-<s>.pt}, and
corsmal/metrics/<run>.json (per fold the mean over seeds, and the mean over folds).
MLflow: the stage run, with one child run per fold and seed (its params, per-epoch metrics, held-out metrics).
"""

from __future__ import annotations

import argparse
from typing import Any

from xmkd.corsmal_paths import WORKER_MODULES
from xmkd.workers import start_forkserver

if __name__ == "__main__":
    # The workers' fork server imports torch & co. on the other core while this process imports them below.
    start_forkserver(WORKER_MODULES)

from xmkd.cli import run_main  # noqa: E402
from xmkd.config import flatten  # noqa: E402
from xmkd.corsmal_config import load_run  # noqa: E402
from xmkd.corsmal_paths import CONFIGS, metrics_path  # noqa: E402
from xmkd.corsmal_run import run_all, write_outputs  # noqa: E402
from xmkd.tracking import stage_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="run name, e.g. none, mnf_csc, ablate-no_mnf")
    args = ap.parse_args()
    path = CONFIGS / f"{args.run}.json"
    rc = load_run(path)
    with stage_run(f"corsmal {rc.stage.split(':')[-1]}", params=rc.to_json()) as tracker:

        def log(res: dict[str, Any]) -> None:
            f, s = res["fold"], res["seed"]
            child = tracker.child(f"{rc.name} fold {f} seed {s}", {**rc.to_json(), "fold": f, "seed": s},
                                  start=res["start"])
            for epoch, h in enumerate(res["history"], 1):
                child.log_metrics(h, step=epoch)
            child.log_metrics({**res["metrics"], "train_seconds": res["train_seconds"]})
            child.finish(end=res["end"])
            m = res["metrics"]
            print(f"{rc.name} fold {f} seed {s}: held-out top-1 {m['top1']:.4f}, weighted F1 {m['f1_weighted']:.4f} "
                  f"(best epoch {m['f1_best_epoch']:.4f}), trained in {res['train_seconds']:.0f} s", flush=True)

        summary = write_outputs(rc, run_all(rc, path, on_result=log), metrics_path(rc.name))
        tracker.log_metrics(flatten(summary))
        tracker.log_artifact(str(metrics_path(rc.name)))
        mean = summary["mean"]
        print(f"{rc.name}: mean over folds: top-1 {mean['top1']:.4f}, weighted F1 {mean['f1_weighted']:.4f}")


if __name__ == "__main__":
    run_main(main)
