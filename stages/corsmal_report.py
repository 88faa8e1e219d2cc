"""Stage corsmal report: the CORSMAL table (mean over folds, per fold), the published figures beside the teacher and
`none`, the premise check and the ablations (src/xmkd/report/corsmal.py).

Outputs: corsmal/reports/{results.md, results.csv, summary.csv}, corsmal/metrics/summary.json (`dvc metrics show`).
"""

from __future__ import annotations

import json

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.corsmal_config import resolve_runs
from xmkd.corsmal_paths import OUT, REPORTS, SUMMARY
from xmkd.data.corsmal import FOLDS
from xmkd.report import ReportConfig, flat_metrics
from xmkd.report.corsmal import build_corsmal_report
from xmkd.tracking import stage_run


def main() -> None:
    params = load_params()
    runs = list(resolve_runs(params).values())
    cfg = ReportConfig.from_params(params)
    with stage_run("corsmal report", params={"runs": [r.name for r in runs], "seeds": list(cfg.seeds),
                                             "folds": list(FOLDS)}) as tracker:
        summary = build_corsmal_report(runs, tuple(FOLDS), cfg, OUT, REPORTS)
        SUMMARY.parent.mkdir(parents=True, exist_ok=True)
        SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        tracker.log_metrics(flat_metrics(summary))
        tracker.log_artifact(REPORTS)
        print((REPORTS / "results.md").read_text())


if __name__ == "__main__":
    run_main(main)
