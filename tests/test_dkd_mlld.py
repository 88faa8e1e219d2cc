"""Logit-level distillers DKD (arXiv 2203.08679) and MLLD (Jin, Wang & Lin, CVPR 2023).

Per method: the loss pinned to a hand computation with numpy on 2 clips x 3 classes; DKD's decomposition
identity (the paper's Eq. 6), its unlabelled-clip rule and its warm-up; config validation; one epoch of the
real training loop with the teacher's tensors untouched.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from xmkd.errors import ConfigError
from xmkd.methods import Dims, DistillMethod, TeacherBatch, build_method, known_methods, method_config
from xmkd.methods.base import UNLABELLED
from xmkd.methods.dkd import DKDConfig, dkd_loss, dkd_target, dkd_terms
from xmkd.methods.kd import kd_loss
from xmkd.methods.mlld import MLLDConfig, batch_level_loss, class_level_loss, instance_level_loss, mlld_levels
from xmkd.models.student import StudentConfig, StudentOutput, build_student
from xmkd.train import TrainConfig, train

C = 3
ZS = [[1.0, 2.0, 0.0], [0.2, -1.0, 1.5]]  # student logits, 2 clips x 3 classes
ZT = [[3.0, 1.0, -0.5], [-0.3, 0.4, 2.5]]  # teacher logits (argmax: 0, 2)


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp(np.asarray(z, dtype=np.float64) / t)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _out(logits: list[list[float]]) -> StudentOutput:
    z = torch.tensor(logits)
    return StudentOutput(torch.zeros(len(z), 1, 4), torch.zeros(len(z), 4), z)


def _teacher(logits: list[list[float]]) -> TeacherBatch:
    return TeacherBatch(torch.zeros(len(logits), 5), torch.tensor(logits))


def _dkd(num_train: int = 0, **kw: float) -> DistillMethod:
    return build_method("dkd", Dims(4, 5, C, num_train), method_config("dkd", {"dkd": kw}))


# ----------------------------------------------------------------------------- DKD


def _dkd_by_hand(
    zs: list[list[float]], zt: list[list[float]], y: list[int], t: float
) -> tuple[list[float], list[float]]:
    """Per-clip (TCKD, NCKD), each · T², from the paper's definitions (numpy, float64)."""
    tckd, nckd = [], []
    for s, te, k in zip(zs, zt, y, strict=True):
        ps, pt = _softmax(s, t), _softmax(te, t)
        bs, bt = np.array([ps[k], 1 - ps[k]]), np.array([pt[k], 1 - pt[k]])
        others = [j for j in range(len(s)) if j != k]
        hs, ht = ps[others] / (1 - ps[k]), pt[others] / (1 - pt[k])
        tckd.append(t * t * _kl(bt, bs))
        nckd.append(t * t * _kl(ht, hs))
    return tckd, nckd


def test_dkd_matches_hand_computation() -> None:
    y, t = [0, 2], 4.0
    tckd_h, nckd_h = _dkd_by_hand(ZS, ZT, y, t)
    tckd, nckd = dkd_terms(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(y), t)
    assert tckd.tolist() == pytest.approx(tckd_h, rel=1e-5)
    assert nckd.tolist() == pytest.approx(nckd_h, rel=1e-5)
    expected = float(np.mean([1.0 * a + 8.0 * b for a, b in zip(tckd_h, nckd_h, strict=True)]))
    assert dkd_loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(y), 1.0, 8.0, t).item() == pytest.approx(
        expected, rel=1e-5
    )
    # the method, defaults alpha 1, beta 8, T 4, without warm-up
    got = _dkd(warmup_epochs=0).loss(_out(ZS), _teacher(ZT), torch.tensor(y)).student["dkd"]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # a hand value with T = 1 on the first clip: b_t = (e^3, e + e^-0.5) / Σ, etc.
    pt, ps = _softmax(ZT[0], 1.0), _softmax(ZS[0], 1.0)
    by_hand = pt[0] * math.log(pt[0] / ps[0]) + (1 - pt[0]) * math.log((1 - pt[0]) / (1 - ps[0]))
    t1, _ = dkd_terms(torch.tensor(ZS[:1]), torch.tensor(ZT[:1]), torch.tensor([0]), 1.0)
    assert t1.item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dkd_decomposition_is_the_papers_eq6(t: float) -> None:
    """KD = TCKD + (1 - p_t,y) · NCKD per clip (Eq. 6), so DKD with α = β = 1 exceeds KD by p_t,y · NCKD."""
    zs, zt, y = torch.tensor(ZS), torch.tensor(ZT), torch.tensor([0, 1])  # clip 1: target is not the argmax
    tckd, nckd = dkd_terms(zs, zt, y, t)
    for i in range(2):
        kd_i = kd_loss(zs[i : i + 1], zt[i : i + 1], t).item()
        pt_y = _softmax(ZT[i], t)[int(y[i])]
        assert kd_i == pytest.approx(tckd[i].item() + (1 - pt_y) * nckd[i].item(), rel=1e-5)
        dkd_11 = dkd_loss(zs[i : i + 1], zt[i : i + 1], y[i : i + 1], 1.0, 1.0, t).item()
        assert dkd_11 - kd_i == pytest.approx(pt_y * nckd[i].item(), rel=1e-4, abs=1e-5)


