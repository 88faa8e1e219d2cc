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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the first checkout (its metrics/eval is read)")
    parser.add_argument("b", type=Path, help="the second checkout")
    args = parser.parse_args(argv)
    for root in (args.a, args.b):
        if not (root / "metrics/eval").is_dir():
            parser.error(f"{root}/metrics/eval does not exist: run the pipeline there first (dvc repro)")
    differ = 0
    for fa in sorted((args.a / "metrics/eval").glob("*.json")):
        fb = args.b / "metrics/eval" / fa.name
        if not fb.exists():
            print(f"{fa.stem:<22} only in {args.a}")
            continue
        ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
        n, worst = compare_run(ja, jb)

        def top1(doc: dict[str, Any]) -> str:
            return " ".join(f"{doc['seeds'][s].get('top1', float('nan')):.3f}" for s in sorted(doc["seeds"]))

        if worst == 0:
            print(f"{fa.stem:<22} identical ({n} values; top-1 per seed {top1(ja)})")
        else:
            differ += 1
            print(f"{fa.stem:<22} DIFFERENT (largest |diff| {worst:.4g}; top-1 {top1(ja)} vs {top1(jb)})")
    for name in TEACHER_FILES:
        pa, pb = args.a / name, args.b / name
        if pa.exists() and pb.exists():
            same = _untimed(json.loads(pa.read_text())) == _untimed(json.loads(pb.read_text()))
            differ += not same
            print(f"{name} {'identical (timings ignored)' if same else 'DIFFERENT'}")
    print(f"{'no run differs' if not differ else f'{differ} differ'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
