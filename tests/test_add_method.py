"""A method is one file plus one params section: a throwaway method added to a copy of the tiny pipeline is found
by discovery, gets its resolved config and its training stage without any edit of dvc.yaml, trains, and lands in
the report; changing its own hyper-parameter re-runs its stage and nothing else that trains."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import needs_mirror, run_in

pytestmark = [pytest.mark.slow, needs_mirror]

METHOD = textwrap.dedent('''
    """Throwaway test method: CE plus ``weight`` x the mean squared error between student and teacher logits."""

    from __future__ import annotations

    from dataclasses import dataclass

    import torch

    from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register
    from xmkd.models.student import StudentOutput


    @dataclass(frozen=True)
    class LogitMSEConfig:
        weight: float = 1.0


    @register("logit_mse")
    class LogitMSE(DistillMethod):
        sections = {"logit_mse": LogitMSEConfig}
        distills = "logits"

        def __init__(self, dims: Dims, cfg: dict) -> None:
            super().__init__(dims, cfg)
            self.weight = cfg["logit_mse"].weight

        def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
            mse = (student.logits.float() - teacher.logits.float()).pow(2).mean()
            return LossTerms(student={"logit_mse": self.weight * mse})
''')


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def test_a_new_method_is_one_file_and_one_params_section(tiny_repo_copy: Callable[[str], Path]) -> None:
    repo = tiny_repo_copy("add-method")
    dvc_yaml = (repo / "dvc.yaml").read_text()
    (repo / "src/xmkd/methods/logit_mse.py").write_text(METHOD)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["methods"].append("logit_mse")
    params["logit_mse"] = {"weight": 0.5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    ran = _ran(run_in(repo, ["dvc", "repro"]).stdout)
    assert (repo / "dvc.yaml").read_text() == dvc_yaml  # no edit of the pipeline
    assert {"resolve_configs", "distill@logit_mse", "report"} <= ran
    assert not {"distill@none", "distill@kd", "distill@mnf_csc"} & ran, ran  # their configs did not change
    cfg = json.loads((repo / "data/configs/logit_mse.json").read_text())
    assert cfg["method"] == "logit_mse"
    assert cfg["sections"] == {"logit_mse": {"weight": 0.5}}
    ev = json.loads((repo / "metrics/eval/logit_mse.json").read_text())
    assert set(ev["seeds"]) == {"0", "1"} and all(0.0 <= m["top1"] <= 1.0 for m in ev["seeds"].values())
    hist = json.loads((repo / "metrics/train/logit_mse.json").read_text())["seeds"]["0"]["history"]
    assert hist[0]["loss/logit_mse"] > 0.0  # its loss term was trained on
    assert "| logit_mse |" in (repo / "reports/results.md").read_text()

    # its own hyper-parameter: only its training stage (and the report) re-run
    ran = _ran(run_in(repo, ["dvc", "exp", "run", "-S", "logit_mse.weight=2.0"]).stdout)
    assert "distill@logit_mse" in ran
    assert not {s for s in ran if s.startswith(("distill@", "ablate@", "robust@", "reverse@"))} - {"distill@logit_mse"}

    # a mistyped key of its section is rejected by name
    proc = run_in(repo, ["dvc", "exp", "run", "-S", "+logit_mse.wieght=1.0"], check=False)
    assert proc.returncode != 0 and "wieght" in proc.stdout + proc.stderr
