"""CORSMAL Containers Manipulation, filling type, as precomputed feature sequences (docs/corsmal.md).

The mirror (``$XMKD_DATA_MIRROR/corsmal``, default ``../shared/datasets/corsmal``; read, never copied) holds,
per container c = 1..9 and recording ``s{subject}_fi{type}_fu{level}_b{background}_l{lighting}``:

- ``vggish/<c>/<name>_audio_vggish.npy``: VGGish audio embeddings, (T, 128) float32;
- ``r21d_rgb/<c>/<name>_c<k>_rgb.npy``, k = 1..4: R(2+1)D RGB features of camera k, (T, 512) float32.

Labels come from the file name (``fi``: 0 empty, 1 pasta, 2 rice, 3 water). Folds are the source's
container protocol (v-iashin/CORSMAL; Iashin et al., arXiv 2012.01311): fold k holds out the containers
:data:`FOLDS` ``[k]`` and trains on the other six.

Split decision (documented in docs/corsmal.md): the held-out containers of a fold are this pipeline's
``testing`` subset (the reported numbers, last epoch); there is no ``validation`` subset, so no model is
selected on anything. The published figures select the best epoch on the held-out containers themselves; the
``f1_best_epoch`` metric reproduces that, labelled optimistic, for comparison only.

The clip id is ``c{container}_{name}`` (a recording name repeats across containers).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmkd.data.sequences import load_sequence
from xmkd.errors import DataError

LABELS = ["empty", "pasta", "rice", "water"]
FOLDS: dict[int, tuple[int, ...]] = {0: (3, 6, 9), 1: (2, 5, 8), 2: (1, 4, 7)}
CONTAINERS = tuple(range(1, 10))
CAMERAS = (1, 2, 3, 4)
AUDIO_DIM, VIDEO_DIM = 128, 512
_NAME = re.compile(r"^s(?P<subject>\d+)_fi(?P<type>\d+)_fu(?P<level>\d+)_b(?P<background>\d+)_l(?P<lighting>\d+)$")
_AUDIO_SUFFIX = "_audio_vggish.npy"


def default_root() -> Path:
    """``$XMKD_DATA_MIRROR/corsmal`` (default mirror ``../shared/datasets``)."""
    return Path(os.environ.get("XMKD_DATA_MIRROR", "../shared/datasets")) / "corsmal"


def parse_name(name: str) -> dict[str, int]:
    """Fields of a CORSMAL recording name, e.g. ``s0_fi2_fu1_b0_l1`` -> {subject 0, type 2, level 1, ...}.

    Raises:
        DataError: the name does not follow ``s{subject}_fi{type}_fu{level}_b{background}_l{lighting}``, or
            the filling type is not 0-3.
    """
    m = _NAME.match(name)
    if m is None:
        raise DataError(f"CORSMAL recording name {name!r} does not follow s<subject>_fi<type>_fu<level>_b<bg>_l<light>"
                        " (e.g. s0_fi2_fu1_b0_l1): rename the file or remove it from the folder.")
    fields = {k: int(v) for k, v in m.groupdict().items()}
    if not 0 <= fields["type"] < len(LABELS):
        raise DataError(f"CORSMAL recording {name!r}: filling type fi{fields['type']} is not one of 0-3 ({LABELS}).")
    return fields


def fold_subset(container: int, fold: int) -> str:
    """``testing`` if ``container`` is held out in ``fold`` (0, 1, 2), else ``training``.

    Raises:
        DataError: unknown fold.
    """
    if fold not in FOLDS:
        raise DataError(f"CORSMAL fold {fold} does not exist: use 0, 1 or 2 (held-out containers {FOLDS}).")
    return "testing" if container in FOLDS[fold] else "training"


def inner_split(fold: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(training containers, validation containers) for calibrating inside ``fold``'s training containers: the
    held-out containers of fold k + 2 train, those of fold k + 1 validate (mod 3); fold k's own held-out
    containers are never used. E.g. fold 0 (held out {3, 6, 9}): train on {1, 4, 7}, validate on {2, 5, 8}.

    Raises:
        DataError: unknown fold.
    """
    if fold not in FOLDS:
        raise DataError(f"CORSMAL fold {fold} does not exist: use 0, 1 or 2 (held-out containers {FOLDS}).")
    return FOLDS[(fold + 2) % 3], FOLDS[(fold + 1) % 3]


@dataclass(frozen=True)
class Recording:
    """One labelled recording: ``id`` ``c{container}_{name}``, its container, name, fields and files."""

    id: str
    container: int
    name: str
    fields: dict[str, int]
    audio: Path
    video: tuple[Path, ...]

    @property
    def label(self) -> str:
        """Filling-type name."""
        return LABELS[self.fields["type"]]


