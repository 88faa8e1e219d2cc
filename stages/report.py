"""Stage report: every table (markdown + CSV) and plot of the comparison, from the runs named in params.yaml.

Outputs: reports/results.md, results.csv, summary.csv, accuracy.png, tau0.png, robustness.png,
ablations.png, training_curves.png, reports/plots/*.json (the data of dvc.yaml's `plots:`), and the metrics files
`dvc exp show` shows: metrics/summary.json (verdicts, paired differences) and metrics/runs.json (each run's
top-1 and mAP with their intervals).
"""

from __future__ import annotations

import json

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.report import Layout, ReportConfig, build_report, flat_metrics
from xmkd.runs import run_specs
from xmkd.tracking import stage_run


def main() -> None:
    params = load_params()
    specs = run_specs(params)
    cfg = ReportConfig.from_params(params)
    layout = Layout()
    logged = {
        "runs": [s.name for s in specs],
        "seeds": list(cfg.seeds),
        "base_rate": cfg.base_rate,
        "base_tau0": cfg.base_tau0,
        "bootstrap_resamples": cfg.resamples,
    }
    with stage_run("report", params=logged) as tracker:
        head = build_report(specs, cfg, layout)
        layout.summary.parent.mkdir(parents=True, exist_ok=True)
        layout.summary.write_text(json.dumps(head.summary, indent=1, sort_keys=True) + "\n")
        layout.runs.write_text(json.dumps(head.runs, indent=1, sort_keys=True) + "\n")
        tracker.log_metrics(flat_metrics(head.summary) | flat_metrics({f"run/{k}": v for k, v in head.runs.items()}))
        tracker.log_artifact(layout.reports)
        print((layout.reports / "results.md").read_text())


if __name__ == "__main__":
    run_main(main)
