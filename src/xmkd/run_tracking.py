"""What a training stage (``stages/distill.py``) records while its seeds train: MLflow and the terminal.

- **Live seed runs.** Each seed's MLflow run (a child of the stage run) opens at its first epoch and gets that
  epoch's metrics (every loss term, ``train_top1``, ``val_top1``, ``lr``, ``seconds``) with ``step = epoch`` as
  soon as the epoch ends: the seed workers send their epochs to the stage process
  (:func:`xmkd.experiment.run_all`'s ``on_epoch``), which is the only writer of the SQLite store. When the seed
  ends: its test metrics, tags, datasets, a description, the checkpoint's md5; an epoch the live path missed (a
  tracking error) is logged then from the seed's history.
- **A progress bar** over every seed's epochs, with the last epoch's loss and validation top-1 (tqdm, drawn only
  on a terminal: :mod:`xmkd.progress`); one summary line when the stage ends (:meth:`RunRecord.summary`).
- **After the outputs are written** (:meth:`RunRecord.finish`): the seed means, the stage's description, and the
  student of the first seed as an MLflow model (:data:`MODELS_ENV`).

Nothing here changes a number of the run: it only reads the metrics, and a tracking error is a warning
(:func:`xmkd.tracking.tolerant`), never a failed stage.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from xmkd.distill import load_checkpoint
from xmkd.dvclock import DvcOutput, dvc_output, file_md5
from xmkd.experiment import FEATURES, checkpoint_path, student_inputs
from xmkd.progress import progress_bar
from xmkd.runs import RunConfig
from xmkd.tracking import CHECKPOINT_TAG, StageRun, tolerant

#: Which seeds' students are logged as MLflow models: ``first`` (default: the first seed of ``seeds``, the one
#: the report registers), ``all``, or ``none``. One model costs about 1-2 s of CPU (``torch.export``) and 2 MB.
MODELS_ENV = "XMKD_MLFLOW_MODELS"
HEADLINE = ("top1", "top5", "mAP", "R@1")


class StudentLogits(nn.Module):
    """The student as the MLflow model serves it: a batch of its inputs -> logits.

    Input: uint8 frames (B, T, H, W, 3) for a video student, float32 log-mels (B, n_mels, F) for the audio one.
    Output: (B, C) float32 class scores (softmax gives the probabilities).
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) inputs -> (B, C) logits."""
        return self.student(x).logits.float()


def run_tags(rc: RunConfig) -> dict[str, str]:
    """Tags of a training stage's run, the filters of ``mlflow ui``'s search: ``method``, ``run``, ``kind`` (main,
    ablation, robustness, reverse) and ``seeds``; each seed run adds its ``seed``."""
    return {"method": rc.method, "run": rc.name, "kind": rc.kind, "seeds": ",".join(map(str, rc.seeds))}


def run_datasets(rc: RunConfig) -> list[tuple[DvcOutput, str]]:
    """The pipeline outputs a run reads, with their DVC digests from ``dvc.lock``: the feature cache (the student's
    input) and the teacher outputs it distils from. Those dvc.lock does not record (a stage run by hand on data
    DVC did not make) are left out."""
    found = [(dvc_output(FEATURES), "student_input"), (dvc_output(rc.teacher), "teacher_outputs")]
    return [(out, context) for out, context in found if out is not None]


def models_to_log(seeds: tuple[int, ...] | list[int]) -> list[int]:
    """The seeds whose students are logged as MLflow models (:data:`MODELS_ENV`).

    Raises:
        ValueError: :data:`MODELS_ENV` is set to something else than ``first``, ``all`` or ``none``.
    """
    choice = os.environ.get(MODELS_ENV, "first").strip().lower()
    if choice not in ("first", "all", "none"):
        raise ValueError(f"{MODELS_ENV}={choice!r}: use first (the default), all or none")
    return {"first": list(seeds[:1]), "all": list(seeds), "none": []}[choice]


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def describe_run(rc: RunConfig) -> str:
    """One sentence: what the run trains (its kind, method, student, epochs, seeds, data), starting ``Run `<name>```."""
    kind = {
        "main": "main table",
        "ablation": f"ablation `{rc.label}` of mnf_csc",
        "robustness": f"robustness, irrelevant-sound rate {rc.irrelevant_rate}",
        "reverse": "reverse direction: video teacher -> audio student",
    }.get(rc.kind, rc.kind)
    t = rc.train
    return (f"Run `{rc.name}` ({kind}): method `{rc.method}`, student `{rc.student.arch}` (d = {rc.student.embed_dim}),"
            f" {_epochs(t.epochs)} (batch {t.batch_size}, lr {t.lr:g}), seeds {', '.join(map(str, rc.seeds))}; input "
            f"`{FEATURES}`, teacher outputs `{rc.teacher}`.")


class RunRecord:
    """The MLflow record and the progress bar of one training stage while its seeds train (see the module docstring).

    Use as a context manager around :func:`xmkd.experiment.run_all`, passing :meth:`on_epoch` and :meth:`on_result`;
    call :meth:`finish` once the stage's outputs are written. On exit the bar closes, and seed runs still open
    (the stage failed) are marked FAILED.

    Args:
        stage: the stage's run (:func:`xmkd.tracking.stage_run`); rc: the run's config.
    """

    def __init__(self, stage: StageRun, rc: RunConfig) -> None:
        self.stage, self.rc = stage, rc
        self.seed_runs: dict[int, StageRun] = {}
        self.logged: dict[int, set[int]] = defaultdict(set)  # epochs logged live, per seed
        self.seen: dict[int, int] = defaultdict(int)  # epochs the bar counted, per seed
        self.done: set[int] = set()
        self.datasets = run_datasets(rc)
        self.models: dict[int, str] = {}
        with tolerant("describe the stage run"):
            stage.set_note(describe_run(rc))
        with tolerant("log the datasets"):
            stage.log_datasets(self.datasets)
        self.bar = progress_bar(len(rc.seeds) * rc.train.epochs, stage.name or rc.name, "epoch")

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.close()
        for seed, run in self.seed_runs.items():
            if seed not in self.done:
                with tolerant("close the seed runs"):
                    run.finish("FAILED")

    def _seed_run(self, seed: int, start: float) -> StageRun | None:
        if seed not in self.seed_runs:
            with tolerant("open the seed runs"):
                run = self.stage.child(f"{self.rc.name} seed {seed}", {**self.rc.to_json(), "seed": seed}, start=start,
                                       tags={"seed": str(seed)})
                self.seed_runs[seed] = run
                run.log_datasets(self.datasets)
        return self.seed_runs.get(seed)

    def on_epoch(self, seed: int, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch of one seed has ended: log it (``step = epoch``) to the seed's run, move the bar."""
        run = self._seed_run(seed, time.time() - metrics.get("seconds", 0.0))
        if run is not None:
            with tolerant("log the epochs as they end"):
                run.log_metrics(metrics, step=epoch)
                self.logged[seed].add(epoch)
        self.seen[seed] += 1
        self.bar.update(1)
        val = f", val top-1 {_pct(metrics['val_top1'])}" if "val_top1" in metrics else ""
        self.bar.set_postfix_str(f"seed {seed} epoch {epoch}/{self.rc.train.epochs}: loss "
                                 f"{metrics.get('loss/total', float('nan')):.3f}{val}", refresh=False)

    def on_result(self, res: dict[str, Any]) -> None:
        """A seed has ended (:func:`xmkd.experiment.run_seed`'s result): its test metrics, the epochs the live path
        missed, its checkpoint's md5 and description; the run is closed with the seed's own end time."""
        seed, m = res["seed"], res["metrics"]
        self.done.add(seed)
        run = self._seed_run(seed, res["start"])
        if run is not None:
            with tolerant("log the seed results"):
                for epoch, h in enumerate(res["history"], 1):
                    if epoch not in self.logged[seed]:
                        run.log_metrics(h, step=epoch)
                run.log_metrics({**m, "train_seconds": res["train_seconds"]})
                ckpt = checkpoint_path(self.rc.name, seed)
                run.set_tags({CHECKPOINT_TAG: file_md5(ckpt)})
                run.set_note(f"Seed {seed}. {describe_run(self.rc)}\n\nTest: "
                             + ", ".join(f"{k} {_pct(m.get(k))}" for k in HEADLINE)
                             + f"; trained in {res['train_seconds']:.0f} s. Checkpoint `{ckpt}`.")
            with tolerant("close the seed runs"):
                run.finish(end=res["end"])
        self.bar.update(max(0, self.rc.train.epochs - self.seen[seed]))  # epochs that never reached on_epoch
        self.bar.set_postfix_str(f"seed {seed} done: test top-1 {_pct(m.get('top1'))}", refresh=False)

    def finish(self, results: list[dict[str, Any]], cache: Any) -> None:
        """After the stage's outputs are written: seed means (``mean/<metric>``), the stage's description with every
        seed's headline metrics, and the students as MLflow models (:func:`models_to_log`).

        Args:
            results: :func:`xmkd.experiment.run_all`'s, in seed order; cache: the run's
                :class:`~xmkd.data.features.FeatureCache` (the model's input example: two test clips).
        """
        keys = sorted(set().union(*(r["metrics"] for r in results)))
        means = {}
        for k in keys:
            vals = np.array([r["metrics"].get(k, np.nan) for r in results], dtype=float)
            if np.isfinite(vals).any():
                means[f"mean/{k}"] = float(vals[np.isfinite(vals)].mean())
        with tolerant("log the seed means"):
            self.stage.log_metrics(means)
            self.stage.log_artifact(f"metrics/eval/{self.rc.name}.json")
        test = cache.indices("testing")[:2]
        example = np.ascontiguousarray(student_inputs(self.rc, cache)[test])
        for seed in models_to_log(self.rc.seeds):
            if seed in self.seed_runs:
                with tolerant("log the students as MLflow models"):
                    student, _, _ = load_checkpoint(checkpoint_path(self.rc.name, seed), self.rc)
                    tags = {"method": self.rc.method, "run": self.rc.name, "seed": str(seed)}
                    self.models[seed] = self.seed_runs[seed].log_pytorch_model(StudentLogits(student).eval(), example, tags)
        rows = [f"| {r['seed']} | " + " | ".join(_pct(r["metrics"].get(k)) for k in HEADLINE)
                + f" | {r['train_seconds']:.0f} |" for r in results]
        model = "".join(f"\n\nMLflow model of seed {s}: `models:/{mid}`." for s, mid in self.models.items())
        with tolerant("describe the stage run"):
            self.stage.set_note(
                f"{describe_run(self.rc)}\n\n{self.summary(results)}\n\n| seed | " + " | ".join(HEADLINE)
                + " | train s |\n" + "|---" * (len(HEADLINE) + 2) + "|\n" + "\n".join(rows)
                + f"\n\nOutputs: `{checkpoint_path(self.rc.name, 0).parent}/`, `metrics/eval/{self.rc.name}.json`, "
                f"`metrics/train/{self.rc.name}.json`, `data/predictions/{self.rc.name}.npz`.{model}"
            )

    def summary(self, results: list[dict[str, Any]]) -> str:
        """One line: the run's test top-1 and mAP (mean ± std over seeds, each seed's top-1), its training time."""
        top1 = np.array([r["metrics"]["top1"] for r in results])
        mean_map = np.nanmean([r["metrics"].get("mAP", np.nan) for r in results])
        std = f" ± {100 * top1.std(ddof=1):.1f}" if len(top1) > 1 else ""
        per_seed = ", ".join(f"{r['seed']}: {100 * r['metrics']['top1']:.1f}" for r in results)
        return (f"{self.rc.name}: test top-1 {100 * top1.mean():.1f}{std} % (seed {per_seed}), mAP {_pct(mean_map)}; "
                f"{_epochs(self.rc.train.epochs)} in {np.mean([r['train_seconds'] for r in results]):.0f} s per seed")

