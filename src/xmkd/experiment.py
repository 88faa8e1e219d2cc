"""One run = one distillation setting trained and evaluated for every seed, seeds in parallel processes.

``stages/distill.py --run <name>`` calls :func:`run_all`. Each seed is trained and evaluated by
:func:`run_seed` in its own worker process (forked from a fork server that has imported this module,
:mod:`xmkd.workers`); on a CPU the seeds run at the same time, one
thread each: small 3-D convolutions scale badly over threads, so on 2 cores two 1-thread processes
train 2.1x the clips per second of one 2-thread process (measured: 1.4 vs 2.95 ms per clip and step).
Results do not depend on the number of workers (each seed's computation is independent and seeded);
only on the threads per worker, which is part of the machine.

What a run reads depends on its kind (see :mod:`xmkd.runs`):

- student input: uint8 frames (video student) or log-mels (reverse direction's audio student);
- frozen teacher outputs: the audio teacher on each clip's own sound track (``data/teacher``), on the
  sound the clip has at another irrelevant-sound rate (``data/teacher_conditions``), or the video
  teacher (``data/video_teacher``).

Evaluation (reference protocol of the MNF+CSC code): top-1, top-5, mean class accuracy on the test clips;
retrieval with test clips querying the training clips by cosine on the student feature (R@1/5/10, mAP over
the top ``evaluate.map_topk``); top-1 per sound condition; for MNF, its gate per condition and the AUROC
with which it separates clean from irrelevant sound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xmkd.data.conditions import assign_conditions, benchmark_config
from xmkd.data.features import FeatureCache
from xmkd.distill import TeacherOutputs, build_models, run_distillation, save_checkpoint
from xmkd.errors import DataError
from xmkd.evaluate import classification_metrics, gate_metrics, retrieval_metrics
from xmkd.launch import launch, resolve_backend, threads_per_process
from xmkd.methods.base import DistillMethod
from xmkd.parallel import DataParallel, SingleProcess
from xmkd.runs import RunConfig, load_run_config
from xmkd.train import ClipDataset, make_loader, predict, resolve_device, seed_everything
from xmkd.workers import SEED_WORKER_MODULES, EpochSender, forkserver_context, seed_worker_init, terminate_workers

PROVENANCE = Path("data/benchmark/provenance.parquet")
FEATURES = Path("data/features")
CONDITIONS = ("clean", "mismatched", "background")


def checkpoint_path(run: str, seed: int) -> Path:
    """``models/students/<run>/seed-<seed>.pt``."""
    return Path("models/students") / run / f"seed-{seed}.pt"


def clip_conditions(rc: RunConfig, cache: FeatureCache) -> np.ndarray | None:
    """(N,) sound condition of every clip for this run (its rate for robustness runs, else as built);
    None when the data has no such notion (e.g. a user's own videos)."""
    ids = cache.manifest["id"].to_numpy()
    if rc.irrelevant_rate is not None:
        cond = assign_conditions(benchmark_config(rc.condition_keys or {}), rc.irrelevant_rate)
        return np.array([cond[i] for i in ids])
    if PROVENANCE.exists():  # only when the clips are the built benchmark's (not a user's own videos)
        prov = pd.read_parquet(PROVENANCE, columns=["id", "audio_condition"]).set_index("id")
        if pd.Index(ids).isin(prov.index).all():
            return prov.loc[ids, "audio_condition"].to_numpy()
    return None


def teacher_outputs(rc: RunConfig, cache: FeatureCache) -> TeacherOutputs:
    """The frozen teacher outputs of every clip this run distils from (see the module docstring).

    Raises:
        DataError: missing teacher outputs (names the stage to run) or rows that do not match the cache.
    """
    root = Path(rc.teacher)
    if rc.irrelevant_rate is None:
        return TeacherOutputs.load(root, cache)
    if (root / "NOT_APPLICABLE.txt").exists():
        raise DataError(
            f"robustness run {rc.name}: {(root / 'NOT_APPLICABLE.txt').read_text().strip()}"
        )
    needed = [root / f"{c}_{k}.npy" for c in CONDITIONS for k in ("embeddings", "logits")] + [root / "ids.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DataError(f"teacher outputs per sound condition missing: {missing[:3]}: run `dvc repro embed_conditions`.")
    if (root / "ids.txt").read_text().split("\n")[:-1] != list(cache.manifest["id"]):
        raise DataError(f"{root} does not match the feature cache's clips: re-run `dvc repro embed_conditions`.")
    cond = clip_conditions(rc, cache)
    emb = np.load(root / "clean_embeddings.npy")
    logits = np.load(root / "clean_logits.npy")
    for c in CONDITIONS[1:]:
        sel = cond == c
        emb[sel] = np.load(root / f"{c}_embeddings.npy", mmap_mode="r")[sel]
        logits[sel] = np.load(root / f"{c}_logits.npy", mmap_mode="r")[sel]
    return TeacherOutputs(emb, logits)


def student_inputs(rc: RunConfig, cache: FeatureCache) -> np.ndarray:
    """(N, T, H, W, 3) uint8 frames for a video student, (N, n_mels, F) float32 log-mels for an audio one."""
    return cache.logmel if rc.modality == "audio" else cache.frames


def average_clip_predictions(per_clip: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Video-level predictions from the predictions of K clips of the same N videos.

    As the reference MNF+CSC code (GeWu-Lab/cross-modal-distillation): ``inference.py`` averages the
    per-clip softmax probabilities of a video, ``retrieval/get_retrieval_feature.py`` the per-clip
    (unnormalised) student features.

    Args:
        per_clip: K >= 1 outputs of :func:`xmkd.train.predict` over the same videos in the same order (clip k
            in the k-th): ``"logits"`` (N, C), ``"features"`` (N, d), ``"labels"`` (N,), diagnostics (N, ...).

    Returns:
        ``{"probs": (N, C) mean over the clips of softmax(logits) (computed in float64), "features": (N, d)
        mean feature, "labels": (N,), each diagnostic: its mean over the clips}``, float32 except labels.

    Raises:
        ValueError: no clip, or clips that disagree in keys, shapes or labels.
    """
    if not per_clip:
        raise ValueError("average_clip_predictions needs at least one clip's predictions")
    first = per_clip[0]
    for k, out in enumerate(per_clip[1:], start=1):
        if out.keys() != first.keys() or any(out[key].shape != first[key].shape for key in first):
            raise ValueError(f"clip {k}'s predictions differ in keys or shapes from clip 0's")
        if not np.array_equal(out["labels"], first["labels"]):
            raise ValueError(f"clip {k}'s predictions are not over the same videos as clip 0's (labels differ)")
    logits = np.stack([out["logits"] for out in per_clip], axis=1).astype(np.float64)  # (N, K, C)
    z = np.exp(logits - logits.max(axis=2, keepdims=True))
    result = {"probs": (z / z.sum(axis=2, keepdims=True)).mean(axis=1).astype(np.float32), "labels": first["labels"]}
    for key in first:
        if key not in ("logits", "labels"):
            result[key] = np.mean([out[key].astype(np.float64) for out in per_clip], axis=0).astype(np.float32)
    return result


def evaluate(
    student: torch.nn.Module,
    method: torch.nn.Module,
    rc: RunConfig,
    cache: FeatureCache,
    inputs: np.ndarray,
    teacher: TeacherOutputs,
    conditions: np.ndarray | None,
    control: torch.nn.Module | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Test metrics of a trained student (see the module docstring).

    ``control``: the method at its initial weights (untrained MNF gate); when given and the clips have sound
    conditions, its gate statistics on the same test clips and the same trained student are added with the
    prefix ``init_`` (:func:`xmkd.evaluate.gate_metrics`).

    Multi-clip evaluation: when the student's ``inputs`` are the cache's frames and the cache holds
    ``K = cache.eval_clips > 1`` clips per test video (``features.eval_clips``), each test video is
    predicted from its K clips (:func:`average_clip_predictions`: mean softmax probability for top-1/top-5/
    mean class accuracy and the predictions, mean feature as the retrieval query, mean of each diagnostic
    such as the MNF gate). The retrieval gallery (training videos) keeps its single clip, the clip the
    student was trained on (the reference averages there too; the training set would need K x its frames on
    disk). With K = 1 (or an audio student) every clip is a video and nothing is averaged.

    Returns:
        (metrics as fractions in [0, 1] except ``map_queries_without_hit`` (a count), test predictions (N_test,)).
    """
    device = resolve_device(rc.train.device)
    student.to(device)
    method.to(device)
    labels = cache.targets()
    cfg = dataclasses.replace(rc.train, batch_size=rc.evaluate.batch_size)

    def infer(subset: str, m: torch.nn.Module = method) -> dict[str, np.ndarray]:
        ds = ClipDataset(inputs, labels, teacher.embedding, teacher.logits, cache.indices(subset))
        return predict(student, m, make_loader(ds, cfg, False, 0, device), device, rc.train.amp)

    def infer_clips(subset: str, m: torch.nn.Module = method) -> dict[str, np.ndarray]:
        assert cache.eval_frames is not None and cache.eval_rows is not None
        rows = cache.eval_rows  # datasets over the rows of eval_frames, one per clip index k
        pos = cache.eval_positions(cache.indices(subset))
        emb, logits_t, y = np.asarray(teacher.embedding[rows]), np.asarray(teacher.logits[rows]), labels[rows]
        per_clip = []
        for k in range(cache.eval_clips):
            ds = ClipDataset(cache.eval_frames[:, k], y, emb, logits_t, pos)
            per_clip.append(predict(student, m, make_loader(ds, cfg, False, 0, device), device, rc.train.amp))
        return average_clip_predictions(per_clip)

    multi_clip = inputs is cache.frames and getattr(cache, "eval_frames", None) is not None
    test = infer_clips("testing") if multi_clip else infer("testing")
    gallery = infer("training")
    scores = test["probs"] if multi_clip else test["logits"]
    metrics = classification_metrics(scores, test["labels"], cache.num_classes)
    metrics |= retrieval_metrics(
        test["features"], test["labels"], gallery["features"], gallery["labels"], map_topk=rc.evaluate.map_topk
    )
    pred = scores.argmax(1)
    if conditions is not None:
        cond = conditions[cache.indices("testing")]
        correct = pred == test["labels"]
        metrics |= {f"top1/{c}": float(correct[cond == c].mean()) for c in sorted(set(cond))}
        if "gate_mean" in test:
            metrics |= gate_metrics(test["gate_mean"], cond, test.get("gate_norm_ratio"))
            if control is not None:
                control.to(device)
                init = infer_clips("testing", control) if multi_clip else infer("testing", control)
                metrics |= gate_metrics(init["gate_mean"], cond, init.get("gate_norm_ratio"), prefix="init_")
    return metrics, pred


def run_seed(
    config_path: str,
    seed: int,
    threads: int,
    strategy: SingleProcess | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any] | None:
    """Train and evaluate one seed of a run; writes its checkpoint (atomically).

    Runs in a worker process (or in the caller's with one worker). Relative paths are resolved
    against the current directory (the repo root, as DVC runs stages). With a DDP ``strategy``
    (:func:`run_rank`) every rank trains its share; only the reporting process (``strategy.reports``) saves the
    checkpoint and evaluates. ``on_epoch_end``: the loop's per-epoch hook (:func:`xmkd.train.train`).

    Returns:
        {"seed", "history" (per-epoch dicts), "train_seconds", "metrics", "pred" (N_test,) int64,
        "start"/"end" (unix s)}; None on the DDP processes that do not report.

    Raises:
        TrainingError: a non-finite or exploding loss; DataError: missing inputs.
    """
    start = time.time()
    torch.set_num_threads(threads)
    strategy = strategy or SingleProcess()
    rc = load_run_config(Path(config_path))
    cache = FeatureCache(FEATURES)
    teacher = teacher_outputs(rc, cache)
    inputs = student_inputs(rc, cache)
    conditions = clip_conditions(rc, cache)
    t0 = time.perf_counter()
    student, method, history = run_distillation(rc, seed, cache, teacher, on_epoch_end, inputs, strategy)
    train_seconds = time.perf_counter() - t0
    strategy.finish(student, method)  # DDP: training's collectives are over, every rank leaves the group
    if not strategy.reports:
        return None
    meta = {
        "run": rc.name, "method": rc.method, "seed": seed, "num_classes": cache.num_classes,
        "teacher_dim": int(teacher.embedding.shape[1]), "num_train": len(cache.indices("training")),
        "config": rc.to_json(),
    }
    save_checkpoint(checkpoint_path(rc.name, seed), student, method, meta)
    control = None
    if conditions is not None and type(method).diagnostics is not DistillMethod.diagnostics:
        seed_everything(seed)  # the same draws as run_distillation: the method exactly as it started training
        _, control = build_models(rc, cache.num_classes, teacher.embedding.shape[1], len(cache.indices("training")))
    metrics, pred = evaluate(student, method, rc, cache, inputs, teacher, conditions, control)
    return {
        "seed": seed, "history": history, "train_seconds": train_seconds, "metrics": metrics,
        "pred": pred.astype(np.int64), "start": start, "end": time.time(),
    }


def run_rank(
    config_path: str,
    seed: int,
    threads: int,
    reports: bool = False,
    parent_pid: int | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any] | None:
    """One process of a seed's DDP job, as torchrun starts it (:func:`xmkd.launch.launch` on the stage's node with
    ``reports=True``, ``python -m xmkd.node rank`` on the others): join the process group from torchrun's
    environment, then :func:`run_seed` with a :class:`xmkd.parallel.DataParallel` strategy.

    The process exits at once when ``parent_pid`` (torchrun's agent: the stage process on node 0; default: this
    process's parent) is gone, so a killed stage leaves no rank behind (:func:`xmkd.workers.seed_worker_init`).
    Pass it explicitly where the parent may die before this runs (then ``os.getppid()`` would name init).
    ``on_epoch_end``: the loop's per-epoch hook, called on global rank 0 only (:func:`xmkd.train.train`).

    Returns:
        The seed's result on local rank 0 of the reporting node; None elsewhere.

    Raises:
        TrainingError: NCCL asked for without CUDA, or anything :func:`run_seed` raises.
    """
    seed_worker_init(parent_pid or os.getppid())
    # 1x1x1 convolution weights get gradients in another memory layout than DDP's bucket: harmless, said once
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    rc = load_run_config(Path(config_path))
    device = resolve_device(rc.train.device)
    strategy = DataParallel.join(resolve_backend(rc.distributed.backend, device), device, reports)
    try:
        return run_seed(config_path, seed, threads, strategy, on_epoch_end)
    finally:
        strategy.close()


def workers_and_threads(rc: RunConfig) -> tuple[int, int]:
    """(seed worker processes, torch threads per worker) for this machine.

    ``train.seed_workers: 0`` (auto): every seed at once on a CPU, capped at cores + 1 (a third
    1-thread process on 2 cores still adds throughput by filling the other two's idle time); 1 on CUDA.
    ``train.num_threads: 0`` (auto): the cores shared out between the workers (at least 1).
    DDP (``distributed.nproc * distributed.nnodes > 1``): 1 worker (seeds one after another); ``num_threads: 0``
    gives each of the ``distributed.nproc`` processes on this node cores / nproc threads.
    """
    cpus = os.cpu_count() or 1
    n = len(rc.seeds)
    if rc.distributed.enabled:
        return 1, threads_per_process(rc.distributed, rc.train.num_threads)
    if rc.train.seed_workers > 0:
        workers = min(rc.train.seed_workers, n)
    elif resolve_device(rc.train.device).type == "cuda":
        workers = 1
    else:
        workers = min(n, cpus + 1)
    threads = rc.train.num_threads if rc.train.num_threads > 0 else max(1, cpus // workers)
    return workers, threads


#: Seconds between two looks at the seed workers' epoch queue while they train.
EPOCH_POLL_S = 0.25

EpochCallback = Callable[[int, int, dict[str, float]], None]
"""``on_epoch(seed, epoch, metrics)``: one epoch (1-based) of one seed has ended, with its metrics
(:func:`xmkd.train.train`'s per-epoch dict); called in the stage process."""


def _drain(queue: Any, on_epoch: EpochCallback) -> None:
    """Hand every epoch waiting in ``queue`` to ``on_epoch``, in the order the workers sent them."""
    while not queue.empty():
        on_epoch(*queue.get())


@contextlib.contextmanager
def _epochs_from(queue: Any, on_epoch: EpochCallback) -> Iterator[None]:
    """While the body runs (a DDP job: this thread waits in the launcher), a thread hands the epochs arriving on
    ``queue`` to ``on_epoch``; on exit every epoch sent before is handed over before this returns."""

    def forward() -> None:
        while (item := queue.get()) is not None:
            on_epoch(*item)

    thread = threading.Thread(target=forward, name="xmkd-epochs", daemon=True)
    thread.start()
    try:
        yield
    finally:
        queue.put(None)
        thread.join()


def run_all(
    rc: RunConfig,
    config_path: Path,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate every seed of ``rc`` (in parallel worker processes when it pays; with
    ``distributed.nproc * distributed.nnodes > 1`` each seed in turn as a DDP job, :func:`xmkd.launch.launch`).

    Args:
        rc: the run; config_path: its resolved config file (what the workers load).
        on_result: called in this process with each seed's result as it completes (e.g. MLflow logging).
        on_epoch: called in this process after every epoch of every seed, while the seeds train (live metrics,
            a progress bar; :data:`EpochCallback`). A seed worker sends its epochs on a queue
            (:class:`xmkd.workers.EpochSender`) that this process reads every :data:`EPOCH_POLL_S` s; a DDP job's
            rank 0 sends them on a queue a thread reads. A seed's epochs are all handed over before its
            ``on_result``, and neither callback runs while the other does.

    Returns:
        Results of :func:`run_seed`, in ``rc.seeds`` order.

    Raises:
        the first error of any seed (the other seeds' workers are terminated, not waited for).
    """
    workers, threads = workers_and_threads(rc)
    results: dict[int, dict[str, Any]] = {}
    if rc.distributed.enabled:  # DDP: the seeds one after another, each over nproc x nnodes processes
        device = resolve_device(rc.train.device)
        queue = multiprocessing.get_context("spawn").SimpleQueue() if on_epoch else None
        for i, s in enumerate(rc.seeds):
            hook = EpochSender(s, queue) if on_epoch else None
            with _epochs_from(queue, on_epoch) if on_epoch else contextlib.nullcontext():
                results[s] = launch(rc.distributed, run_rank, (str(config_path), s, threads, True, os.getpid(), hook),
                                    run=rc.name, seed=s, seed_index=i, threads=threads, device=device)
            if on_result:
                on_result(results[s])
    elif workers == 1:
        for s in rc.seeds:
            hook = functools.partial(on_epoch, s) if on_epoch else None
            results[s] = run_seed(str(config_path), s, threads, on_epoch_end=hook)
            if on_result:
                on_result(results[s])
    else:
        ctx = forkserver_context(SEED_WORKER_MODULES)
        queue = ctx.SimpleQueue() if on_epoch else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=seed_worker_init,
                                 initargs=(os.getpid(), queue)) as pool:
            pending = {pool.submit(run_seed, str(config_path), s, threads, on_epoch_end=EpochSender(s) if on_epoch
                                   else None) for s in rc.seeds}
            try:
                while pending:
                    done, pending = wait(pending, timeout=EPOCH_POLL_S, return_when=FIRST_COMPLETED)
                    if on_epoch:  # first: a seed's last epochs were sent before its result
                        _drain(queue, on_epoch)
                    for res in sorted((fut.result() for fut in done), key=lambda r: rc.seeds.index(r["seed"])):
                        results[res["seed"]] = res
                        if on_result:
                            on_result(res)
            except BaseException:  # a seed failed, or the stage is terminated: the other seeds stop now
                terminate_workers(pool)
                raise
    return [results[s] for s in rc.seeds]
