"""Annotations in the reference format from common dataset layouts.

The pipeline reads any folder of videos plus an annotation (see :mod:`xmkd.data.features`)::

    {"labels": ["ClassA", ...], "database": {"<video id>": {"subset": "training", "label": "ClassA"}, ...}}

This module writes such an annotation from

- **UCF101's official split files** (``ucfTrainTestlist/``: ``classInd.txt``, ``trainlist0N.txt``,
  ``testlist0N.txt``), optionally keeping only a list of classes, e.g. the 51 UCF51 classes of the paper. The train
  list becomes ``training`` and the test list ``validation``, as in the reference UCF51 annotation
  (GeWu-Lab/cross-modal-distillation ``datasets/ucf_51/annotation.json``). Video id = the file name without
  extension (``v_ApplyEyeMakeup_g08_c01``), which :func:`xmkd.data.features.resolve_videos` finds as
  ``<video_dir>/<label>/<id>.avi`` or, failing that, as the unique ``<id>.*`` anywhere under ``video_dir``.
  Class names are matched case-insensitively because UCF101 itself disagrees (class ``HandstandPushups``,
  files ``v_HandStandPushups_*``; the reference annotation spells the label ``HandStandPushups``); the label
  keeps the spelling of the class list when one is given, else that of ``classInd.txt``.
- **class folders** ``<root>/<Class>/<video>.<ext>`` (any extension in
  :data:`xmkd.data.video.VIDEO_EXTENSIONS`), split per class into training / validation (/ testing) with a seeded,
  stratified draw.

CLI::

    python -m xmkd.data.layouts ucf101 --splits ucfTrainTestlist --split 1 \\
        --classes-from ../shared/datasets/ucf51/annotation.json --out data/ucf51/annotation.json
    python -m xmkd.data.layouts folders --root /data/myvideos --val 0.2 --test 0.1 --seed 0 --out annotation.json
    python -m xmkd.data.layouts rename-subset --annotation ../shared/datasets/ucf51/annotation.json \\
        --old validation --new testing --out data/ucf51/annotation.json
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmkd.data.features import load_annotation
from xmkd.data.video import VIDEO_EXTENSIONS
from xmkd.errors import DataError

#: Subset names written, in this order.
TRAINING, VALIDATION, TESTING = "training", "validation", "testing"

Annotation = dict[str, Any]


def _ordered(labels: list[str], rows: dict[str, tuple[str, str]]) -> Annotation:
    """Reference-format dict; database sorted by subset (training, validation, testing), then id."""
    order = {TRAINING: 0, VALIDATION: 1, TESTING: 2}
    db = {
        vid: {"subset": subset, "label": label}
        for vid, (subset, label) in sorted(rows.items(), key=lambda kv: (order.get(kv[1][0], 3), kv[0]))
    }
    return {"labels": list(labels), "database": db}


def _close(name: str, known: Sequence[str]) -> str:
    m = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines (1-based line number, stripped text); CRLF and a BOM are fine."""
    text = path.read_text(encoding="utf-8-sig")
    return [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip() and not s.strip().startswith("#")]


