"""Reading precomputed embeddings (a directory or a tar archive of ``<Class>/<video_id>.npy``), checking each file
and aligning them to the requested clip ids."""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmkd.errors import DataError

#: Archive suffixes read with :mod:`tarfile` (anything else must be a directory).
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class LoadedEmbeddings:
    """Embeddings read from a source, aligned to requested ids.

    Attributes:
        ids: ids of the rows, in the requested order (requested ids without an embedding left out).
        embeddings: (N, D) float32, row i = ``ids[i]``.
        missing: requested ids without an embedding in the source (empty unless ``on_missing="skip"``).
        folders: class folder of each row's file (``""`` when the file lies at the top level).
        n_unused: embeddings in the source that were not requested.
    """

    ids: list[str]
    embeddings: np.ndarray
    missing: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    n_unused: int = 0


def _is_junk(parts: Sequence[str]) -> bool:
    """macOS resource forks (``._x``) and ``__MACOSX`` folders, hidden files."""
    return any(p == "__MACOSX" for p in parts) or parts[-1].startswith(".")


def _entries(source: Path) -> Iterator[tuple[str, str, str, Any]]:
    """Yield ``(id, class folder, path shown in messages, reader)`` for every ``.npy`` in ``source``.

    ``reader()`` returns the file's bytes; for archives it must be called before the next entry is requested
    (one sequential pass).
    """
    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                rel = Path(dirpath, name).relative_to(source)
                if not name.endswith(".npy") or _is_junk(rel.parts):
                    continue
                path = Path(dirpath, name)
                folder = rel.parts[-2] if len(rel.parts) > 1 else ""
                yield name[: -len(".npy")], folder, str(path), path.read_bytes
        return
    try:
        tf = tarfile.open(source, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"teacher embeddings {source}: not a readable tar archive ({e}): re-download or unpack it.") from e
    with tf:
        try:
            for m in tf:
                parts = m.name.split("/")
                if not m.isfile() or not m.name.endswith(".npy") or _is_junk(parts):
                    continue
                folder = parts[-2] if len(parts) > 1 else ""

                def read(m: tarfile.TarInfo = m) -> bytes:
                    fh = tf.extractfile(m)
                    if fh is None:
                        raise DataError(f"teacher embeddings {source}: member {m.name} cannot be read.")
                    return fh.read()

                yield parts[-1][: -len(".npy")], folder, f"{source}:{m.name}", read
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(
                f"teacher embeddings {source}: the archive is corrupt or truncated ({e}): re-download it."
            ) from e


def _parse_npy(data: bytes, where: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"teacher embedding {where} is not a valid .npy file ({e}): regenerate it.") from e
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DataError(f"teacher embedding {where} holds {getattr(arr, 'dtype', type(arr))}, not real numbers.")
    if arr.ndim == 2 and arr.shape[0] == 1:  # (1, D) -> (D,)
        arr = arr[0]
    return arr


def _first(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f" (and {len(items) - k} more)" if len(items) > k else "")


def load_embeddings(
    source: str | os.PathLike[str], ids: Sequence[str], on_missing: Literal["error", "skip"] = "error"
) -> LoadedEmbeddings:
    """Read the embedding of every id in ``ids`` from ``source`` (directory or tar archive), in that order.

    Each file must hold one vector: shape (D,) or (1, D), a real dtype (converted to float32), finite values, and
    the same D for every file.

    Args:
        source: directory or ``.tar``/``.tar.gz``/``.tgz`` of ``<Class>/<video_id>.npy`` (see module docstring).
        ids: the clip ids, in the row order wanted (e.g. the feature cache's manifest order); unique.
        on_missing: ``"error"`` or ``"skip"`` (see :class:`TeacherImportConfig`).

    Returns:
        A :class:`LoadedEmbeddings` whose ``embeddings`` is (N, D) float32 aligned to its ``ids``.

    Raises:
        DataError: ``source`` missing or unreadable; ``ids`` has duplicates; an id occurs twice in the source; a
            file is not a valid .npy, is not one vector, has a different D than the others or holds NaN/inf;
            an id has no file (``on_missing="error"``: the count and the first ids are named); nothing is left.
    """
    src = Path(source)
    if not src.exists():
        raise DataError(
            f"teacher embeddings {src} not found: set teacher_import.source to the directory or .tar.gz of "
            "<Class>/<video_id>.npy files (a relative path resolves against the working directory: the project root"
            " when DVC runs the stage)."
        )
    if not src.is_dir() and not src.name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"teacher embeddings {src}: expected a directory or one of {list(ARCHIVE_SUFFIXES)}.")
    wanted = {vid: i for i, vid in enumerate(ids)}
    if len(wanted) != len(ids):
        dup = sorted(v for v, n in Counter(ids).items() if n > 1)
        raise DataError(f"clip ids to align must be unique; duplicated: {_first(dup)}. Fix the annotation.")
    found: dict[str, tuple[str, str, np.ndarray]] = {}  # id -> (path, folder, vector)
    seen: dict[str, str] = {}
    n_files = 0
    for vid, folder, where, read in _entries(src):
        n_files += 1
        if vid in seen:
            if vid in wanted:
                raise DataError(
                    f"teacher embeddings: id {vid!r} occurs twice in {src}: {seen[vid]} and {where}; keep one file "
                    "per video id."
                )
            continue
        seen[vid] = where
        if vid in wanted:
            found[vid] = (where, folder, _parse_npy(read(), where))
    if n_files == 0:
        raise DataError(f"teacher embeddings {src} contain no .npy file: expected <Class>/<video_id>.npy files.")
    missing = [v for v in ids if v not in found]
    if missing and on_missing == "error":
        raise DataError(
            f"{len(missing)} of {len(ids)} clips have no teacher embedding in {src}: {_first(missing)}. Provide "
            "<Class>/<id>.npy for them, drop them from the annotation, or set teacher_import.on_missing: skip."
        )
    kept = [v for v in ids if v in found]
    if not kept:
        raise DataError(
            f"none of the {len(ids)} clip ids has an embedding in {src} (it holds {n_files} .npy files, e.g. "
            f"{next(iter(seen))}): the source does not belong to this annotation."
        )
    shapes: dict[tuple[int, ...], list[str]] = {}
    for v in kept:
        shapes.setdefault(found[v][2].shape, []).append(v)
    common = max(shapes, key=lambda s: len(shapes[s]))
    if len(common) != 1:
        v = shapes[common][0]
        raise DataError(
            f"teacher embeddings must be one vector per video (shape (D,) or (1, D)); {len(shapes[common])} file(s) "
            f"have shape {common}, e.g. {found[v][0]}. Pool or regenerate them to one D-vector per video."
        )
    if len(shapes) > 1:
        odd = [v for s, vs in shapes.items() if s != common for v in vs]
        raise DataError(
            f"{len(odd)} teacher embedding(s) differ from the shape {common} of the other {len(shapes[common])}, "
            f"e.g. {found[odd[0]][0]} has shape {found[odd[0]][2].shape}: every video needs a vector of the same D. "
            "Regenerate them."
        )
    emb = np.stack([found[v][2] for v in kept]).astype(np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        names = [found[kept[i]][0] for i in np.flatnonzero(bad)]
        raise DataError(f"{int(bad.sum())} teacher embedding(s) hold NaN or inf values: {_first(names, 3)}. Regenerate them.")
    return LoadedEmbeddings(
        ids=kept, embeddings=emb, missing=missing, folders=[found[v][1] for v in kept], n_unused=len(seen) - len(kept)
    )
