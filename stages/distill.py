"""Stage distill@<method>-<seed>: train one video student with one distillation method and seed.

Usage: python stages/distill.py --method mnf_csc --seed 0
Outputs: models/students/<method>-<seed>.pt, metrics/train/<method>-<seed>.json (per-epoch history).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from xmkd.cli import run_main
from xmkd.data.features import FeatureCache
from xmkd.distill import TeacherOutputs, run_distillation, save_checkpoint
from xmkd.runs import load_run_config
from xmkd.tracking import stage_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True)
    ap.add_argument("--seed", type=int, required=True)
    args = ap.parse_args()
    run = f"{args.method}-{args.seed}"
    rc = load_run_config(Path(f"data/configs/{args.method}.json"))
    cache = FeatureCache("data/features")
    teacher = TeacherOutputs.load(Path("data/teacher"), cache)
    with stage_run(f"distill@{run}", params={**rc.to_json(), "seed": args.seed}) as tracker:
        t0 = time.perf_counter()
        student, method, history = run_distillation(
            rc, args.seed, cache, teacher, on_epoch=lambda e, m: tracker.log_metrics(m, step=e)
        )
        meta = {"method": rc.method, "seed": args.seed, "num_classes": cache.num_classes,
                "teacher_dim": int(teacher.embedding.shape[1]), "config": rc.to_json(),
                "num_train": len(cache.indices("training"))}
        ckpt = Path(f"models/students/{run}.pt")
        save_checkpoint(ckpt, student, method, meta)
        out = Path(f"metrics/train/{run}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"method": rc.method, "seed": args.seed, "train_seconds": time.perf_counter() - t0,
                   "history": [{"epoch": i + 1, **h} for i, h in enumerate(history)]}
        out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        tracker.log_metrics({"train_seconds": summary["train_seconds"], "final_val_top1": history[-1].get("val_top1", float("nan"))})
        tracker.log_artifact(out)
        tracker.log_artifact(ckpt)
        print(f"{run}: val top-1 {history[-1].get('val_top1', float('nan')):.4f} in {summary['train_seconds']:.0f} s")


if __name__ == "__main__":
    run_main(main)
