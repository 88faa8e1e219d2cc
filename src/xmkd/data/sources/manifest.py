"""The committed checksum manifest (``xmkd/data/checksums.json``): reading it, regenerating it from a reference
mirror, and the sha256 of a file."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmkd.data.sources.layout import ESC50_AUDIO_DIR, ESC50_META, FSDD_DIR, MNIST_5K, MNIST_IMAGES, MNIST_LABELS
from xmkd.errors import DataError


@dataclass(frozen=True)
class Manifest:
    """The committed checksum manifest (``xmkd/data/checksums.json``).

    Attributes:
        files: raw-layout relative path -> sha256 of the file bytes in the reference mirror.
        idx_content: MNIST ``.gz`` path -> sha256 of its decompressed IDX bytes.
        gzip_mtime: MNIST t10k ``.gz`` path -> the mtime stored in the mirror's gzip header.
    """

    files: dict[str, str]
    idx_content: dict[str, str]
    gzip_mtime: dict[str, int]

    def group(self, prefix: str) -> list[str]:
        """Sorted manifest paths under ``prefix`` (e.g. ``"fsdd/recordings/"``)."""
        return sorted(p for p in self.files if p.startswith(prefix))


def load_manifest() -> Manifest:
    """Load the committed manifest shipped inside the package.

    Raises:
        DataError: if the manifest is missing from the installed package.
    """
    try:
        text = importlib.resources.files("xmkd.data").joinpath("checksums.json").read_text()
    except (FileNotFoundError, OSError) as e:
        raise DataError(
            "xmkd/data/checksums.json is missing from the installed package: reinstall the project "
            "(pip install -e .) so that the package data is included."
        ) from e
    doc = json.loads(text)
    return Manifest(files=doc["files"], idx_content=doc["idx_content_sha256"], gzip_mtime=doc["gzip_mtime"])


def build_manifest(mirror: str | os.PathLike[str]) -> dict[str, Any]:
    """Compute the manifest document from a reference mirror (maintenance helper).

    Used once to create ``checksums.json`` from ``/work/shared/datasets``; kept so the manifest
    can be regenerated and reviewed. Returns a JSON-ready dict (sorted keys).
    """
    root = Path(mirror)
    paths = [MNIST_5K, MNIST_IMAGES, MNIST_LABELS, ESC50_META]
    paths += [f"{FSDD_DIR}/{p.name}" for p in sorted((root / FSDD_DIR).glob("*.wav"))]
    paths += [f"{ESC50_AUDIO_DIR}/{p.name}" for p in sorted((root / ESC50_AUDIO_DIR).glob("*.wav"))]
    files = {p: sha256_file(root / p) for p in sorted(paths)}
    idx = {
        p: hashlib.sha256(gzip.decompress((root / p).read_bytes())).hexdigest() for p in (MNIST_IMAGES, MNIST_LABELS)
    }
    mtime = {p: int.from_bytes((root / p).read_bytes()[4:8], "little") for p in (MNIST_IMAGES, MNIST_LABELS)}
    return {
        "comment": "sha256 of the raw files, computed from the reference mirror with xmkd.data.sources.build_manifest",
        "files": files,
        "gzip_mtime": mtime,
        "idx_content_sha256": idx,
    }


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
