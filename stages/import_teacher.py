"""Stage import_teacher: precomputed per-video teacher embeddings instead of a trained audio teacher.

Reads ``teacher_import`` (:class:`xmkd.teacher_import.TeacherImportConfig`) from params.yaml. Row order: the feature
cache's manifest (``data/features``) when it exists, else the annotation ``features.annotation`` (sorted as the
extraction sorts it, so a cache extracted later has the same order). Trains a classification head on the
``training`` clips' embeddings for the methods that need teacher logits.

Outputs (same files as stages/embed_teacher.py): data/teacher/{embeddings.npy (N, D) float32 raw embeddings,
logits.npy (N, C) float32 in the annotation's label order, ids.txt (the clip id of each row, one per line)};
metrics/teacher.json: head top-1 per subset (``train_top1``, ``val_top1``, ``val_top5``, ...), counts. Everything is
written to temporary files first and moved into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmkd.cli import run_main
from xmkd.config import load_params, parse_section
from xmkd.data.features import FeatureCache, config_from_params, load_annotation
from xmkd.errors import ConfigError, DataError
from xmkd.teacher_import import ImportedTeacher, TeacherImportConfig, import_teacher
from xmkd.tracking import stage_run

OUT = Path("data/teacher")
METRICS = Path("metrics/teacher.json")
FEATURES = Path("data/features")


def clips(params: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray, list[str], str]:
    """(ids, labels (N,), subsets (N,), label names, where the order came from) of the clips to align to."""
    if (FEATURES / "manifest.parquet").exists():
        cache = FeatureCache(FEATURES)
        m = cache.manifest
        return list(m["id"]), cache.targets(), m["subset"].to_numpy(dtype=object), cache.labels, str(FEATURES)
    annotation = config_from_params(params).annotation
    labels, entries = load_annotation(annotation)
    if not entries:
        raise DataError(f"annotation {annotation} lists no video: add entries to its 'database'.")
    ids = [e[0] for e in entries]
    return ids, np.array([e[3] for e in entries], np.int64), np.array([e[1] for e in entries], object), labels, annotation


def write_outputs(imported: ImportedTeacher, metrics: dict[str, float], out: Path = OUT, metrics_path: Path = METRICS) -> None:
    """Write data/teacher/* and metrics/teacher.json atomically: all to temporary paths, then renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp_metrics = metrics_path.parent / f".{metrics_path.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.save(tmp / "embeddings.npy", imported.embeddings)
        np.save(tmp / "logits.npy", imported.logits)
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in imported.ids))
        tmp_metrics.write_text(json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}, indent=1) + "\n")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        os.replace(tmp_metrics, metrics_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        tmp_metrics.unlink(missing_ok=True)


def main() -> None:
    """Parse ``teacher_import``, align, train the head, write the outputs, log the run (see module docstring).

    Raises:
        ConfigError: no/invalid ``teacher_import`` section, or ``teacher_outputs.input`` != ``teacher_import.source``.
        DataError: see :func:`xmkd.teacher_import.embeddings.load_embeddings`; clips of the feature cache skipped.
    """
    params = load_params()
    section = params.get("teacher_import")
    if not isinstance(section, dict):
        raise ConfigError(
            "params.yaml has no 'teacher_import' section: add one with at least 'source' (the directory or .tar.gz "
            "of <Class>/<video_id>.npy embeddings); see README, 'UCF51'."
        )
    cfg = parse_section(TeacherImportConfig, section, "teacher_import")
    switch = params.get("teacher_outputs")
    if isinstance(switch, dict) and "input" in switch and Path(str(switch["input"])) != Path(cfg.source):
        raise ConfigError(
            f"teacher_outputs.input ({switch['input']}) is the file DVC tracks for this stage, but "
            f"teacher_import.source ({cfg.source}) is the one read: set both to the same path (profiles/ucf51.yaml "
            "does)."
        )
    ids, labels, subsets, names, origin = clips(params)
    torch.set_num_threads(2)
    with stage_run("import_teacher", params={"teacher_import": asdict(cfg), "order_from": origin}) as run:
        imported = import_teacher(cfg, ids, labels, subsets, len(names), label_names=names)
        if imported.missing and origin == str(FEATURES):
            raise DataError(
                f"{len(imported.missing)} clips of the feature cache have no teacher embedding "
                f"({', '.join(imported.missing[:5])}); the distillation stages need a teacher row for every cached "
                "clip. Drop these ids from the annotation and re-run extract_features, or provide their embeddings."
            )
        for epoch, h in enumerate(imported.history, start=1):
            run.log_metrics({f"head_{k}": v for k, v in h.items()}, step=epoch)
        write_outputs(imported, imported.metrics)
        run.log_metrics(imported.metrics)
        run.log_artifact(METRICS)
    m = imported.metrics
    shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k.endswith(("_top1", "_top5")))
    skipped = f", {len(imported.missing)} clips without embedding skipped" if imported.missing else ""
    print(f"import_teacher: {len(imported.ids)} clips (order: {origin}), D={int(m['dim'])}, head {cfg.head}: {shown}{skipped}")


if __name__ == "__main__":
    run_main(main)
