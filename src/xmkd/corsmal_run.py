"""The CORSMAL comparison's engine: one run (a method or an ablation) trained on every container fold and seed.

Per fold k (:data:`xmkd.data.corsmal.FOLDS`), the labels and subsets come from the fold's annotation (stage
``layout@k``), the frozen teacher outputs from the VGGish GRU teacher trained on the fold's training containers
(stage ``teacher@k``). The student (:mod:`xmkd.models.sequence`; one random camera per sample and step, the mean
of the 4 cameras' logits and features at evaluation) trains with the loop every method goes through
(:func:`xmkd.train.train`) and the method's own params sections. The (fold, seed) pairs of a run train in
parallel worker processes (:mod:`xmkd.workers`: forked from a fork server, watched, terminated on failure).

Reported on the held-out containers, at the last epoch: top-1, mean class accuracy, weighted F1 (scikit-learn).
``f1_best_epoch`` is the best weighted F1 over the epochs on those same held-out containers: optimistic (selected
on the evaluation data), kept only to compare with the published figures, which are selected so.

Calibration of the student recipe (``none`` and the teacher only, docs/corsmal.md "Calibration")::

    python -m xmkd.corsmal_run calibrate --split inner --set train.lr=0.002 train.epochs=40 [--methods none]

``--split inner`` never touches a fold's held-out containers: it trains on the containers of one other fold
and validates on those of the third (:func:`xmkd.data.corsmal.inner_split`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from xmkd.corsmal_config import CorsmalRun, corsmal_config, load_run, resolve_runs
from xmkd.corsmal_paths import WORKER_MODULES, fold_dir, run_fold_dir
from xmkd.data import corsmal
from xmkd.data.sequences import SequenceClips, pack_sequences, pad_collate
from xmkd.distill import few_labels, save_checkpoint
from xmkd.errors import DataError
from xmkd.methods import Dims, build_method
from xmkd.models.sequence import build_sequence_student
from xmkd.sequence_teacher import classification_summary, embed_all, train_teacher
from xmkd.train import TrainConfig, predict, seed_everything, train
from xmkd.workers import forkserver_context, seed_worker_init, terminate_workers

METRICS = ("top1", "mean_class_acc", "f1_weighted", "f1_best_epoch")


_VIDEO: dict[str, tuple[list[str], list[list[np.ndarray]]]] = {}


def video_sequences(root: str) -> tuple[list[str], list[list[np.ndarray]]]:
    """(clip ids, the 4 cameras' (T, 512) sequences of every recording), read once per process and root.

    Raises:
        DataError: the folder or a file is missing or bad (the message names it).
    """
    if root not in _VIDEO:
        recs = corsmal.scan(root)
        _VIDEO[root] = ([r.id for r in recs], corsmal.load_views(recs, "video"))
    return _VIDEO[root]


def load_teacher_outputs(fold: int, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The fold's frozen teacher outputs (embeddings (N, D_t), logits (N, C)) in the order of ``ids``.

    Raises:
        DataError: missing, or written for other recordings (names the stage to run).
    """
    d = fold_dir(fold) / "teacher"
    stage = f"dvc repro corsmal/dvc.yaml:teacher@{fold}"
    if not (d / "ids.txt").exists():
        raise DataError(f"{d} holds no teacher outputs: run `{stage}`.")
    if (d / "ids.txt").read_text().split() != list(ids):
        raise DataError(f"{d} was written for other recordings than {len(ids)} found under the features folder: "
                        f"run `{stage}`.")
    return np.load(d / "embeddings.npy"), np.load(d / "logits.npy")


def _heldout_loader(ds: SequenceClips, batch_size: int) -> tuple[torch.utils.data.DataLoader, np.ndarray]:
    """Evaluation batches of clips of similar length (cheap padding) and the order that restores the subset's."""
    order = np.argsort(ds.lengths(), kind="stable")
    sub = torch.utils.data.Subset(ds, order.tolist())
    return torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, collate_fn=pad_collate), order


