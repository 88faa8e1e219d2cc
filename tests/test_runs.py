"""Every run named in params.yaml resolves, builds, and takes a training step; run naming and validation;
the per-clip sound-condition assignment of the robustness study."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xmkd.data.benchmark import BenchmarkConfig
from xmkd.data.conditions import assign_conditions
from xmkd.distill import build_models
from xmkd.errors import ConfigError
from xmkd.methods import TeacherBatch
from xmkd.runs import load_run_config, resolve, run_specs, write_configs

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_name_every_kind_of_run() -> None:
    specs = run_specs(PARAMS)
    kinds = {s.kind for s in specs}
    assert kinds == {"main", "ablation", "robustness", "reverse"}
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    assert {"none", "kd", "mnf_csc", "ablate-no_mnf", "robust-kd-0.6", "reverse-mnf_csc"} <= set(names)
    assert next(s for s in specs if s.name == "robust-kd-0.6").stage == "robust@kd-0.6"
    # the ablations and at least four tau0 values (0.07 is the main row)
    abl = PARAMS["ablations"]
    assert {"no_mnf", "no_csc", "fixed_tau", "no_triplet", "no_gate_norm"} <= set(abl)
    taus = {v["csc"]["temperature"] for v in abl.values() if set(v) == {"csc"} and set(v["csc"]) == {"temperature"}}
    assert len(taus | {PARAMS["csc"]["temperature"]}) >= 4


@pytest.mark.parametrize("name", [s.name for s in run_specs(PARAMS)])
def test_every_run_in_params_builds_and_steps(name: str, tmp_path: Path) -> None:
    write_configs(PARAMS, tmp_path)
    rc = load_run_config(tmp_path / f"{name}.json")
    assert rc.name == name and tuple(PARAMS["seeds"]) == rc.seeds
    torch.manual_seed(0)
    b, c = 6, 10
    teacher_dim = 64
    student, method = build_models(rc, c, teacher_dim, num_train=32)
    if rc.modality == "audio":
        x = torch.randn(b, PARAMS["features"]["n_mels"], 101)
    else:
        f, s = PARAMS["features"]["frames"], PARAMS["features"]["size"]
        x = torch.randint(0, 256, (b, f, s, s, 3), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = student(x)
    assert out.feature.shape == (b, rc.student.embed_dim) and out.logits.shape == (b, c)
    terms = method.loss(out, TeacherBatch(torch.rand(b, teacher_dim), torch.randn(b, c), torch.arange(b)), y)
    total = sum(terms.student.values(), torch.nn.functional.cross_entropy(out.logits, y))
    if terms.heads_only:
        total = total + sum(terms.heads_only.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_ablations_apply_their_overrides() -> None:
    rcs = resolve(PARAMS)
    assert rcs["ablate-no_mnf"].sections["mnf"].enabled is False
    assert rcs["ablate-no_csc"].sections["csc"].weight == 0.0
    assert rcs["ablate-fixed_tau"].sections["csc"].adaptive is False
    assert rcs["ablate-tau0_0.2"].sections["csc"].temperature == 0.2
    assert rcs["mnf_csc"].sections["csc"].temperature == PARAMS["csc"]["temperature"]
    assert rcs["robust-kd-0.6"].irrelevant_rate == 0.6 and rcs["kd"].irrelevant_rate is None
    assert rcs["reverse-kd"].modality == "audio" and rcs["reverse-kd"].student.arch == "audio_cnn"


def test_no_mnf_ablation_has_no_filter_and_only_csc() -> None:
    rc = resolve(PARAMS)["ablate-no_mnf"]
    student, method = build_models(rc, 10, 64)
    assert method.mnf is None and not list(method.parameters())  # D = d: no projection either
    out = student(torch.randint(0, 256, (4, 8, 32, 32, 3), dtype=torch.uint8))
    terms = method.loss(out, TeacherBatch(torch.rand(4, 64), torch.randn(4, 10)), torch.tensor([0, 1, 0, 1]))
    assert set(terms.student) == {"csc"} and not terms.heads_only


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"ablations": {"x": {"cs": {"weight": 0.0}}}}, "did you mean 'csc'"),
        ({"ablations": {"x": {"csc": {"wieght": 0.0}}}}, "wieght"),
        ({"robustness": {"methods": ["kd"], "rates": [1.5]}}, "robustness.rates"),
        ({"robustness": {"methods": ["nope"], "rates": [0.0]}}, "nope"),
        ({"robustness": {"methods": ["none", "kd"], "rates": [0.0]}}, "Remove 'none' from robustness.methods"),
        ({"reverse": {"methods": ["kd"], "teacher_run": "crd"}}, "teacher_run"),
        ({"seeds": [0, 0]}, "twice"),
    ],
)
def test_bad_run_params_are_rejected_with_the_fix(patch: dict, needle: str) -> None:
    params = copy.deepcopy(PARAMS)
    params["methods"] = ["none", "kd"]
    params.update(patch)
    with pytest.raises(ConfigError, match=needle):
        resolve(params)


def test_condition_assignment_is_exact_and_nested_in_counts() -> None:
    cfg = BenchmarkConfig(n_train=200, n_val=50, n_test=100, irrelevant_rate=0.3)
    for rate in (0.0, 0.3, 0.6, 1.0):
        cond = assign_conditions(cfg, rate)
        assert len(cond) == 350
        test = [v for k, v in cond.items() if k.startswith("test_")]
        irrelevant = sum(v != "clean" for v in test)
        assert irrelevant == round(rate * 100)
        assert sum(v == "mismatched" for v in test) == int(np.floor(0.5 * irrelevant + 0.5))
    with pytest.raises(ValueError, match="irrelevant rate"):
        assign_conditions(cfg, 1.2)
