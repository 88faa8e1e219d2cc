"""Stage corsmal teacher@<fold>: the VGGish GRU teacher, trained on the fold's training containers only, frozen,
embeds every recording (src/xmkd/sequence_teacher.py).

Outputs: corsmal/folds/fold-<k>/teacher/{embeddings.npy (N, hidden), logits.npy (N, 4), ids.txt} (the same
files as the main pipeline's data/teacher) and corsmal/folds/fold-<k>/teacher.json (top-1, mean class accuracy,
weighted F1 on the training and held-out containers; last epoch, no selection).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import torch

from xmkd.cli import run_main
from xmkd.config import load_params, parse_section
from xmkd.corsmal_paths import corsmal_section, fold_dir
from xmkd.data.corsmal import FOLDS, load_views, read_fold, scan
from xmkd.data.sequences import pack_sequences
from xmkd.sequence_teacher import SequenceTeacherConfig, fold_teacher
from xmkd.tracking import stage_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fold", type=int, required=True, choices=sorted(FOLDS))
    args = ap.parse_args()
    params = load_params()
    root = str(corsmal_section(params, "root"))
    cfg = parse_section(SequenceTeacherConfig, corsmal_section(params, "teacher"), "corsmal.teacher")
    torch.set_num_threads(1)
    recs = scan(root)
    ids = [r.id for r in recs]
    split = read_fold(fold_dir(args.fold) / "annotation.json", ids)
    audio = pack_sequences(load_views(recs, "audio"))[:, 0]  # (N, T, 129)
    with stage_run(f"corsmal teacher@{args.fold}", params={"teacher": dataclasses.asdict(cfg),
                                                          "fold": args.fold}) as run:
        emb, logits, metrics, losses = fold_teacher(audio, split.labels, split.indices("training"),
                                                    split.indices("testing"), cfg, len(split.label_names))
        out = fold_dir(args.fold) / "teacher"
        out.mkdir(parents=True, exist_ok=True)
        for name, arr in (("embeddings", emb), ("logits", logits)):
            np.save(out / f".{name}.tmp.npy", arr)
            os.replace(out / f".{name}.tmp.npy", out / f"{name}.npy")
        (out / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
        path = fold_dir(args.fold) / "teacher.json"
        path.write_text(json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n")
        for epoch, loss in enumerate(losses, 1):
            run.log_metrics({"loss": loss}, step=epoch)
        run.log_metrics(metrics)
        print(f"fold {args.fold}: teacher on the held-out containers: top-1 {metrics['test_top1']:.4f}, "
              f"weighted F1 {metrics['test_f1_weighted']:.4f}")


if __name__ == "__main__":
    run_main(main)