def test_dkd_unlabelled_clip_takes_the_teachers_prediction() -> None:
    method = _dkd(warmup_epochs=0)
    assert dkd_target(torch.tensor([UNLABELLED, 1]), torch.tensor(ZT)).tolist() == [0, 1]
    unl = method.loss(_out(ZS), _teacher(ZT), torch.tensor([UNLABELLED, UNLABELLED])).student["dkd"]
    argmax = method.loss(_out(ZS), _teacher(ZT), torch.tensor([0, 2])).student["dkd"]
    other = method.loss(_out(ZS), _teacher(ZT), torch.tensor([1, 0])).student["dkd"]
    assert unl.item() == pytest.approx(argmax.item(), rel=1e-6)
    assert abs(unl.item() - other.item()) > 1e-3  # the target class matters
    mixed = method.loss(_out(ZS), _teacher(ZT), torch.tensor([UNLABELLED, 1])).student["dkd"]
    assert mixed.item() == pytest.approx(
        method.loss(_out(ZS), _teacher(ZT), torch.tensor([0, 1])).student["dkd"].item()
    )


def test_dkd_warmup_ramps_per_epoch_of_clips() -> None:
    """warmup 4 epochs, 4 training clips, batches of 2: factor 1/4, 1/4, 2/4, 2/4, 3/4, ..., then 1."""
    y = torch.tensor([0, 2])
    full = _dkd(warmup_epochs=0).loss(_out(ZS), _teacher(ZT), y).student["dkd"].item()
    method = _dkd(num_train=4, warmup_epochs=4)
    got = [method.loss(_out(ZS), _teacher(ZT), y).student["dkd"].item() / full for _ in range(10)]
    assert got == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0], rel=1e-5)
    assert int(method.clips_seen) == 20
    method.eval()  # evaluation does not advance the counter
    method.loss(_out(ZS), _teacher(ZT), y)
    assert int(method.clips_seen) == 20 and method.epoch == 6
    logs = _dkd(num_train=4, warmup_epochs=4).loss(_out(ZS), _teacher(ZT), y).logs
    assert logs["dkd_warmup"] == 0.25 and set(logs) == {"dkd_tckd", "dkd_nckd", "dkd_warmup"}


def test_dkd_warmup_needs_the_training_set_size() -> None:
    with pytest.raises(ConfigError, match="num_train"):
        _dkd(num_train=0).loss(_out(ZS), _teacher(ZT), torch.tensor([0, 2]))
    assert torch.isfinite(
        _dkd(num_train=0, warmup_epochs=0).loss(_out(ZS), _teacher(ZT), torch.tensor([0, 2])).student["dkd"]
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("alpha", -1.0), ("beta", -0.5), ("temperature", 0.0), ("temperature", -2.0), ("warmup_epochs", -1)],
)
def test_dkd_bad_config_names_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"dkd.{key}"):
        DKDConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"dkd.{key}"):
        method_config("dkd", {"dkd": {key: value}})


def test_dkd_defaults_are_mdistillers() -> None:
    assert method_config("dkd", {"dkd": {}})["dkd"] == DKDConfig(1.0, 8.0, 4.0, 20.0)
    assert {"dkd", "mlld"} <= set(known_methods())
    method = _dkd()
    assert method.ce_weight == 1.0 and method.distills == "logits" and not list(method.parameters())


# ----------------------------------------------------------------------------- MLLD


def _mlld_by_hand(zs: list[list[float]], zt: list[list[float]], t: float) -> tuple[float, float, float]:
    ps, pt = _softmax(zs, t), _softmax(zt, t)
    b, c = ps.shape
    ins = t * t * float(np.mean([_kl(pt[i], ps[i]) for i in range(b)]))
    bat = float(np.sum((pt @ pt.T - ps @ ps.T) ** 2)) / b
    cls = float(np.sum((pt.T @ pt - ps.T @ ps) ** 2)) / c
    return ins, bat, cls


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_mlld_levels_match_hand_computation(t: float) -> None:
    ins, bat, cls = _mlld_by_hand(ZS, ZT, t)
    zs, zt = torch.tensor(ZS), torch.tensor(ZT)
    assert instance_level_loss(zs, zt, t).item() == pytest.approx(ins, rel=1e-5)
    assert batch_level_loss(zs, zt, t).item() == pytest.approx(bat, rel=1e-4)
    assert class_level_loss(zs, zt, t).item() == pytest.approx(cls, rel=1e-4)


def test_mlld_batch_level_written_out_for_t1() -> None:
    """G_ij = Σ_k p_ik p_jk; the 2 x 2 Gram matrices spelt out."""
    ps, pt = _softmax(ZS, 1.0), _softmax(ZT, 1.0)

    def gram(p: np.ndarray) -> list[list[float]]:
        return [[sum(p[i][k] * p[j][k] for k in range(C)) for j in range(2)] for i in range(2)]

    gs, gt = gram(ps), gram(pt)
    expected = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(2) for j in range(2)) / 2
    assert batch_level_loss(torch.tensor(ZS), torch.tensor(ZT), 1.0).item() == pytest.approx(expected, rel=1e-4)


