"""Stage evaluate@<method>-<seed>: test-set metrics of one trained student.

Classification (top-1, top-5, mean per-class accuracy) on the ``testing`` clips; retrieval with the
reference protocol (test clips query the training clips by cosine on the student embedding: R@1,
R@5, R@10, mAP@500); for methods with an MNF gate, its mean per audio condition and the AUROC with
which it separates clean from irrelevant sound.
Usage: python stages/evaluate.py --method mnf_csc --seed 0  ->  metrics/eval/<method>-<seed>.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xmkd.cli import run_main
from xmkd.config import load_params, parse_section
from xmkd.data.features import FeatureCache
from xmkd.distill import TeacherOutputs, load_checkpoint
from xmkd.evaluate import classification_metrics, gate_metrics, retrieval_metrics
from xmkd.runs import EvaluateConfig, load_run_config
from xmkd.tracking import stage_run
from xmkd.train import ClipDataset, make_loader, predict, resolve_device

PROVENANCE = Path("data/benchmark/provenance.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True)
    ap.add_argument("--seed", type=int, required=True)
    args = ap.parse_args()
    run = f"{args.method}-{args.seed}"
    cfg = parse_section(EvaluateConfig, load_params().get("evaluate"), "evaluate")
    rc = load_run_config(Path(f"data/configs/{args.method}.json"))
    torch.set_num_threads(rc.train.num_threads)
    cache = FeatureCache("data/features")
    teacher = TeacherOutputs.load(Path("data/teacher"), cache)
    student, method, meta = load_checkpoint(Path(f"models/students/{run}.pt"), rc)
    device = resolve_device(rc.train.device)
    student.to(device)
    method.to(device)
    labels = cache.targets()
    loader_cfg = dataclasses.replace(rc.train, batch_size=cfg.batch_size)

    def infer(subset: str) -> dict[str, np.ndarray]:
        ds = ClipDataset(cache.frames, labels, teacher.embedding, teacher.logits, cache.indices(subset))
        return predict(student, method, make_loader(ds, loader_cfg, False, 0, device), device, rc.train.amp)

    with stage_run(f"evaluate@{run}", params={"evaluate": cfg.__dict__, "method": args.method, "seed": args.seed}) as tracker:
        test, gallery = infer("testing"), infer("training")
        metrics = classification_metrics(test["logits"], test["labels"], cache.num_classes)
        metrics |= retrieval_metrics(test["features"], test["labels"], gallery["features"], gallery["labels"], map_topk=cfg.map_topk)
        if PROVENANCE.exists():
            ids = cache.manifest["id"].to_numpy()[cache.indices("testing")]
            prov = pd.read_parquet(PROVENANCE, columns=["id", "audio_condition"]).set_index("id")
            cond = prov.loc[ids, "audio_condition"].to_numpy()
            correct = test["logits"].argmax(1) == test["labels"]
            metrics |= {f"top1/{c}": float(correct[cond == c].mean()) for c in sorted(set(cond))}
            if "gate_mean" in test:
                metrics |= gate_metrics(test["gate_mean"], cond)
        out = Path(f"metrics/eval/{run}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n")
        tracker.log_metrics(metrics)
        tracker.log_artifact(out)
        print(f"{run}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k))


if __name__ == "__main__":
    run_main(main)