def scan(root: str | os.PathLike[str] | None = None, containers: tuple[int, ...] | None = None) -> list[Recording]:
    """Every recording of ``containers`` (default: the labelled containers 1-9 present under ``vggish/``) under
    ``root``, sorted by (container, name).

    Raises:
        DataError: the folder is missing, a container folder has no audio file, a file name breaks the grammar,
            or a recording lacks one of its 4 camera files (the error names the file).
    """
    root = Path(root) if root is not None else default_root()
    if not (root / "vggish").is_dir() or not (root / "r21d_rgb").is_dir():
        raise DataError(f"{root} lacks vggish/ or r21d_rgb/: point --root (or XMKD_DATA_MIRROR) at the CORSMAL "
                        "features folder (docs/corsmal.md).")
    if containers is None:
        containers = tuple(c for c in CONTAINERS if (root / "vggish" / str(c)).is_dir())
    out = []
    for c in containers:
        files = sorted((root / "vggish" / str(c)).glob(f"*{_AUDIO_SUFFIX}"))
        if not files:
            raise DataError(f"{root / 'vggish' / str(c)} holds no *{_AUDIO_SUFFIX} file: container {c} is missing.")
        for f in files:
            name = f.name[: -len(_AUDIO_SUFFIX)]
            fields = parse_name(name)
            cams = tuple(root / "r21d_rgb" / str(c) / f"{name}_c{k}_rgb.npy" for k in CAMERAS)
            lacking = [str(p) for p in cams if not p.is_file()]
            if lacking:
                raise DataError(f"recording {name} of container {c} has audio but no video file {lacking[0]}: "
                                "restore it, or remove the recording's audio file too.")
            out.append(Recording(f"c{c}_{name}", c, name, fields, f, cams))
    return out


def corsmal_annotation(recordings: list[Recording], fold: int) -> dict[str, Any]:
    """The annotation of ``fold`` in the reference format (``{"labels", "database": {id: {"subset", "label"}}}``),
    plus ``container`` per entry (ignored by readers of the format).

    Raises:
        DataError: unknown fold, or a fold with no training or no testing recording among ``recordings``.
    """
    db = {r.id: {"subset": fold_subset(r.container, fold), "label": r.label, "container": r.container}
          for r in recordings}
    present = {e["subset"] for e in db.values()}
    if present != {"training", "testing"}:
        raise DataError(f"CORSMAL fold {fold}: the recordings give only the subsets {sorted(present)}; the fold "
                        f"holds out containers {FOLDS[fold]} and trains on the others: include both kinds.")
    return {"labels": list(LABELS), "database": db}


def load_views(recordings: list[Recording], modality: str = "video") -> list[list[np.ndarray]]:
    """Every recording's checked feature sequences, ragged (not padded): 4 camera arrays (T, 512) for ``video``,
    one (T, 128) for ``audio``; in ``recordings`` order.

    Raises:
        DataError: from :func:`xmkd.data.sequences.load_sequence`, naming the bad file; an unknown modality.
    """
    if modality == "video":
        return [[load_sequence(p, VIDEO_DIM) for p in r.video] for r in recordings]
    if modality == "audio":
        return [[load_sequence(r.audio, AUDIO_DIM)] for r in recordings]
    raise DataError(f"CORSMAL modality {modality!r}: use 'video' or 'audio'.")


@dataclass(frozen=True)
class FoldSplit:
    """One fold's labels and subsets, read from its annotation (the output of the ``layouts corsmal`` command).

    Attributes:
        ids: (N,) clip ids in the order of the recordings they were matched to.
        labels: (N,) int64 class index into ``label_names``. subsets: (N,) ``training`` / ``testing``.
    """

    ids: list[str]
    labels: np.ndarray
    subsets: np.ndarray
    label_names: list[str]

    def indices(self, subset: str) -> np.ndarray:
        """(n,) rows of ``subset``, ascending."""
        return np.flatnonzero(self.subsets == subset).astype(np.int64)


def read_fold(annotation: str | os.PathLike[str], ids: list[str]) -> FoldSplit:
    """Labels and subsets of the clips ``ids`` (e.g. :func:`scan` order) from a fold's annotation file.

    Raises:
        DataError: the file is missing or not an annotation, lacks one of ``ids``, or names a label outside its
            ``labels`` list; the message says to re-run the layout.
    """
    import json

    path = Path(annotation)
    hint = f"re-write it: python -m xmkd.data.layouts corsmal --fold K --out {path}"
    try:
        ann = json.loads(path.read_text())
        names, db = list(ann["labels"]), ann["database"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a readable CORSMAL annotation ({type(e).__name__}: {e}): {hint}.") from None
    lacking = [i for i in ids if i not in db]
    if lacking:
        raise DataError(f"{path} does not list {len(lacking)} of the {len(ids)} recordings (e.g. {lacking[0]}): "
                        f"it is from another copy of the data; {hint}.")
    bad = sorted({db[i]["label"] for i in ids} - set(names))
    if bad:
        raise DataError(f"{path} gives labels {bad} that are not in its 'labels' {names}: {hint}.")
    labels = np.array([names.index(db[i]["label"]) for i in ids], np.int64)
    return FoldSplit(list(ids), labels, np.array([db[i]["subset"] for i in ids]), names)


def layout_command(root: str | None, fold: int, check: bool = True) -> dict[str, Any]:
    """``python -m xmkd.data.layouts corsmal``: scan ``root``, optionally check every file, return the annotation.

    Raises:
        DataError: see :func:`scan`, :func:`corsmal_annotation`, :func:`~xmkd.data.sequences.load_sequence`.
    """
    recs = scan(root)
    if check:
        for r in recs:
            load_sequence(r.audio, AUDIO_DIM)
            for p in r.video:
                load_sequence(p, VIDEO_DIM)
    return corsmal_annotation(recs, fold)