# ----------------------------------------------------------------------------------------------- class lists


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file (one per line; ``#`` comments and blank lines ignored) or, for a ``.json``
    file, from an annotation's ``labels`` (or a plain JSON list of names).

    Raises:
        DataError: the file is missing, unreadable, empty, or names a class twice.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class list {p} not found: give a text file with one class name per line.")
    if p.suffix.lower() == ".json":
        return classes_from_annotation(p)
    names = [s for _, s in _lines(p)]
    return _check_names(names, p)


def classes_from_annotation(path: str | os.PathLike[str]) -> list[str]:
    """The ``labels`` of an annotation file in the reference format (or a JSON list of names), in their order.

    Raises:
        DataError: the file is missing, not JSON, or has no list of labels.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"annotation {p} not found: --classes-from needs an annotation JSON with 'labels'.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p} is not valid JSON ({e}).") from e
    labels = data.get("labels") if isinstance(data, dict) else data
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{p} has no 'labels' list of class names (reference annotation format).")
    return _check_names(labels, p)


def _check_names(names: list[str], where: Path) -> list[str]:
    if not names:
        raise DataError(f"class list {where} is empty: list at least one class.")
    dup = [n for n, c in Counter(n.lower() for n in names).items() if c > 1]
    if dup:
        raise DataError(f"class list {where} names these classes more than once (case-insensitively): {dup[:5]}.")
    return names


# ----------------------------------------------------------------------------------------------- UCF101


def ucf101_annotation(
    splits_dir: str | os.PathLike[str],
    split: int = 1,
    classes: Sequence[str] | None = None,
    test_subset: str = VALIDATION,
) -> Annotation:
    """Annotation from UCF101's official split files.

    Args:
        splits_dir: folder with ``classInd.txt``, ``trainlist0{split}.txt``, ``testlist0{split}.txt`` (the official
            ``ucfTrainTestlist``). Lines: ``"<index> <Class>"``; ``"<Class>/<video>.avi <index>"``;
            ``"<Class>/<video>.avi"`` (a trailing index is accepted in test lists too and checked).
        split: the split number N (UCF101 has 1, 2, 3).
        classes: keep only these classes (matched case-insensitively against ``classInd.txt``; the label keeps
            this spelling, and ``labels`` this order). ``None``: all classes, ``classInd.txt`` spelling and order.
        test_subset: subset name of the test list's videos (``validation`` as in the reference UCF51 annotation,
            or ``testing``).

    Returns:
        ``{"labels": [...], "database": {video_id: {"subset", "label"}}}``; the database is sorted by subset, then id.

    Raises:
        DataError: a split file is missing or malformed; a class in ``classes`` is not a UCF101 class; a line names
            a class that ``classInd.txt`` lacks or an index that disagrees with it; a video id occurs twice (within
            a list, or in both lists); no video is left.
    """
    root = Path(splits_dir)
    if split < 1:
        raise DataError(f"--split must be >= 1 (UCF101 has splits 1, 2, 3), got {split}.")
    if test_subset not in (VALIDATION, TESTING):
        raise DataError(f"test_subset must be {VALIDATION!r} or {TESTING!r}, got {test_subset!r}.")
    files = {k: root / f"{k}{split:02d}.txt" for k in ("trainlist", "testlist")}
    files = {"classInd": root / "classInd.txt", **files}
    lacking = [str(p) for p in files.values() if not p.is_file()]
    if lacking:
        raise DataError(
            f"UCF101 split files not found: {lacking}. Point --splits at the official 'ucfTrainTestlist' folder "
            f"(classInd.txt, trainlist0{split}.txt, testlist0{split}.txt) and check --split."
        )
    class_index: dict[str, int] = {}  # lower-case name -> index
    spelled: dict[str, str] = {}  # lower-case name -> classInd spelling
    for n, line in _lines(files["classInd"]):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{files['classInd']} line {n}: expected '<index> <ClassName>', got {line!r}.")
        key = parts[1].lower()
        if key in class_index:
            raise DataError(f"{files['classInd']} line {n}: class {parts[1]!r} is listed twice.")
        class_index[key], spelled[key] = int(parts[0]), parts[1]
    if not class_index:
        raise DataError(f"{files['classInd']} lists no class.")

    if classes is None:
        keep = {k: spelled[k] for k in sorted(class_index, key=class_index.__getitem__)}
    else:
        unknown = [c for c in classes if c.lower() not in class_index]
        if unknown:
            hints = "; ".join(f"{c!r}{_close(c, list(spelled.values()))}" for c in unknown[:5])
            raise DataError(
                f"{len(unknown)} class(es) of the class list are not UCF101 classes in {files['classInd']}: {hints}. "
                "Fix the class list (names are matched case-insensitively)."
            )
        dup = [c for c, k in Counter(c.lower() for c in classes).items() if k > 1]
        if dup:
            raise DataError(f"the class list names these classes more than once: {dup[:5]}.")
        keep = {c.lower(): c for c in classes}

    rows: dict[str, tuple[str, str]] = {}
    where: dict[str, str] = {}
    for kind, subset in (("trainlist", TRAINING), ("testlist", test_subset)):
        path = files[kind]
        for n, line in _lines(path):
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            if len(parts) > 2 or "/" not in rel:
                raise DataError(f"{path} line {n}: expected '<Class>/<video>.<ext>[ <index>]', got {line!r}.")
            cls = rel.split("/")[-2]
            key = cls.lower()
            if key not in class_index:
                raise DataError(
                    f"{path} line {n}: class folder {cls!r} is not in {files['classInd']}{_close(cls, list(spelled.values()))}."
                )
            if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) != class_index[key]):
                raise DataError(
                    f"{path} line {n}: index {parts[1]!r} disagrees with {files['classInd']} "
                    f"({spelled[key]} = {class_index[key]}); are the split files from the same release?"
                )
            vid = Path(rel).stem
            if vid in where:
                raise DataError(
                    f"video id {vid!r} occurs twice: {where[vid]} and {path.name} line {n}. Each video may appear "
                    "once per split; use the official split files."
                )
            where[vid] = f"{path.name} line {n}"
            if key in keep:
                rows[vid] = (subset, keep[key])
    if not rows:
        raise DataError(f"no video of the selected classes is listed in {files['trainlist']} / {files['testlist']}.")
    used = {label for _, label in rows.values()}
    empty = [c for c in keep.values() if c not in used]
    if empty:
        raise DataError(f"these classes have no video in split {split}: {empty[:5]}; check the split files.")
    return _ordered(list(keep.values()), rows)


# ----------------------------------------------------------------------------------------------- class folders


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def class_folders_annotation(
    root: str | os.PathLike[str], val: float = 0.2, test: float = 0.0, seed: int = 0
) -> Annotation:
    """Annotation for ``<root>/<Class>/<video>.<ext>``, with a seeded per-class split.

    Classes are the sub-folders of ``root`` that hold videos, sorted by name (Python string order, as the reference
    annotation's labels); video id = file name without extension; files whose extension is not in
    :data:`~xmkd.data.video.VIDEO_EXTENSIONS` and hidden files are ignored. In every class, ``round(val * n)``
    videos (half up) go to ``validation`` and ``round(test * n)`` to ``testing``, drawn with
    ``numpy.random.default_rng(seed)`` from the ids sorted by name; the rest is ``training``. Same files and seed
    -> the same annotation.

    Args:
        root: the dataset folder.
        val: fraction of every class's videos for validation, in [0, 1).
        test: fraction for testing, in [0, 1); ``val + test < 1``.
        seed: RNG seed of the split.

    Returns:
        The annotation dict (database sorted by subset, then id).

    Raises:
        DataError: ``root`` is missing or has no class folder with videos; a class folder holds no video; the same
            video id occurs twice (ids must be unique across classes); a class is too small to keep a training
            video; fractions out of range.
    """
    base = Path(root)
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise DataError(f"--val {val} and --test {test} must lie in [0, 1) with val + test < 1.")
    if not base.is_dir():
        raise DataError(f"video folder {base} not found: expected <root>/<Class>/<video>.<ext>.")
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"{base} has no class folder: expected <root>/<Class>/<video>.<ext> (one folder per class)."
        )
    by_class: dict[str, list[str]] = {}
    seen: dict[str, Path] = {}
    empty: list[str] = []
    for folder in folders:
        vids = []
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or f.suffix.lower() not in VIDEO_EXTENSIONS or not f.is_file():
                continue
            if f.stem in seen:
                raise DataError(
                    f"video id {f.stem!r} occurs twice: {seen[f.stem]} and {f}. Video ids (file names without "
                    "extension) must be unique across all classes: rename or remove one."
                )
            seen[f.stem] = f
            vids.append(f.stem)
        if vids:
            by_class[folder.name] = vids
        else:
            empty.append(folder.name)
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) under {base} hold no video file ({list(VIDEO_EXTENSIONS)}): "
            f"{empty[:5]}. Add videos or remove the folder(s)."
        )
    rng = np.random.default_rng(seed)
    rows: dict[str, tuple[str, str]] = {}
    for cls, vids in by_class.items():
        n = len(vids)
        n_val, n_test = _half_up(val * n), _half_up(test * n)
        if n_val + n_test >= n and (val > 0 or test > 0):
            raise DataError(
                f"class {cls!r} has {n} video(s): too few to hold out val {val} + test {test} and keep one for "
                "training. Add videos or lower --val/--test."
            )
        order = rng.permutation(n)
        for rank, i in enumerate(order):
            subset = VALIDATION if rank < n_val else TESTING if rank < n_val + n_test else TRAINING
            rows[vids[i]] = (subset, cls)
    return _ordered(list(by_class), rows)


def rename_subset(annotation: Annotation, old: str, new: str) -> Annotation:
    """A copy of ``annotation`` whose videos in subset ``old`` are in subset ``new``.

    E.g. the reference UCF51 annotation names UCF101's test list ``validation``, while this pipeline evaluates the
    ``testing`` subset: ``rename_subset(ann, "validation", "testing")``.

    Raises:
        DataError: no video is in subset ``old`` (the message lists the subsets present).
    """
    db = annotation["database"]
    present = sorted({v["subset"] for v in db.values()})
    if old not in present:
        raise DataError(f"no video is in subset {old!r}; subsets present: {present}.")
    rows = {k: (new if v["subset"] == old else v["subset"], v["label"]) for k, v in db.items()}
    return _ordered(list(annotation["labels"]), rows)


# ----------------------------------------------------------------------------------------------- output


def write_annotation(annotation: Annotation, out: str | os.PathLike[str]) -> Path:
    """Write ``annotation`` as JSON to ``out`` atomically (temp file + rename); return the path."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(annotation, indent=1) + "\n")
    os.replace(tmp, p)
    return p


def summary(annotation: Annotation) -> str:
    """One line: number of classes and videos per subset."""
    counts = Counter(v["subset"] for v in annotation["database"].values())
    parts = ", ".join(f"{s} {counts[s]}" for s in (TRAINING, VALIDATION, TESTING) if counts[s])
    return f"{len(annotation['labels'])} classes, {len(annotation['database'])} videos ({parts})"


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (see the module docstring); errors print ``error: ...`` and exit 1."""
    ap = argparse.ArgumentParser(prog="python -m xmkd.data.layouts", description="Write an annotation JSON.")
    sub = ap.add_subparsers(dest="layout", required=True)
    u = sub.add_parser("ucf101", help="from UCF101's official split files (classInd.txt, trainlist0N, testlist0N)")
    u.add_argument("--splits", required=True, help="folder with the split files (ucfTrainTestlist)")
    u.add_argument("--split", type=int, default=1, help="split number N (default 1)")
    g = u.add_mutually_exclusive_group()
    g.add_argument("--classes", help="text file, one class name per line: keep only these classes")
    g.add_argument("--classes-from", help="annotation JSON whose 'labels' are the classes to keep (e.g. UCF51's)")
    u.add_argument("--test-as", choices=[VALIDATION, TESTING], default=VALIDATION,
                   help="subset of the test list's videos (default validation, as the reference UCF51 annotation)")
    u.add_argument("--out", required=True, help="annotation JSON to write")
    f = sub.add_parser("folders", help="from <root>/<Class>/<video>.<ext>, seeded stratified split")
    f.add_argument("--root", required=True)
    f.add_argument("--val", type=float, default=0.2, help="validation fraction per class (default 0.2)")
    f.add_argument("--test", type=float, default=0.0, help="testing fraction per class (default 0)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True)
    r = sub.add_parser("rename-subset", help="copy an annotation with one subset renamed (validation -> testing)")
    r.add_argument("--annotation", required=True, help="annotation JSON to read")
    r.add_argument("--old", default=VALIDATION, help="subset to rename (default validation)")
    r.add_argument("--new", default=TESTING, help="new name (default testing)")
    r.add_argument("--out", required=True)
    c = sub.add_parser("corsmal", help="CORSMAL filling type from its feature files' names, one container fold")
    c.add_argument("--root", default=None, help="CORSMAL features folder (default $XMKD_DATA_MIRROR/corsmal)")
    c.add_argument("--fold", type=int, required=True, help="0, 1, 2: held-out containers {3,6,9}, {2,5,8}, {1,4,7}")
    c.add_argument("--no-check", action="store_true", help="skip reading every file (shape, dtype, finiteness)")
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    def run() -> None:
        if args.layout == "ucf101":
            classes = (
                read_class_list(args.classes) if args.classes
                else classes_from_annotation(args.classes_from) if args.classes_from else None
            )
            ann = ucf101_annotation(args.splits, args.split, classes, args.test_as)
        elif args.layout == "corsmal":
            from xmkd.data.corsmal import layout_command

            ann = layout_command(args.root, args.fold, check=not args.no_check)
        elif args.layout == "folders":
            ann = class_folders_annotation(args.root, args.val, args.test, args.seed)
        else:
            labels, entries = load_annotation(args.annotation)  # validates the file
            rows = {vid: (subset, label) for vid, subset, label, _ in entries}
            ann = rename_subset(_ordered(labels, rows), args.old, args.new)
        out = write_annotation(ann, args.out)
        print(f"{out}: {summary(ann)}", file=sys.stderr)

    from xmkd.cli import run_main

    run_main(run)


if __name__ == "__main__":
    main()
