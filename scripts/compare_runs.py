"""Compare the per-seed test metrics of two checkouts of this pipeline, run by run (timings ignored).

The check behind "the same params and seeds give the same metrics": after the same `dvc repro` / profile in two
checkouts (two commits, two machines, two workspaces), every ``metrics/eval/<run>.json`` present in both is
compared value by value over every seed, and the teachers' metrics files likewise. Used for issue 13's
before/after-the-refactor check (docs/reproducibility.md). Usage, from anywhere::

    python scripts/compare_runs.py /path/to/checkout-a /path/to/checkout-b

Prints one line per run (identical, or the largest absolute difference and each seed's top-1) and exits with 1
when any run present in both differs, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TEACHER_FILES = ("metrics/teacher.json", "metrics/teacher_pretrain.json")


def _untimed(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without wall-clock entries (keys containing ``second``), which differ between any two runs."""
    return {k: v for k, v in metrics.items() if "second" not in k}


def compare_run(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, float]:
    """(number of values compared, largest absolute difference; ``inf`` for a non-numeric mismatch or a missing
    value) between two ``metrics/eval/<run>.json`` documents' ``seeds`` sections."""
    n, worst = 0, 0.0
    sa, sb = a["seeds"], b["seeds"]
    for seed in sorted(set(sa) | set(sb)):
        ma, mb = _untimed(sa.get(seed, {})), _untimed(sb.get(seed, {}))
        for key in sorted(set(ma) | set(mb)):
            n += 1
            va, vb = ma.get(key), mb.get(key)
            if va == vb:
                continue
            numeric = isinstance(va, (int, float)) and isinstance(vb, (int, float))
            worst = max(worst, abs(va - vb) if numeric else float("inf"))
    return n, worst


def _load(path: Path) -> dict[str, Any]:
    """A metrics file as a dict; an unreadable file or an eval file without ``seeds`` is a ``SystemExit`` naming it."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read {path}: {err}; re-create it with `dvc repro` (or `dvc checkout`)") from err
    if path.parent.name == "eval" and not isinstance(doc.get("seeds"), dict):
        raise SystemExit(f"error: {path} has no 'seeds' section: not a metrics/eval file of this pipeline")
    return doc


def _top1(doc: dict[str, Any]) -> str:
    """Each seed's top-1, e.g. ``"0.340 0.367 0.303"``."""
    return " ".join(f"{doc['seeds'][s].get('top1', float('nan')):.3f}" for s in sorted(doc["seeds"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the first checkout (its metrics/eval is read)")
    parser.add_argument("b", type=Path, help="the second checkout")
    args = parser.parse_args(argv)
    for root in (args.a, args.b):
        if not (root / "metrics/eval").is_dir():
            parser.error(f"{root}/metrics/eval does not exist: run the pipeline there first (dvc repro)")
    runs_a = {f.name for f in (args.a / "metrics/eval").glob("*.json")}
    runs_b = {f.name for f in (args.b / "metrics/eval").glob("*.json")}
    differ = 0
    for name in sorted(runs_a | runs_b):
        stem = name.removesuffix(".json")
        if name not in runs_b or name not in runs_a:
            print(f"{stem:<22} only in {args.a if name in runs_a else args.b}")
            continue
        ja, jb = _load(args.a / "metrics/eval" / name), _load(args.b / "metrics/eval" / name)
        n, worst = compare_run(ja, jb)
        if worst == 0:
            print(f"{stem:<22} identical ({n} values; top-1 per seed {_top1(ja)})")
        else:
            differ += 1
            print(f"{stem:<22} DIFFERENT (largest |diff| {worst:.4g}; top-1 {_top1(ja)} vs {_top1(jb)})")
    for name in TEACHER_FILES:
        pa, pb = args.a / name, args.b / name
        if pa.exists() and pb.exists():
            same = _untimed(_load(pa)) == _untimed(_load(pb))
            differ += not same
            print(f"{name} {'identical (timings ignored)' if same else 'DIFFERENT'}")
    print(f"{'no run differs' if not differ else f'{differ} differ'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