def fit_and_evaluate(run: CorsmalRun, seqs: list[list[np.ndarray]], labels: np.ndarray, teacher: tuple[np.ndarray, np.ndarray],
                     train_idx: np.ndarray, test_idx: np.ndarray, seed: int, num_classes: int = len(corsmal.LABELS),
                     ) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """Train ``run``'s student and method with ``seed`` on ``train_idx``, evaluate every epoch on ``test_idx``.

    Args:
        seqs: every recording's 4 camera sequences (T, 512). labels: (N,) int64. teacher: (embeddings (N, D_t),
            logits (N, C)) of the fold's frozen teacher. train_idx, test_idx: rows of the two subsets.

    Returns:
        (student, method, result): result = {"metrics": last-epoch top1, mean_class_acc, f1_weighted, plus
        f1_best_epoch (optimistic) and best_epoch; "history": per-epoch training metrics + ``heldout_top1`` /
        ``heldout_f1``; "pred": (n_test,) int64 last-epoch predictions in ``test_idx`` order;
        "train_seconds"}.

    Raises:
        TrainingError: a non-finite loss.
    """
    seed_everything(seed)
    emb, logits = teacher
    tc: TrainConfig = run.train
    student = build_sequence_student(run.student, num_classes)
    method = build_method(run.method, Dims(run.student.embed_dim, emb.shape[1], num_classes, len(train_idx)),
                          run.sections)
    seen = few_labels(labels, train_idx, tc.label_fraction, tc.label_seed)
    g = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(SequenceClips(seqs, seen, emb, logits, train_idx), batch_size=tc.batch_size,
                                               shuffle=True, generator=g, collate_fn=pad_collate)
    test_loader, order = _heldout_loader(SequenceClips(seqs, labels, emb, logits, test_idx), run.eval_batch_size)
    device = torch.device("cpu")
    curve: list[dict[str, float]] = []

    def heldout() -> tuple[np.ndarray, dict[str, float]]:
        out = predict(student, None, test_loader, device, False)
        pred = np.empty(len(order), np.int64)
        pred[order] = out["logits"].argmax(1)
        return pred, classification_summary(pred, labels[test_idx], num_classes)

    def on_epoch(epoch: int, _: dict[str, float]) -> None:
        s = heldout()[1]
        curve.append({"heldout_top1": s["top1"], "heldout_f1": s["f1_weighted"]})

    t0 = time.perf_counter()
    history = train(student, method, train_loader, None, dataclasses.replace(tc, device="cpu", amp=False), device,
                    on_epoch)
    seconds = time.perf_counter() - t0
    pred, metrics = heldout()
    f1s = [c["heldout_f1"] for c in curve]
    metrics |= {"f1_best_epoch": max(f1s), "best_epoch": float(int(np.argmax(f1s)) + 1)}
    history = [h | c for h, c in zip(history, curve, strict=True)]
    return student, method, {"metrics": metrics, "history": history, "pred": pred, "train_seconds": seconds}


def train_fold_seed(config_path: str, fold: int, seed: int, threads: int) -> dict[str, Any]:
    """One (fold, seed) of a run, in a worker process: train, evaluate, save the checkpoint.

    Returns:
        {"fold", "seed", "metrics", "history", "pred", "ids" (held-out clip ids), "labels", "train_seconds",
        "start"/"end" (unix s)}.

    Raises:
        DataError, ConfigError: missing or mismatched inputs (names the stage to run). TrainingError.
    """
    start = time.time()
    torch.set_num_threads(threads)
    run = load_run(Path(config_path))
    ids, seqs = video_sequences(run.root)
    split = corsmal.read_fold(fold_dir(fold) / "annotation.json", ids)
    teacher = load_teacher_outputs(fold, ids)
    tr, te = split.indices("training"), split.indices("testing")
    student, method, res = fit_and_evaluate(run, seqs, split.labels, teacher, tr, te, seed, len(split.label_names))
    meta = {"run": run.name, "method": run.method, "fold": fold, "seed": seed, "config": run.to_json()}
    save_checkpoint(run_fold_dir(run.name, fold) / f"seed-{seed}.pt", student, method, meta)
    return res | {"fold": fold, "seed": seed, "ids": [ids[i] for i in te], "labels": split.labels[te],
                  "start": start, "end": time.time()}


