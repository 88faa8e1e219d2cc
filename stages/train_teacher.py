"""Stage train_teacher: pretrain the audio teacher on FSDD (audio only); stage embed_teacher then uses it frozen.

Training data: FSDD's official training takes (5-49) of data/raw, with ESC-50 background from the
benchmark's train/val background pool mixed in as augmentation; never the benchmark's clips.
Checks after each epoch: FSDD test takes (0-4) clean, and with test-pool ESC-50 background at
``teacher.eval_snr_db``.
Outputs: models/teacher.pt (classes '0'..'9'), metrics/teacher_pretrain.json (FSDD-test top-1).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from xmkd.cli import run_main
from xmkd.config import load_params, parse_section
from xmkd.data.benchmark.config import TARGET_RMS
from xmkd.data.benchmark.raw import esc50_pool, fsdd_pool, load_raw
from xmkd.data.features import config_from_params
from xmkd.teacher import TeacherConfig, make_augment, train_teacher
from xmkd.tracking import stage_run

METRICS = "metrics/teacher_pretrain.json"


def main() -> None:
    params = load_params()
    cfg = parse_section(TeacherConfig, params.get("teacher"), "teacher")
    mel = config_from_params(params).logmel_config()
    torch.set_num_threads(2)
    raw = load_raw("data/raw", mel.sample_rate)
    train_pool, test_pool = fsdd_pool(raw, range(5, 50)), fsdd_pool(raw, range(0, 5))
    train_items = [(name, d) for d in sorted(train_pool) for name in train_pool[d]]
    test_items = [(name, d) for d in sorted(test_pool) for name in test_pool[d]]
    bg_train = [raw.esc50[n] for n in esc50_pool(raw, "trainval")]
    bg_test = [raw.esc50[n] for n in esc50_pool(raw, "test")]
    augment = make_augment([raw.fsdd[n] for n, _ in train_items], bg_train, mel.n_samples, cfg, TARGET_RMS)
    clean = make_augment([raw.fsdd[n] for n, _ in test_items], [], mel.n_samples, cfg, TARGET_RMS)
    noisy = make_augment([raw.fsdd[n] for n, _ in test_items], bg_test, mel.n_samples, cfg, TARGET_RMS)
    test_y = np.array([d for _, d in test_items])
    rng_c, rng_n = np.random.default_rng(1), np.random.default_rng(2)
    eval_sets = {
        "fsdd_test_clean": (np.stack([clean(rng_c, i) for i in range(len(test_items))]), test_y),
        f"fsdd_test_snr{cfg.eval_snr_db:g}dB": (
            np.stack([noisy(rng_n, i, force_snr=cfg.eval_snr_db) for i in range(len(test_items))]),
            test_y,
        ),
    }
    with stage_run("train_teacher", params={"teacher": dataclasses.asdict(cfg), "logmel": dataclasses.asdict(mel)},
                   system_metrics=True) as run:
        t0 = time.perf_counter()
        model, history = train_teacher(
            augment, np.array([d for _, d in train_items]), 10, cfg, mel, eval_sets,
            on_epoch=lambda e, m: run.log_metrics(m, step=e),
        )
        metrics = {k: v for k, v in history[-1].items() if k.endswith("_top1")}
        seconds = time.perf_counter() - t0
        Path("models").mkdir(exist_ok=True)
        torch.save(
            {"state_dict": model.state_dict(), "config": dataclasses.asdict(cfg), "logmel": dataclasses.asdict(mel),
             "classes": [str(d) for d in range(10)]},
            "models/teacher.pt",
        )
        Path("metrics").mkdir(exist_ok=True)
        # the metrics file (a DVC metric, shown by `dvc exp show`) holds the results only; the time goes to MLflow
        Path(METRICS).write_text(json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n")
        run.log_metrics({**metrics, "train_seconds": seconds})
        run.log_artifact(METRICS)
        print("teacher: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())) + f", trained in {seconds:.0f} s")

if __name__ == "__main__":
    run_main(main)
