"""Stage report: comparison tables (markdown + CSV) and plots of every method in params.yaml.

Outputs: reports/results.md, reports/results.csv, reports/accuracy.png, reports/training_curves.png,
metrics/summary.json (headline metrics shown by `dvc exp show`).
"""

from __future__ import annotations

import json
from pathlib import Path

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.report import build_report
from xmkd.runs import method_names, seeds
from xmkd.tracking import stage_run

REPORTS = Path("reports")


def main() -> None:
    params = load_params()
    methods, seed_list = method_names(params), seeds(params)
    teacher_file = Path("metrics/teacher.json")
    teacher = json.loads(teacher_file.read_text()) if teacher_file.exists() else None
    with stage_run("report", params={"methods": methods, "seeds": seed_list}) as tracker:
        summary = build_report(methods, seed_list, Path("metrics/eval"), Path("metrics/train"), teacher, REPORTS)
        Path("metrics/summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        tracker.log_metrics({f"{m}/{k}": v for m, d in summary.items() for k, v in d.items()})
        tracker.log_artifact(REPORTS)
        print((REPORTS / "results.md").read_text())


if __name__ == "__main__":
    run_main(main)
