"""MNF shapes, the reference's gradient flow, the method registry and the training loop on toy data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xmkd.errors import ConfigError, TrainingError
from xmkd.methods import Dims, TeacherBatch, build_method, known_methods, method_config
from xmkd.methods.mnf_csc import CSCConfig, MNFConfig
from xmkd.models.mnf import ModalityNoiseFilter
from xmkd.models.student import StudentConfig, build_student, normalize_frames
from xmkd.train import TrainConfig, train

B, T, H, W, C = 6, 8, 32, 32, 4


def _setup(teacher_dim: int = 64, triplet: bool = True):  # noqa: ANN202
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=8), C)
    cfg = {"mnf": MNFConfig(triplet=triplet), "csc": CSCConfig()}
    method = build_method("mnf_csc", Dims(64, teacher_dim, C), cfg)
    frames = torch.randint(0, 256, (B, T, H, W, 3), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    teacher = TeacherBatch(torch.rand(B, teacher_dim), torch.randn(B, C))
    return student, method, frames, y, teacher


@pytest.mark.parametrize("teacher_dim", [64, 48])
def test_mnf_shapes(teacher_dim: int) -> None:
    mnf = ModalityNoiseFilter(dim=64, teacher_dim=teacher_dim, num_classes=C, heads=2)
    out = mnf(torch.rand(B, teacher_dim), torch.randn(B, 16, 64))
    assert out.logits.shape == (B, C)
    assert out.feature.shape == out.selected_audio.shape == out.audio.shape == out.gate.shape == (B, 64)
    assert out.attention.shape == (B, 1, 16)
    assert torch.all((out.gate > 0) & (out.gate < 1))
    assert torch.allclose(out.selected_audio, out.gate * out.audio)
    w1, w2 = mnf.gate_weights
    assert w1.shape == (32, 128) and w2.shape == (64, 32)
    with pytest.raises(ValueError, match="divisible"):
        ModalityNoiseFilter(dim=63, teacher_dim=63, num_classes=C, heads=2)


def test_student_output_shapes() -> None:
    student = build_student(StudentConfig(width=8), C)
    out = student(normalize_frames(torch.randint(0, 256, (2, T, H, W, 3), dtype=torch.uint8)))
    assert out.feature_map.shape == (2, 4, 64)  # T'H'W' = 1*2*2 tokens of d = 8w
    assert out.feature.shape == (2, 64) and out.logits.shape == (2, C)
    assert torch.allclose(out.feature, out.feature_map.mean(1))


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_mnf_side_terms_do_not_update_the_student() -> None:
    """Reference flow: student <- CE(p_v) + λ L_csc; MNF <- CE(p_sv) + norm + triplet + λ L_csc."""
    student, method, frames, y, teacher = _setup()
    student.train(), method.train()
    heads = list(method.parameters())

    # 1) the heads-only group alone touches no student parameter, and does touch MNF
    s = student(normalize_frames(frames))
    terms = method.loss(s, teacher, y)
    assert set(terms.heads_only) == {"ce_mnf", "triplet", "gate_norm"} and set(terms.student) == {"csc"}
    sum(terms.heads_only.values()).backward(inputs=heads)
    assert all(p.grad is None for p in student.parameters())
    assert method.mnf.classifier.weight.grad is not None and method.mnf.gate_net[3].weight.grad.abs().sum() > 0

    # 2) the loop's two-group step == reference: student grads from CE(p_v)+CSC only
    method.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    s = student(normalize_frames(frames))
    terms = method.loss(s, teacher, y)
    ce = F.cross_entropy(s.logits, y)
    sum(terms.heads_only.values()).backward(inputs=heads, retain_graph=True)
    (ce + sum(terms.student.values())).backward()
    flow_student, flow_heads = _grads(student), _grads(method)

    student.zero_grad(set_to_none=True), method.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    s = student(normalize_frames(frames))
    terms = method.loss(s, teacher, y)
    (F.cross_entropy(s.logits, y) + terms.student["csc"]).backward()
    ref_student = _grads(student)
    assert flow_student.keys() == ref_student.keys()
    for n in ref_student:
        assert torch.allclose(flow_student[n], ref_student[n], atol=1e-6), n
    # CSC reaches the student (also through V in the attention) and the MNF
    assert any(v.abs().sum() > 0 for k, v in flow_heads.items() if k.startswith("mnf.attn"))

    # 3) changing the weight of an MNF-side term changes nothing for the student
    student.zero_grad(set_to_none=True), method.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    s = student(normalize_frames(frames))
    terms = method.loss(s, teacher, y)
    (100.0 * sum(terms.heads_only.values())).backward(inputs=heads, retain_graph=True)
    (F.cross_entropy(s.logits, y) + sum(terms.student.values())).backward()
    for n, g in _grads(student).items():
        assert torch.allclose(g, ref_student[n], atol=1e-6), n


def test_registry_lists_known_methods_on_unknown_name() -> None:
    assert {"none", "kd", "mnf_csc"} <= set(known_methods())
    with pytest.raises(ConfigError, match=r"unknown distillation method 'mnf-csc'.*kd, mfh, mlld, mnf_csc, none"):
        method_config("mnf-csc", {})


def test_method_config_rejects_mistyped_key() -> None:
    with pytest.raises(ConfigError, match=r"csc.temprature.*did you mean 'temperature'"):
        method_config("mnf_csc", {"mnf": {}, "csc": {"temprature": 0.1}})


def test_training_loop_runs_every_method_and_stops_on_nan() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    frames = torch.randint(0, 256, (12, T, H, W, 3), dtype=torch.uint8)
    y = torch.arange(12) % C
    emb, logits = torch.rand(12, 64), torch.randn(12, C)
    loader = DataLoader(TensorDataset(frames, y, emb, logits, torch.arange(12)), batch_size=6)
    cfg = TrainConfig(epochs=1, batch_size=6, device="cpu")
    for name in ("none", "kd", "mnf_csc"):
        torch.manual_seed(0)
        student = build_student(StudentConfig(width=8), C)
        params = {"kd": {}, "mnf": {}, "csc": {}}
        method = build_method(name, Dims(64, 64, C), method_config(name, params))
        hist = train(student, method, loader, loader, cfg, torch.device("cpu"))
        assert len(hist) == 1 and 0.0 <= hist[0]["val_top1"] <= 1.0 and hist[0]["loss/ce"] > 0
    bad = DataLoader(TensorDataset(frames, y, torch.full((12, 64), float("nan")), logits, torch.arange(12)), batch_size=6)
    method = build_method("mnf_csc", Dims(64, 64, C), method_config("mnf_csc", params))
    with pytest.raises(TrainingError, match="training diverged"):
        train(build_student(StudentConfig(width=8), C), method, bad, None, cfg, torch.device("cpu"))


@pytest.mark.parametrize("lr_scale", [0.2, 1.0])
def test_mnf_learning_rate_is_the_references_fraction_of_the_students(lr_scale: float) -> None:
    """Reference train_utils.py: the audio-side (MNF) optimiser runs at learning_rate * 0.2, same weight
    decay, same milestones. Here: the heads' Adam param group, scaled on the student's schedule."""
    from xmkd.train import lr_factor, make_optimiser

    student = build_student(StudentConfig(width=8), C)
    method = build_method("mnf_csc", Dims(64, 64, C), {"mnf": MNFConfig(lr_scale=lr_scale), "csc": CSCConfig()})
    cfg = TrainConfig(epochs=4, lr=0.01, weight_decay=5e-4, milestones=[2.0], gamma=0.1)
    opt, heads = make_optimiser(student, method, cfg)
    g_student, g_heads = opt.param_groups
    assert {id(p) for p in g_heads["params"]} == {id(p) for p in method.parameters()} == {id(p) for p in heads}
    assert {id(p) for p in g_student["params"]} == {id(p) for p in student.parameters()}
    assert g_student["lr"] == 0.01 and g_heads["lr"] == pytest.approx(0.01 * lr_scale)
    assert g_student["weight_decay"] == g_heads["weight_decay"] == 5e-4
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lr_factor(cfg, steps_per_epoch=1))
    for _ in range(3):
        opt.step()
        sched.step()
    assert g_student["lr"] == pytest.approx(0.001) and g_heads["lr"] == pytest.approx(0.001 * lr_scale)
    kd = build_method("kd", Dims(64, 64, C), method_config("kd", {"kd": {}}))
    assert len(make_optimiser(student, kd, cfg)[0].param_groups) == 1  # no heads, no second group
    with pytest.raises(ValueError, match="lr_scale"):
        MNFConfig(lr_scale=0.0)


def test_reference_r2plus1d_has_one_block_per_stage_and_the_reference_shapes() -> None:
    """Reference models/r21d_with_featuremap.py: R2Plus1DNet(layer_sizes=(1, 1, 1, 1)); stem M = 83 channels;
    16x112x112 clips -> a (2, 7, 7) map of 512 channels = 98 tokens."""
    from xmkd.models.r21d_reference import R2Plus1DReference, SpatioTemporalResBlock, intermediate_channels

    net = build_student(StudentConfig(arch="r2plus1d_ref"), C)
    assert isinstance(net, R2Plus1DReference) and StudentConfig(arch="r2plus1d_ref").embed_dim == 512
    assert [sum(isinstance(m, SpatioTemporalResBlock) for m in stage) for stage in net.layers] == [1, 1, 1, 1]
    assert net.stem[0].spatial.out_channels == intermediate_channels(3, 64, 3, 7) == 83
    assert intermediate_channels(64, 64, 3, 3) == 144
    tv = build_student(StudentConfig(arch="r2plus1d_18"), C)
    assert sum(p.numel() for p in net.parameters()) < 0.6 * sum(p.numel() for p in tv.parameters())
    net.eval()
    with torch.no_grad():
        out = net(torch.randint(0, 256, (1, 16, 112, 112, 3), dtype=torch.uint8))
    assert out.feature_map.shape == (1, 98, 512) and out.feature.shape == (1, 512) and out.logits.shape == (1, C)
    assert torch.allclose(out.feature, out.feature_map.mean(1), atol=1e-5)


def test_csc_is_computed_in_float32_under_autocast() -> None:
    """Like crd, cmc and ccl, CSC's logits cos / τ are computed in fp32 even inside a bf16 autocast region
    (checked with CPU autocast, which runs matmuls in bf16 as CUDA's does)."""
    from xmkd.methods.mnf_csc import csc_loss, csc_temperature

    torch.manual_seed(0)
    v, a = torch.randn(8, 64), torch.rand(8, 64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ref = csc_loss(v, a, y, csc_temperature(v, a, CSCConfig()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (v @ a.T).dtype == torch.bfloat16  # autocast is on
        tau = csc_temperature(v, a, CSCConfig())
        got = csc_loss(v, a, y, tau)
    assert tau.dtype == got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
