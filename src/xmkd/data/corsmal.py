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

from xmkd.data.sequences import load_sequence, pack_sequences
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


@dataclass
class CorsmalArrays:
    """All recordings, packed (:func:`xmkd.data.sequences.pack_sequences`), in :func:`scan` order.

    Attributes:
        ids: (N,) clip ids; containers: (N,) int; labels: (N,) int64 filling type.
        video: (N, 4, T_v, 513) float32, the 4 cameras; audio: (N, 1, T_a, 129) float32.
    """

    ids: list[str]
    containers: np.ndarray
    labels: np.ndarray
    video: np.ndarray
    audio: np.ndarray

    def subset_indices(self, fold: int, subset: str) -> np.ndarray:
        """(n,) rows of ``subset`` (``training`` / ``testing``) in ``fold``."""
        return np.flatnonzero([fold_subset(int(c), fold) == subset for c in self.containers]).astype(np.int64)


def load_arrays(recordings: list[Recording]) -> CorsmalArrays:
    """Read and check every feature file of ``recordings`` (shape, dtype, finiteness) and pack them.

    Raises:
        DataError: from :func:`xmkd.data.sequences.load_sequence`, naming the bad file.
    """
    video = pack_sequences([[load_sequence(p, VIDEO_DIM) for p in r.video] for r in recordings])
    audio = pack_sequences([[load_sequence(r.audio, AUDIO_DIM)] for r in recordings])
    return CorsmalArrays(
        [r.id for r in recordings], np.array([r.container for r in recordings]),
        np.array([r.fields["type"] for r in recordings], np.int64), video, audio,
    )


def layout_command(root: str | None, fold: int, check: bool = True) -> dict[str, Any]:
    """``python -m xmkd.data.layouts corsmal``: scan ``root``, optionally check every file, return the annotation.

    Raises:
        DataError: see :func:`scan`, :func:`corsmal_annotation`, :func:`load_arrays`.
    """
    recs = scan(root)
    if check:
        for r in recs:
            load_sequence(r.audio, AUDIO_DIM)
            for p in r.video:
                load_sequence(p, VIDEO_DIM)
    return corsmal_annotation(recs, fold)