def test_mlld_method_sums_levels_over_temperatures_with_weights() -> None:
    temps = [2.0, 3.0, 4.0, 5.0, 6.0]
    hand = [_mlld_by_hand(ZS, ZT, t) for t in temps]
    ins, bat, cls = (sum(h[i] for h in hand) for i in range(3))
    cfg = method_config("mlld", {"mlld": {"instance_weight": 1.0, "batch_weight": 2.0, "class_weight": 0.5}})
    assert cfg["mlld"].temperatures == tuple(temps)  # the paper's set is the default
    method = build_method("mlld", Dims(4, 5, C), cfg)
    assert method.distills == "logits" and method.ce_weight == 1.0 and not list(method.parameters())
    terms = method.loss(_out(ZS), _teacher(ZT), torch.tensor([UNLABELLED, 1])).student  # labels are not read
    assert terms["mlld_instance"].item() == pytest.approx(ins, rel=1e-4)
    assert terms["mlld_batch"].item() == pytest.approx(2.0 * bat, rel=1e-4)
    assert terms["mlld_class"].item() == pytest.approx(0.5 * cls, rel=1e-4)
    levels = mlld_levels(torch.tensor(ZS), torch.tensor(ZT), temps)
    assert [v.item() for v in levels] == pytest.approx([ins, bat, cls], rel=1e-4)
    # identical logits: every level is 0
    same = mlld_levels(torch.tensor(ZT), torch.tensor(ZT), temps)
    assert all(abs(v.item()) < 1e-6 for v in same)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"temperatures": []}, "mlld.temperatures"),
        ({"temperatures": [2.0, 0.0]}, "mlld.temperatures"),
        ({"instance_weight": -1.0}, "mlld.instance_weight"),
        ({"batch_weight": -1.0}, "mlld.batch_weight"),
        ({"class_weight": -1.0}, "mlld.class_weight"),
    ],
)
def test_mlld_bad_config_names_the_key(patch: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        MLLDConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in patch.items()})
    with pytest.raises(ConfigError, match=needle):
        method_config("mlld", {"mlld": patch})


# ----------------------------------------------------------------------------- training loop

N, T, H, W = 8, 8, 32, 32


@pytest.mark.parametrize(
    ("name", "params"),
    [("dkd", {"dkd": {"warmup_epochs": 2}}), ("mlld", {"mlld": {}})],
    ids=["dkd", "mlld"],
)
def test_one_epoch_trains_student_and_leaves_teacher_frozen(name: str, params: dict) -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (N, T, H, W, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(N) % C
    labels[::3] = UNLABELLED  # the few-labels regime
    emb, logits = torch.rand(N, 16, generator=g), torch.randn(N, C, generator=g)
    emb0, logits0 = emb.clone(), logits.clone()
    loader = DataLoader(TensorDataset(frames, labels, emb, logits, torch.arange(N)), batch_size=4)
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=4), C)
    method = build_method(name, Dims(student.embed_dim, 16, C, num_train=N), method_config(name, params))
    assert not list(method.parameters())  # logit distillers have no heads
    student0 = {n: p.detach().clone() for n, p in student.named_parameters()}

    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", weight_decay=0.0)
    hist = train(student, method, loader, None, cfg, torch.device("cpu"))

    loss_keys = {k for k in hist[0] if k.startswith("loss/")}
    assert {"loss/ce", "loss/total"} < loss_keys and len(loss_keys) >= 3
    assert all(math.isfinite(hist[0][k]) for k in loss_keys)
    assert all(hist[0][k] > 0 for k in loss_keys - {"loss/ce", "loss/total"})
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    assert any(not torch.equal(p.detach(), student0[n]) for n, p in student.named_parameters())
    assert torch.equal(emb, emb0) and torch.equal(logits, logits0)
    assert not logits.requires_grad and logits.grad is None and emb.grad is None
    if name == "dkd":
        assert int(method.clips_seen) == N and method.epoch == 2
        assert hist[0]["dkd_warmup"] == pytest.approx(0.5)  # epoch 1 of a 2-epoch warm-up


@pytest.mark.parametrize("name", ["dkd", "mlld"])
def test_distillation_term_alone_reaches_the_student_logits(name: str) -> None:
    """Backpropagating only the method's terms gives the student logits a gradient, the teacher none."""
    zs = torch.tensor(ZS, requires_grad=True)
    zt = torch.tensor(ZT)
    method = build_method(name, Dims(4, 5, C, num_train=2), method_config(name, {name: {}}))
    out = StudentOutput(torch.zeros(2, 1, 4), torch.zeros(2, 4), zs)
    terms = method.loss(out, TeacherBatch(torch.zeros(2, 5), zt), torch.tensor([0, UNLABELLED]))
    assert terms.student and not terms.heads_only
    sum(terms.student.values()).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0 and zt.grad is None
