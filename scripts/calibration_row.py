"""One row of the README's regime-calibration table, from the metrics files of a `none` + `kd` run.

    dvc exp run -n <trial> -S 'methods=[none,kd]' -S 'ablations={}' -S 'robustness.methods=[]' \
        -S 'reverse.methods=[]' -S benchmark.irrelevant_rate=0.0 -S <the trial's keys> distill@none distill@kd
    python scripts/calibration_row.py <trial>

Prints: test top-1 of none and kd (mean over seeds [95% t interval], %), none's final training top-1
(over labelled clips), kd − none with its paired t interval over seeds and the paired bootstrap over test
clips (10,000 resamples, seed 0), the teacher's test top-1, and the mean training time per seed.
The calibration rule (issue 11): kd − none >= +3 points with both intervals above zero, over >= 3 seeds,
and none >= 10 points below the teacher on clean sound.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from xmkd import stats

ROOT = Path(__file__).resolve().parents[1]


def _pct(e: stats.Estimate) -> str:
    return f"{100 * e.mean:.1f} [{100 * e.ci_low:.1f}, {100 * e.ci_high:.1f}]"


def main(name: str) -> None:
    ev = {m: json.loads((ROOT / f"metrics/eval/{m}.json").read_text())["seeds"] for m in ("none", "kd")}
    tr = {m: json.loads((ROOT / f"metrics/train/{m}.json").read_text())["seeds"] for m in ("none", "kd")}
    top = {m: {int(s): v["top1"] for s, v in ev[m].items()} for m in ev}
    d = stats.paired_difference(top["kd"], top["none"], ("kd", "none"))
    z = {m: np.load(ROOT / f"data/predictions/{m}.npz") for m in ("none", "kd")}
    if not np.array_equal(z["none"]["ids"], z["kd"]["ids"]):
        raise SystemExit("none and kd were evaluated on different clips: rerun both stages")
    b = stats.paired_bootstrap(
        stats.correctness(z["kd"]["pred"], z["kd"]["labels"]), stats.correctness(z["none"]["pred"], z["none"]["labels"])
    )
    train_top1 = np.mean([h["history"][-1]["train_top1"] for h in tr["none"].values()])
    seconds = np.mean([h["train_seconds"] for m in tr for h in tr[m].values()])
    teacher = json.loads((ROOT / "metrics/teacher.json").read_text()).get("test_top1", float("nan"))
    e = d.seed_estimate
    print(
        f"{name}: none {_pct(stats.describe(top['none'].values()))} (train {100 * train_top1:.1f}) | "
        f"kd {_pct(stats.describe(top['kd'].values()))} | kd-none {100 * e.mean:+.1f} "
        f"[{100 * e.ci_low:+.1f}, {100 * e.ci_high:+.1f}] boot [{100 * b.ci_low:+.1f}, {100 * b.ci_high:+.1f}] | "
        f"teacher test {100 * teacher:.1f} | {seconds:.0f} s/seed"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "trial")
