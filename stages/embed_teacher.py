"""Stage embed_teacher: the frozen audio teacher embeds every clip from that clip's own sound track.

Outputs: data/teacher/{embeddings.npy (N, D), logits.npy (N, C) in the annotation's label order,
ids.txt (the clip id of each row, the feature cache's order)}; metrics/teacher.json: teacher top-1 on
the test clips, overall and per audio condition (clean / background / mismatched).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.data.features import FeatureCache, config_from_params
from xmkd.errors import DataError
from xmkd.teacher import embed, load_teacher
from xmkd.tracking import stage_run

OUT = Path("data/teacher")
PROVENANCE = Path("data/benchmark/provenance.parquet")


def main() -> None:
    mel = config_from_params(load_params()).logmel_config()
    model, classes = load_teacher("models/teacher.pt", mel)
    cache = FeatureCache("data/features")
    missing = [lbl for lbl in cache.labels if lbl not in classes]
    if missing:
        raise DataError(
            f"the audio teacher knows the classes {classes}, but the annotation has labels {missing[:5]}: this "
            "teacher only serves the digit benchmark; other datasets import precomputed teacher embeddings."
        )
    torch.set_num_threads(2)
    with stage_run("embed_teacher", params={"teacher_classes": classes}) as run:
        emb, logits = embed(model, torch.from_numpy(np.array(cache.logmel)), desc="embed_teacher")
        logits = logits[:, [classes.index(lbl) for lbl in cache.labels]]  # -> annotation label order
        test_idx = cache.indices("testing")
        correct = logits[test_idx].argmax(1) == cache.targets()[test_idx]
        metrics = {"test_top1": float(correct.mean())}
        if PROVENANCE.exists():  # per-condition top-1 only where every test clip is a built benchmark clip
            prov = pd.read_parquet(PROVENANCE, columns=["id", "audio_condition"]).set_index("id")
            test_ids = cache.manifest["id"].to_numpy()[test_idx]
            if pd.Index(test_ids).isin(prov.index).all():
                cond = prov.loc[test_ids, "audio_condition"].to_numpy()
                metrics |= {f"test_top1/{c}": float(correct[cond == c].mean()) for c in sorted(set(cond))}
        OUT.mkdir(parents=True, exist_ok=True)
        for name, arr in (("embeddings", emb), ("logits", logits)):
            np.save(OUT / f".{name}.tmp.npy", arr)
            os.replace(OUT / f".{name}.tmp.npy", OUT / f"{name}.npy")
        (OUT / "ids.txt").write_text("".join(f"{i}\n" for i in cache.manifest["id"]))
        Path("metrics/teacher.json").write_text(
            json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n"
        )
        run.log_metrics(metrics)
        run.log_artifact("metrics/teacher.json")
        print("teacher on the clips: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    run_main(main)
