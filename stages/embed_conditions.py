"""Stage embed_conditions: the frozen audio teacher on every clip's three possible sound tracks.

For the robustness study (top-1 as ``benchmark.irrelevant_rate`` varies) without rebuilding the videos:
see :mod:`xmkd.data.conditions`. Renders each clip's ``clean``, ``mismatched`` and ``background`` track
from the raw data with the builder's own plan draws, and embeds them with the teacher.

Outputs: data/teacher_conditions/{<condition>_embeddings.npy (N, D), <condition>_logits.npy (N, C),
ids.txt} in the feature cache's row order; metrics/teacher_conditions.json: teacher test top-1 per
condition, and the agreement with the MP4 path (``embed_teacher``) on each clip's as-built condition.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.data.audio import logmel
from xmkd.data.benchmark import config_from_params as benchmark_config
from xmkd.data.benchmark import load_raw
from xmkd.data.conditions import assign_conditions, render_variants
from xmkd.data.features import FeatureCache, config_from_params
from xmkd.data.sources import replace_dir
from xmkd.teacher import embed, load_teacher
from xmkd.tracking import stage_run

OUT = Path("data/teacher_conditions")
NOT_APPLICABLE = "NOT_APPLICABLE.txt"


def main() -> None:
    params = load_params()
    mel = config_from_params(params).logmel_config()
    bench = benchmark_config(params)
    model, classes = load_teacher("models/teacher.pt", mel)
    cache = FeatureCache("data/features")
    cache_ids = list(cache.manifest["id"])
    torch.set_num_threads(2)
    with stage_run("embed_conditions", params={"benchmark": bench.__dict__}) as run:
        if sorted(assign_conditions(bench, 0.0)) != sorted(cache_ids):
            # another dataset (e.g. UCF51): no sound tracks to swap; robustness runs will say so
            if OUT.exists():
                shutil.rmtree(OUT)
            OUT.mkdir(parents=True)
            (OUT / NOT_APPLICABLE).write_text(
                "The feature cache does not hold the built-in benchmark's clips: the robustness study (per-clip "
                "sound conditions) does not apply. Set robustness.methods: [] for this dataset.\n"
            )
            Path("metrics/teacher_conditions.json").write_text(json.dumps({"applicable": 0}) + "\n")
            print("embed_conditions: not the built-in benchmark, nothing to do")
            return
        raw = load_raw("data/raw", bench.sample_rate)
        ids, waves = render_variants(bench, raw)
        row = {c: i for i, c in enumerate(ids)}
        order = np.array([row[c] for c in cache_ids])
        order_lbl = [classes.index(lbl) for lbl in cache.labels]
        tmp = Path(tempfile.mkdtemp(prefix=".teacher_conditions.", dir="data"))
        y = cache.targets()
        test = cache.indices("testing")
        ref_logits = np.load("data/teacher/logits.npy")
        ref_emb = np.load("data/teacher/embeddings.npy")
        as_built = assign_conditions(bench, bench.irrelevant_rate)
        cond_of_row = np.array([as_built[c] for c in cache_ids])
        metrics: dict[str, float] = {}
        agree, cos = np.zeros(len(cache_ids), bool), np.zeros(len(cache_ids))
        try:
            for cond, w in waves.items():
                mels = logmel(torch.from_numpy(w[order]), mel)
                emb, logits = embed(model, mels, desc=f"embed_conditions: {cond}")
                logits = logits[:, order_lbl]
                np.save(tmp / f"{cond}_embeddings.npy", emb)
                np.save(tmp / f"{cond}_logits.npy", logits)
                metrics[f"test_top1/{cond}"] = float((logits[test].argmax(1) == y[test]).mean())
                sel = cond_of_row == cond
                agree[sel] = logits[sel].argmax(1) == ref_logits[sel].argmax(1)
                num = (emb[sel] * ref_emb[sel]).sum(1)
                den = np.linalg.norm(emb[sel], axis=1) * np.linalg.norm(ref_emb[sel], axis=1) + 1e-12
                cos[sel] = num / den
            metrics["applicable"] = 1.0
            metrics["mp4_agreement/top1"] = float(agree.mean())
            metrics["mp4_agreement/cosine"] = float(cos.mean())
            (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in cache_ids))
            replace_dir(tmp, OUT)  # the old outputs go only once the new ones are in place
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        Path("metrics/teacher_conditions.json").write_text(
            json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n"
        )
        run.log_metrics(metrics)
        print("teacher per rendered condition: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    run_main(main)
