"""The `plots:`, `metrics:` and `artifacts:` of dvc.yaml agree with the code and params.yaml (no pipeline run).

The end-to-end checks (`dvc plots show` / `diff`, `dvc exp show`, push / pull, `dvc artifacts get`) are in
tests/test_pipeline.py and tests/test_dvc_remote.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from gto.constants import assert_name_is_valid

from xmkd.report.load import PLOTS
from xmkd.report.plotdata import PLOT_DATA

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
TEMPLATES = ROOT / ".dvc" / "plots"


def _plots() -> dict[str, dict | None]:
    return {k: v for item in DVC["plots"] for k, v in (item.items() if isinstance(item, dict) else [(item, None)])}


def _outs(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    return [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", [])]


def test_every_plot_reads_a_file_the_report_writes() -> None:
    plots = _plots()
    images = sorted(k for k, v in plots.items() if v is None)
    assert images == sorted(f"reports/{p}" for p in PLOTS)  # every PNG of the report, nothing else
    data = {f for v in plots.values() if v for f in v["y"]}
    assert data == {f"reports/plots/{f}" for f in PLOT_DATA}
    assert "reports" in _outs(DVC["stages"]["report"])  # the plot files are outputs of the report stage


def test_plot_templates_exist_and_take_dvc_data() -> None:
    for name, props in _plots().items():
        if props is None:
            continue
        path = TEMPLATES / f"{props['template']}.json"
        assert path.exists(), f"plot {name!r}: template {path} is missing"
        text = path.read_text()
        json.loads(text)
        for anchor in ("<DVC_METRIC_DATA>", "<DVC_METRIC_X>", "<DVC_METRIC_Y>"):
            assert anchor in text, (path, anchor)
        assert '"field": "method"' in text and '"field": "rev"' in text  # a line per method, a dash per revision


def test_metrics_are_the_headline_files_only() -> None:
    """Per-seed detail (metrics/eval/<run>.json, the dataset counts) is a plain output, not a DVC metric."""
    declared = set()
    for stage in DVC["stages"].values():
        declared |= set(stage.get("do", stage).get("metrics", []))
    assert declared == {"metrics/summary.json", "metrics/runs.json", "metrics/teacher_pretrain.json",
                        "metrics/teacher.json", "metrics/video_teacher.json"}  # fmt: skip
    assert "metrics/eval/${item}.json" in _outs(DVC["stages"]["distill"])


def test_artifacts_name_the_teacher_and_the_students() -> None:
    """`teacher`, `students` (every run) and `student-<method>` for the main table's methods: each a valid name
    and the path of a stage output. Not required for every method (a new method needs no edit of dvc.yaml:
    `students` and `dvc get <repo> models/students/<run>` reach its checkpoints)."""
    arts = DVC["artifacts"]
    for name in arts:
        assert_name_is_valid(name)  # the name rule of `dvc artifacts` (GTO)
    assert arts["teacher"]["path"] in _outs(DVC["stages"]["train_teacher"])
    assert arts["students"]["path"] == "models/students"
    students = {n[len("student-") :]: a["path"] for n, a in arts.items() if n.startswith("student-")}
    assert {"none", "kd", "mnf_csc"} <= set(students) <= set(PARAMS["methods"])
    assert all(p == f"models/students/{m}" for m, p in students.items())
    assert "models/students/${item}" in _outs(DVC["stages"]["distill"])
    assert all(a["type"] == "model" for a in arts.values())
