"""Stage report: every table (markdown + CSV) and plot of the comparison, from the runs named in params.yaml.

Outputs: reports/results.md, results.csv, summary.csv, accuracy.png, tau0.png, robustness.png,
ablations.png, training_curves.png, reports/plots/*.json (the data of dvc.yaml's `plots:`), and the metrics files
`dvc exp show` shows: metrics/summary.json (verdicts, paired differences) and metrics/runs.json (each run's
top-1 and mAP with their intervals).
MLflow: the report's run (its metrics, reports/ as artifacts, a description with the verdicts), the description of
the pipeline run, and the best student of the main table registered as a new version of the MLflow model
`xmkd-student` (``XMKD_REGISTERED_MODEL``): the main run with the highest mean test top-1 (then mAP), its first seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.dvclock import file_md5
from xmkd.report import Headline, Layout, ReportConfig, build_report, flat_metrics
from xmkd.runs import RunSpec, run_specs
from xmkd.tracking import StageRun, parent_run_id, register_model, stage_run, tolerant

REGISTERED_MODEL = os.environ.get("XMKD_REGISTERED_MODEL", "xmkd-student")


def best_main_run(specs: Sequence[RunSpec], head: Headline) -> tuple[str, str, float] | None:
    """(run, method, mean test top-1) of the main run with the highest mean test top-1 (ties: higher mAP, then the
    first in params), or None when no main run has a top-1."""
    scored = [(head.runs.get(s.name, {}).get("top1"), head.runs.get(s.name, {}).get("mAP") or 0.0, -i, s)
              for i, s in enumerate(specs) if s.kind == "main"]
    scored = [x for x in scored if x[0] is not None]
    if not scored:
        return None
    top1, _, _, spec = max(scored, key=lambda x: x[:3])
    return spec.name, spec.method, top1


def register_best(tracker: StageRun, specs: Sequence[RunSpec], head: Headline, seed: int) -> str:
    """Register the best main run's student (seed ``seed``) under :data:`REGISTERED_MODEL`; returns a sentence
    saying what was registered (or why not), for the descriptions."""
    best = best_main_run(specs, head)
    if best is None:
        return "No main run has a test top-1: no student registered."
    run, method, top1 = best
    ckpt = Path(f"models/students/{run}/seed-{seed}.pt")
    if not ckpt.exists():
        return f"Best main run `{run}`: its checkpoint {ckpt} is missing, no student registered."
    tags = {"method": method, "run": run, "seed": str(seed), "top1_mean": f"{top1:.6f}",
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""), "pipeline_run": parent_run_id(tracker) or ""}
    found = register_model(REGISTERED_MODEL, file_md5(ckpt), tags,
                           f"Run `{run}` (method {method}), seed {seed}: mean test top-1 {100 * top1:.1f} % over seeds.")
    if found is None:
        return (f"Best main run `{run}` (test top-1 {100 * top1:.1f} %): no MLflow model of {ckpt} was logged "
                "(XMKD_MLFLOW_MODELS=none?), no student registered.")
    version, seed_run = found
    tracker.set_tags({"registered_model": f"{REGISTERED_MODEL}/{version}"})
    return (f"Best main run `{run}` (method {method}, mean test top-1 {100 * top1:.1f} %): its seed {seed} registered "
            f"as `{REGISTERED_MODEL}` version {version} (seed run {seed_run}).")


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
        registered = "The best student was not registered (MLflow error above)."
        with tolerant("register the best student"):
            registered = register_best(tracker, specs, head, cfg.seeds[0])
        verdict = head.summary.get("verdict", {})
        note = (f"Report of {len(specs)} runs ({', '.join(s.name for s in specs)}), seeds {list(cfg.seeds)}.\n\n"
                f"**Claim** (MNF+CSC beats the baselines): {verdict.get('claim', '?')}. **Premise**: "
                f"{verdict.get('premise', '?')}.\n\n{registered}\n\nTables and plots: artifacts `reports/`.")
        with tolerant("describe the report and pipeline runs"):
            tracker.set_note(note)
            if parent := parent_run_id(tracker):
                StageRun(tracker.client, parent).set_note(note)
        print((layout.reports / "results.md").read_text())


if __name__ == "__main__":
    run_main(main)
