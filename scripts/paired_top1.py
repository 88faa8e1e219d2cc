"""Paired top-1 differences over seeds between any two methods, on the clean sound (rate 0) and as built.

The report pairs every method with ``none`` and MNF+CSC with the others; this script pairs any method with any
other, e.g. the baselines that issue 16 added against none, kd and MNF+CSC. It reads the per-seed evaluation files
of a finished ``dvc repro`` (``metrics/eval/<run>.json``): ``<method>.json`` for the benchmark as built
(``benchmark.irrelevant_rate``) and ``robust-<method>-0.0.json`` for rate 0 (``none`` does not hear sound, so its
one run serves both). A rate whose runs are missing is skipped with a line that says which command makes them, e.g.
``dvc exp run -S 'robustness.methods=[c2kd,mfh]' -S 'robustness.rates=[0.0]'``. Cells: mean over seeds [95% t
interval], in points (xmkd.stats.paired_difference). Usage, from the repo root::

    python scripts/paired_top1.py --methods c2kd mfh --against none kd mnf_csc [--eval-dir metrics/eval]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xmkd.stats import describe, paired_difference


def seed_top1(eval_dir: Path, run: str) -> dict[str, float] | None:
    """Top-1 (%) per seed of one run, or None when its evaluation file does not exist.

    Raises:
        KeyError: the file exists but has no ``seeds`` / ``top1`` entries (not an evaluation file).
    """
    path = eval_dir / f"{run}.json"
    if not path.exists():
        return None
    seeds = json.loads(path.read_text())["seeds"]
    return {seed: 100.0 * values["top1"] for seed, values in seeds.items()}


def run_name(method: str, rate: float | None) -> str:
    """The run that holds ``method`` at irrelevant rate ``rate`` (None: the benchmark as built)."""
    if rate is None or method == "none":
        return method
    return f"robust-{method}-{rate:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", required=True, help="the methods to compare")
    parser.add_argument("--against", nargs="+", default=["none", "kd", "mnf_csc"], help="what they are compared with")
    parser.add_argument("--eval-dir", type=Path, default=Path("metrics/eval"))
    args = parser.parse_args()
    for label, rate in (("rate 0 (clean sound)", 0.0), ("as built", None)):
        names = {m: run_name(m, rate) for m in [*args.methods, *args.against]}
        top1 = {m: seed_top1(args.eval_dir, run) for m, run in names.items()}
        missing = sorted(run for m, run in names.items() if top1[m] is None)
        if missing:
            print(f"{label}: skipped, no {', '.join(missing)} in {args.eval_dir} (see this script's docstring)")
            continue
        print(f"{label}: " + ", ".join(f"{m} {describe(top1[m].values()).mean:.1f}" for m in names))
        for a in args.methods:
            for b in args.against:
                if a != b:
                    est = paired_difference(top1[a], top1[b]).seed_estimate
                    print(f"  {a} - {b}: {est.mean:+.1f} [{est.ci_low:+.1f}, {est.ci_high:+.1f}]")


if __name__ == "__main__":
    main()
