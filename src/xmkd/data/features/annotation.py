"""The annotation (reference format) and its videos: reading it, sorting its entries, finding each entry's file
under the video folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xmkd.data.video import VIDEO_EXTENSIONS
from xmkd.errors import DataError

#: Subsets sort in this order (others after them, alphabetically); ids sort as strings within a subset.
SUBSET_ORDER: tuple[str, ...] = ("training", "train", "validation", "val", "valid", "testing", "test")


@dataclass(frozen=True)
class AnnotatedVideo:
    """One annotation entry, resolved to a file (``path`` is None if no file was found)."""

    id: str
    subset: str
    label: str
    label_index: int
    path: str | None  # relative to video_dir, POSIX separators


def _subset_key(subset: str) -> tuple[int, str]:
    return (SUBSET_ORDER.index(subset) if subset in SUBSET_ORDER else len(SUBSET_ORDER), subset)


def load_annotation(path: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, str, str, int]]]:
    """Read an annotation file in the reference format.

    Returns:
        ``(labels, entries)``: the class names, and ``(id, subset, label, label_index)`` tuples sorted by
        subset (:data:`SUBSET_ORDER`) then id.

    Raises:
        DataError: if the file is missing, not JSON, lacks ``labels``/``database``, or an entry lacks
            ``subset``/``label`` or names a label not in ``labels``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"annotation file {p} not found: set features.annotation in params.yaml to the annotation JSON "
            "(or run the stage that writes it, e.g. `dvc repro` for the benchmark)."
        )
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {p} is not valid JSON ({e}): regenerate it.") from e
    fmt = '{"labels": [...], "database": {id: {"subset": ..., "label": ...}}}'
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or not isinstance(
        data.get("database"), dict
    ):
        raise DataError(f"annotation file {p} must be a JSON object {fmt}: fix the file.")
    labels = [str(x) for x in data["labels"]]
    if len(set(labels)) != len(labels):
        raise DataError(f"annotation file {p}: 'labels' has duplicate names: make them unique.")
    index = {name: i for i, name in enumerate(labels)}
    entries = []
    for vid, meta in data["database"].items():
        if not isinstance(meta, dict) or "subset" not in meta or "label" not in meta:
            raise DataError(f"annotation file {p}: entry {vid!r} must have 'subset' and 'label' ({fmt}): fix it.")
        label = str(meta["label"])
        if label not in index:
            raise DataError(
                f"annotation file {p}: entry {vid!r} has label {label!r}, which is not in 'labels': "
                "add it to 'labels' or fix the entry."
            )
        entries.append((str(vid), str(meta["subset"]), label, index[label]))
    entries.sort(key=lambda e: (*_subset_key(e[1]), e[0]))
    return labels, entries


def index_video_dir(video_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Map each file stem under ``video_dir`` (recursively) to its paths relative to ``video_dir``.

    Only files with an extension in :data:`xmkd.data.video.VIDEO_EXTENSIONS` count. Paths use POSIX
    separators and are sorted.

    Raises:
        DataError: if ``video_dir`` is not a directory.
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise DataError(
            f"video folder {root} not found: set features.video_dir in params.yaml to the folder holding the "
            "videos (e.g. <root>/<Class>/<id>.avi), or run the stage that writes it."
        )
    out: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                rel = Path(dirpath, name).relative_to(root).as_posix()
                out.setdefault(stem, []).append(rel)
    return out


def resolve_videos(
    video_dir: str | os.PathLike[str],
    entries: Iterable[tuple[str, str, str, int]],
    files: dict[str, list[str]] | None = None,
) -> list[AnnotatedVideo]:
    """Find the file of each annotation entry: ``<label>/<id>.*`` first, else a unique ``<id>.*`` anywhere.

    Args:
        video_dir: the video folder.
        entries: ``(id, subset, label, label_index)`` tuples (see :func:`load_annotation`).
        files: the output of :func:`index_video_dir` for ``video_dir`` (computed if None).

    Returns:
        One :class:`AnnotatedVideo` per entry, in the given order; ``path`` is None when no file matches.

    Raises:
        DataError: if ``video_dir`` is missing, or an id matches several files ambiguously.
    """
    if files is None:
        files = index_video_dir(video_dir)
    out = []
    for vid, subset, label, label_index in entries:
        candidates = files.get(vid, [])
        in_label = [c for c in candidates if Path(c).parent.name == label]
        pick = in_label if in_label else candidates
        if len(pick) > 1:
            raise DataError(
                f"video id {vid!r} matches several files under {video_dir}: {pick}; "
                "keep one file per id (remove or rename the others)."
            )
        out.append(AnnotatedVideo(vid, subset, label, label_index, pick[0] if pick else None))
    return out