def workers_and_threads(train_cfg: TrainConfig, tasks: int) -> tuple[int, int]:
    """(worker processes, torch threads each): ``seed_workers`` 0 = min(tasks, cores + 1), one thread each (a
    third 1-thread process on 2 cores fills the other two's idle time, as for the main table's seeds)."""
    cpus = os.cpu_count() or 1
    workers = min(train_cfg.seed_workers or cpus + 1, tasks)
    return workers, train_cfg.num_threads or max(1, cpus // workers)


def run_all(run: CorsmalRun, config_path: Path, on_result: Callable[[dict[str, Any]], None] | None = None
            ) -> list[dict[str, Any]]:
    """Every (fold, seed) of ``run`` (:func:`train_fold_seed`), in worker processes; results in (fold, seed) order.

    Raises:
        the first error of any task (the other workers are terminated, not waited for).
    """
    tasks = [(f, s) for f in run.folds for s in run.seeds]
    workers, threads = workers_and_threads(run.train, len(tasks))
    results: dict[tuple[int, int], dict[str, Any]] = {}
    if workers == 1:
        for f, s in tasks:
            results[(f, s)] = train_fold_seed(str(config_path), f, s, threads)
            if on_result:
                on_result(results[(f, s)])
        return [results[t] for t in tasks]
    with ProcessPoolExecutor(max_workers=workers, mp_context=forkserver_context(WORKER_MODULES),
                             initializer=seed_worker_init, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(train_fold_seed, str(config_path), f, s, threads) for f, s in tasks]
        try:
            for fut in as_completed(futures):
                res = fut.result()
                results[(res["fold"], res["seed"])] = res
                if on_result:
                    on_result(res)
        except BaseException:
            terminate_workers(pool)
            raise
    return [results[t] for t in tasks]


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_outputs(run: CorsmalRun, results: list[dict[str, Any]], metrics_path: Path) -> dict[str, Any]:
    """Per fold, the main table's file formats (:mod:`xmkd.report.load`): ``eval/<run>.json`` (seed -> metrics),
    ``train/<run>.json`` (seed -> history), ``<run>.npz`` (ids, labels, seeds, pred (S, N)); and ``metrics_path``:
    per fold the mean over seeds, and the mean over folds (returned)."""
    head = {"run": run.name, "kind": run.kind, "method": run.method, "label": run.label, "modality": "video"}
    summary: dict[str, Any] = {}
    for f in run.folds:
        rs = [r for r in results if r["fold"] == f]
        d = run_fold_dir(run.name, f)
        _dump(d / "eval" / f"{run.name}.json", {**head, "fold": f, "seeds": {
            str(r["seed"]): {k: round(float(v), 6) for k, v in sorted(r["metrics"].items())} for r in rs}})
        _dump(d / "train" / f"{run.name}.json", {**head, "fold": f, "seeds": {
            str(r["seed"]): {"train_seconds": r["train_seconds"],
                             "history": [{"epoch": i + 1, **h} for i, h in enumerate(r["history"])]} for r in rs}})
        np.savez_compressed(d / f"{run.name}.npz", ids=np.array(rs[0]["ids"]), labels=rs[0]["labels"],
                            seeds=np.array([r["seed"] for r in rs]), pred=np.stack([r["pred"] for r in rs]))
        summary[f"fold{f}"] = {k: round(float(np.mean([r["metrics"][k] for r in rs])), 6) for k in METRICS}
    summary["mean"] = {k: round(float(np.mean([summary[f"fold{f}"][k] for f in run.folds])), 6) for k in METRICS}
    _dump(metrics_path, summary)
    return summary


# --- calibration (docs/corsmal.md): the recipe is fixed on `none` and the teacher, before any comparison ---

def _set(params: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``section.key=value`` (YAML value) assignments into ``params["corsmal"]``."""
    out = json.loads(json.dumps(params))
    for a in assignments:
        key, _, value = a.partition("=")
        *path, last = key.split(".")
        node = out["corsmal"]
        for p in path:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return out


def calibrate(params: dict[str, Any], methods: list[str], split: str, folds: list[int], seeds: list[int],
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``methods`` x ``folds`` x ``seeds`` in this process with the teacher trained in memory on the same
    training containers; ``split`` ``inner`` (:func:`~xmkd.data.corsmal.inner_split`) or ``test`` (the held-out
    containers). Returns {method: {fold: {seed: metrics + train_top1}}}."""
    torch.set_num_threads(1)
    runs = resolve_runs({**params, "methods": list(dict.fromkeys(["none", *methods]))})
    recs = corsmal.scan(runs[methods[0]].root)
    seqs, audio = corsmal.load_views(recs, "video"), pack_sequences(corsmal.load_views(recs, "audio"))[:, 0]
    containers = np.array([r.container for r in recs])
    labels = np.array([r.fields["type"] for r in recs], np.int64)
    out: dict[str, Any] = {}
    for f in folds:
        tr_c, te_c = corsmal.inner_split(f) if split == "inner" else (
            tuple(c for c in corsmal.CONTAINERS if c not in corsmal.FOLDS[f]), corsmal.FOLDS[f])
        tr, te = np.flatnonzero(np.isin(containers, tr_c)), np.flatnonzero(np.isin(containers, te_c))
        model, _ = train_teacher(audio, labels, tr, corsmal_config(params).teacher)
        teacher = embed_all(model, audio)
        t_f1 = classification_summary(teacher[1][te].argmax(1), labels[te], 4)["f1_weighted"]
        for m in methods:
            for s in seeds:
                _, _, res = fit_and_evaluate(runs[m], seqs, labels, teacher, tr, te, s)
                res["metrics"]["train_top1"] = res["history"][-1]["train_top1"]
                out.setdefault(m, {}).setdefault(f, {})[s] = res["metrics"]
            log(f"fold {f} ({split}: train {tr_c}, evaluate {te_c}; teacher F1 {t_f1:.3f}) {m}: " + ", ".join(
                f"{k} {np.mean([out[m][f][s][k] for s in seeds]):.3f}" for k in (*METRICS, "train_top1")))
    for m in methods:
        log(f"{m} mean over folds: " + ", ".join(
            f"{k} {np.mean([out[m][f][s][k] for f in folds for s in seeds]):.3f}" for k in (*METRICS, "train_top1")))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m xmkd.corsmal_run calibrate``: see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.corsmal_run")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", help="train methods (default: none) on every fold in this process, print F1")
    c.add_argument("--methods", nargs="+", default=["none"])
    c.add_argument("--split", choices=["inner", "test"], default="inner",
                   help="inner (default): never the held-out containers; test: the held-out containers")
    c.add_argument("--folds", nargs="+", type=int, default=list(corsmal.FOLDS))
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    c.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the corsmal section, e.g. train.lr=0.002 student.dropout=0.5")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--out", help="append the result (params + per-fold metrics) to this JSON-lines file")
    args = ap.parse_args(argv)

    def body() -> None:
        params = _set(yaml.safe_load(Path(args.params).read_text()), args.set)
        res = calibrate(params, args.methods, args.split, args.folds, args.seeds)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"set": args.set, "split": args.split, "corsmal": params["corsmal"],
                                     "results": res}) + "\n")

    from xmkd.cli import run_main

    run_main(body)


if __name__ == "__main__":
    main()
