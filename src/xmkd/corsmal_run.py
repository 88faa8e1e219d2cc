"""The CORSMAL filling-type comparison: every method x 3 container folds x seeds, and its fold-mean table.

Per fold k (:data:`xmkd.data.corsmal.FOLDS`): the VGGish GRU teacher is trained on the fold's training
containers (:mod:`xmkd.sequence_teacher`) and frozen; every method then trains the feature-sequence student
(``student.arch: sequence_conv``, :mod:`xmkd.models.sequence`; one random camera per sample and step, the mean of
the 4 cameras' logits and features at evaluation) with the same loop as the benchmark (:func:`xmkd.train.train`)
and the method's params sections from params.yaml. Reported, at the last epoch, on the held-out containers:
top-1, mean class accuracy, weighted F1 (scikit-learn). ``f1_best_epoch`` is the best weighted F1 over the epochs
on those same held-out containers: optimistic, only for comparison with the published figures, which select so.

Summary cells: per seed, the mean over the 3 folds; then mean and 95% t interval over seeds (:func:`xmkd.stats.describe`);
differences with ``none`` paired over seeds (:func:`xmkd.stats.paired_difference`).

    python -m xmkd.corsmal_run --methods none kd ... --seeds 0 1 2 --out metrics/corsmal
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from xmkd.data import corsmal
from xmkd.methods import Dims, build_method, method_config
from xmkd.models.student import StudentConfig, build_student
from xmkd.sequence_teacher import SequenceTeacherConfig, classification_summary, fold_teacher
from xmkd.stats import describe, paired_difference
from xmkd.train import ClipDataset, TrainConfig, make_loader, predict, seed_everything, train

PUBLISHED = {"audio (VGGish + GRU)": 0.913, "video (R(2+1)D, 4 cameras, GRU)": 0.673}
DEFAULT_TRAIN = TrainConfig(epochs=20, batch_size=32, lr=1e-3, weight_decay=1e-4, device="cpu", amp=False)


def run_one(arrays: corsmal.CorsmalArrays, fold: int, teacher: tuple[np.ndarray, np.ndarray], method: str,
            seed: int, params: dict[str, Any], tc: TrainConfig, width: int = 8) -> dict[str, float]:
    """Train and evaluate one method x fold x seed; returns the metrics (fractions) and ``train_seconds``."""
    seed_everything(seed)
    device = torch.device("cpu")
    emb, logits = teacher
    tr, te = arrays.subset_indices(fold, "training"), arrays.subset_indices(fold, "testing")
    cfg = StudentConfig(arch="sequence_conv", width=width)  # 512-d R(2+1)D input
    student = build_student(cfg, len(corsmal.LABELS))
    m = build_method(method, Dims(cfg.embed_dim, emb.shape[1], len(corsmal.LABELS), len(tr)),
                     method_config(method, params))
    train_loader = make_loader(ClipDataset(arrays.video, arrays.labels, emb, logits, tr), tc, True, seed, device)
    test_loader = make_loader(ClipDataset(arrays.video, arrays.labels, emb, logits, te), tc, False, seed, device)
    f1s: list[float] = []

    def on_epoch(epoch: int, _: dict[str, float]) -> None:
        p = predict(student, None, test_loader, device, False)
        f1s.append(classification_summary(p["logits"].argmax(1), p["labels"], 4)["f1_weighted"])

    t0 = time.perf_counter()
    train(student, m, train_loader, None, tc, device, on_epoch)
    out = predict(student, None, test_loader, device, False)
    res = classification_summary(out["logits"].argmax(1), out["labels"], 4)
    return res | {"f1_best_epoch": max(f1s), "train_seconds": time.perf_counter() - t0}


def summarise(results: dict[str, dict[int, dict[int, dict[str, float]]]], seeds: list[int]) -> dict[str, Any]:
    """{method: {metric: Estimate over seeds of the fold mean}, ``paired``: {method: diff with none (top1, f1)}}."""
    keys = ("top1", "mean_class_acc", "f1_weighted", "f1_best_epoch")
    fold_mean = {m: {k: [float(np.mean([r[f][s][k] for f in r])) for s in seeds] for k in keys} for m, r in results.items()}
    out: dict[str, Any] = {m: {k: dataclasses.asdict(describe(v)) for k, v in fm.items()} for m, fm in fold_mean.items()}
    if "none" in fold_mean:
        out["paired"] = {m: {k: dataclasses.asdict(paired_difference(dict(zip(seeds, fm[k])), dict(zip(seeds, fold_mean["none"][k]))))
                             for k in ("top1", "f1_weighted")} for m, fm in fold_mean.items() if m != "none"}
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.corsmal_run")
    ap.add_argument("--methods", nargs="+", default=["none", "kd"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=DEFAULT_TRAIN.epochs)
    ap.add_argument("--root", default=None)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="metrics/corsmal")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = yaml.safe_load(Path(args.params).read_text())
    tc = TrainConfig(**{**DEFAULT_TRAIN.__dict__, "epochs": args.epochs})
    arrays = corsmal.load_arrays(corsmal.scan(args.root))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teachers, teacher_metrics = {}, {}
    for f in args.folds:
        emb, logits, tm = fold_teacher(arrays, f, SequenceTeacherConfig())
        teachers[f], teacher_metrics[f"fold{f}"] = (emb, logits), tm
    teacher_metrics["mean_test_f1_weighted"] = float(np.mean([teacher_metrics[f"fold{f}"]["test_f1_weighted"] for f in args.folds]))
    teacher_metrics["mean_test_top1"] = float(np.mean([teacher_metrics[f"fold{f}"]["test_top1"] for f in args.folds]))
    (out / "teacher.json").write_text(json.dumps(teacher_metrics, indent=1) + "\n")
    results: dict[str, dict[int, dict[int, dict[str, float]]]] = {}
    for m in args.methods:
        t0 = time.time()
        results[m] = {f: {s: run_one(arrays, f, teachers[f], m, s, params, tc) for s in args.seeds} for f in args.folds}
        print(f"{m}: {time.time() - t0:.0f} s, last-epoch F1 per fold "
              + ", ".join(f"{np.mean([results[m][f][s]['f1_weighted'] for s in args.seeds]):.3f}" for f in args.folds),
              flush=True)
    (out / "runs.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summarise(results, args.seeds), indent=1, default=float) + "\n")




def _cell(e: dict[str, float]) -> str:
    if not np.isfinite(e["mean"]):
        return "–"
    if not np.isfinite(e.get("ci_low", np.nan)):
        return f"{100 * e['mean']:.1f}"
    return f"{100 * e['mean']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def markdown_table(summary: dict[str, Any], teacher: dict[str, Any]) -> str:
    """The CORSMAL table (fold means; cells mean [95% t interval over seeds], %), the published figures beside
    the teacher and ``none``, and the premise check (each distiller's F1 and top-1 minus ``none``'s, paired)."""
    rows = ["| method | top-1 | mean class acc. | weighted F1 | F1 at best epoch (optimistic) |", "|---|---|---|---|---|"]
    for m, s in summary.items():
        if m != "paired":
            rows.append(f"| {m} | {_cell(s['top1'])} | {_cell(s['mean_class_acc'])} | {_cell(s['f1_weighted'])} | "
                        f"{_cell(s['f1_best_epoch'])} |")
    lines = ["## CORSMAL filling type (3 container folds, mean over folds; seeds: interval)", "", *rows, "",
             "| weighted F1 | ours (last epoch) | published (best epoch, selected on the held-out containers) |",
             "|---|---|---|",
             f"| audio teacher, VGGish + GRU | {100 * teacher['mean_test_f1_weighted']:.1f} | {100 * PUBLISHED['audio (VGGish + GRU)']:.1f} |"]
    if "none" in summary:
        lines.append(f"| video, `none` | {_cell(summary['none']['f1_weighted'])} (best epoch "
                     f"{_cell(summary['none']['f1_best_epoch'])}) | {100 * PUBLISHED['video (R(2+1)D, 4 cameras, GRU)']:.1f} |")
    lines += ["", "Premise check (method − none, paired over seeds, points):", ""]
    for m, d in summary.get("paired", {}).items():
        f, t = d["f1_weighted"]["seed_estimate"], d["top1"]["seed_estimate"]
        lines.append(f"- {m}: F1 {100 * f['mean']:+.1f} [{100 * f['ci_low']:+.1f}, {100 * f['ci_high']:+.1f}], "
                     f"top-1 {100 * t['mean']:+.1f} [{100 * t['ci_low']:+.1f}, {100 * t['ci_high']:+.1f}]")
    return "\n".join(lines) + "\n"


def report_main(argv: list[str] | None = None) -> None:
    """``python -m xmkd.corsmal_run report DIR [DIR ...] --out FILE``: one table from the outputs of several runs
    of :func:`main` over the same folds and seeds (e.g. the methods split over two processes)."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.corsmal_run report")
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    for d in args.dirs:
        for m, r in json.loads((Path(d) / "runs.json").read_text()).items():
            results[m] = {int(f): {int(s): v for s, v in fr.items()} for f, fr in r.items()}
    teacher = json.loads((Path(args.dirs[0]) / "teacher.json").read_text())
    summary = summarise(results, args.seeds)
    Path(args.out).write_text(markdown_table(summary, teacher))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["report"]:
        report_main(sys.argv[2:])
    else:
        main()
