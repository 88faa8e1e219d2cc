"""What ``dvc.lock`` records of the pipeline's outputs: the DVC digest of a file or folder, and the stage that wrote it.

DVC writes a stage's entry in ``dvc.lock`` as soon as the stage has run (``dvc repro``, ``dvc exp run``, each
queued experiment in its own copy), so a stage finds there the digests of every output of the stages before it:
``md5`` of a file, or ``<md5>.dir`` of a folder (the md5 of DVC's JSON listing of the folder's files and their
md5s). :mod:`xmkd.tracking` gives these digests to MLflow (``log_input``), so an MLflow run names the exact data
version (``dvc get``/``dvc pull`` of that lock file gives it back).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

LOCK = Path("dvc.lock")


@dataclass(frozen=True)
class DvcOutput:
    """One output of a DVC stage as ``dvc.lock`` records it.

    Attributes:
        path: as written in dvc.yaml (relative to the repository root, e.g. ``data/features``).
        md5: DVC's digest: the file's md5, or ``<md5>.dir`` for a folder (36 characters).
        stage: the stage that writes it (e.g. ``extract_features``, ``distill@kd``).
        size: bytes in all; nfiles: files in a folder (None for a file).
    """

    path: str
    md5: str
    stage: str
    size: int | None = None
    nfiles: int | None = None


def dvc_output(path: str | Path, lock: Path = LOCK) -> DvcOutput | None:
    """The entry of ``path`` among the outputs recorded in ``lock``.

    Args:
        path: an output path as dvc.yaml names it (a trailing ``/`` is ignored).
        lock: the lock file (default: ``dvc.lock`` of the current directory, the repository root of a stage).

    Returns:
        Its :class:`DvcOutput`, or None when the lock file is absent (a stage run by hand, before any
        ``dvc repro``) or no stage has that output.

    Raises:
        ValueError: the lock file is not DVC's format (no ``stages`` mapping).
    """
    if not lock.exists():
        return None
    doc = yaml.safe_load(lock.read_text()) or {}
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        raise ValueError(f"{lock} has no 'stages' mapping: not a DVC 3 lock file")
    want = Path(path).as_posix().rstrip("/")
    for stage, entry in stages.items():
        for out in (entry or {}).get("outs", []):
            if out.get("path", "").rstrip("/") == want and out.get("md5"):
                return DvcOutput(want, out["md5"], stage, out.get("size"), out.get("nfiles"))
    return None


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """md5 of a file's bytes (hex), as DVC computes a file's digest.

    Raises:
        FileNotFoundError: no such file.
    """
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
