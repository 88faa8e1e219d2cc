"""Stage embed_video_teacher: the reverse direction's teacher, a trained video student, embeds every clip.

The teacher is the main-table run ``reverse.teacher_run`` (default ``none``: the video student trained
without distillation), seed ``reverse.teacher_seed``, frozen. The reverse-direction runs (``reverse@<method>``)
distil its embedding and logits into an audio student.

Outputs: data/video_teacher/{embeddings.npy (N, d), logits.npy (N, C), ids.txt} in the feature cache's
order; metrics/video_teacher.json: the video teacher's test top-1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from xmkd.cli import run_main
from xmkd.config import load_params, parse_section
from xmkd.data.features import FeatureCache
from xmkd.data.sources import replace_dir
from xmkd.distill import load_checkpoint
from xmkd.experiment import FEATURES, checkpoint_path
from xmkd.runs import ReverseConfig, load_run_config
from xmkd.tracking import stage_run
from xmkd.train import ClipDataset, TrainConfig, make_loader, predict

OUT = Path("data/video_teacher")


def main() -> None:
    rev = parse_section(ReverseConfig, load_params().get("reverse") or {}, "reverse")
    rc = load_run_config(Path(f"data/configs/{rev.teacher_run}.json"))
    student, method, _ = load_checkpoint(checkpoint_path(rev.teacher_run, rev.teacher_seed), rc)
    cache = FeatureCache(FEATURES)
    torch.set_num_threads(os.cpu_count() or 1)
    n, labels = len(cache), cache.targets()
    with stage_run("embed_video_teacher", params={"reverse": rev.__dict__}) as run:
        ds = ClipDataset(cache.frames, labels, np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32), np.arange(n))
        out = predict(student, None, make_loader(ds, TrainConfig(batch_size=256), False, 0, torch.device("cpu")),
                      torch.device("cpu"))
        test = cache.indices("testing")
        metrics = {"test_top1": float((out["logits"][test].argmax(1) == labels[test]).mean())}
        tmp = Path(tempfile.mkdtemp(prefix=".video_teacher.", dir="data"))
        try:
            np.save(tmp / "embeddings.npy", out["features"].astype(np.float32))
            np.save(tmp / "logits.npy", out["logits"].astype(np.float32))
            (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in cache.manifest["id"]))
            replace_dir(tmp, OUT)  # the old outputs go only once the new ones are in place
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        Path("metrics/video_teacher.json").write_text(json.dumps({k: round(v, 6) for k, v in metrics.items()}) + "\n")
        run.log_metrics(metrics)
        print(f"video teacher ({rev.teacher_run}, seed {rev.teacher_seed}): test top-1 {metrics['test_top1']:.4f}")


if __name__ == "__main__":
    run_main(main)
