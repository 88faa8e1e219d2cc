"""Cross-modal distillers C2KD (Huo et al., CVPR 2024) and MFH / MGDFR (arXiv 2206.06487).

Per method: its pieces pinned to hand computations with numpy (Kendall's tau-b against scipy), the full loss
composed from its heads' outputs, the reference's quirk and its fix, config validation, and the real training
loop: the heads train, the teacher's tensors stay untouched, MFH goes from co-training to distillation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from torch.utils.data import DataLoader, TensorDataset

from xmkd.errors import ConfigError
from xmkd.methods import Dims, TeacherBatch, build_method, method_config
from xmkd.methods.base import UNLABELLED
from xmkd.methods.c2kd import kendall_tau_b, non_target_kl
from xmkd.methods.mfh import freeze_channels, permutation_salience, removed_channels
from xmkd.models.student import StudentConfig, StudentOutput, build_student
from xmkd.train import TrainConfig, train

C = 4


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _kl_rows(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row, float64."""
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


# ----------------------------------------------------------------------------- C2KD


def test_kendall_tau_b_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (20, 7), generator=g).float()  # many ties
    y = torch.randint(0, 4, (20, 7), generator=g).float()
    x[0] = 1.0  # a constant row: tau undefined in scipy (nan), 0 here
    got = kendall_tau_b(x, y).numpy()
    for i in range(1, 20):
        want = kendalltau(x[i].numpy(), y[i].numpy()).statistic
        assert got[i] == pytest.approx(want, abs=1e-6)
    assert got[0] == 0.0
    assert kendall_tau_b(x[1:2], x[1:2]).item() == pytest.approx(1.0)


def test_non_target_kl_faithful_zeroes_the_target_logit() -> None:
    zs = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 1.1, 2.0]])
    zt = np.array([[2.0, 0.1, 1.0, 0.0], [1.5, 0.5, -0.5, 0.2]])
    y = np.array([1, 3])
    got = non_target_kl(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), 1.0, drop_target=False)
    zs0, zt0 = zs.copy(), zt.copy()
    zs0[np.arange(2), y] = 0.0
    zt0[np.arange(2), y] = 0.0  # the reference: logits * (~gt_mask), the target class kept with logit 0
    np.testing.assert_allclose(got.numpy(), _kl_rows(zt0, zs0), rtol=1e-5)
    # the fix: the C - 1 non-target classes only, renormalised; T = 2
    got2 = non_target_kl(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), 2.0, drop_target=True)
    keep = [[0, 2, 3], [0, 1, 2]]
    want2 = [_kl_rows(zt[i, keep[i]][None] / 2, zs[i, keep[i]][None] / 2)[0] for i in range(2)]
    np.testing.assert_allclose(got2.numpy(), want2, rtol=1e-4)
    assert not np.allclose(got.numpy(), non_target_kl(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), 1.0, True))


def _c2kd(**kw: object):
    return build_method("c2kd", Dims(6, 5, C, 8), method_config("c2kd", {"c2kd": kw}))


@pytest.mark.parametrize("init", ["pretrained", "scratch"])
def test_c2kd_loss_is_the_papers_sum_over_its_heads_outputs(init: str) -> None:
    torch.manual_seed(0)
    m = _c2kd(krc=0.1, teacher_init=init)
    m.train()
    b = 6
    a, v = torch.randn(b, 5), torch.randn(b, 6)
    zs, zt_frozen = torch.randn(b, C), torch.randn(b, C)
    labels = torch.tensor([0, 1, UNLABELLED, 3, 2, UNLABELLED])
    terms = m.loss(StudentOutput(torch.zeros(b, 1, 6), v, zs), TeacherBatch(a, zt_frozen), labels)

    # the heads' outputs in the same (training) mode, then every term by hand
    torch.manual_seed(0)
    ref = _c2kd(krc=0.1, teacher_init=init)
    ref.train()
    with torch.no_grad():
        z_t = ref.teacher_head(a).double().numpy()
        p_t = ref.proxy_t(a).double().numpy()
        p_s = ref.proxy_s(v).double().numpy()
    if init == "pretrained":  # the fine-tuned last layer starts at the frozen teacher's: a zero residual
        assert not z_t.any()
        z_t = z_t + zt_frozen.double().numpy()
    target = np.where(labels.numpy() >= 0, labels.numpy(), zt_frozen.numpy().argmax(1))
    ce_t = float(np.mean(-_log_softmax(z_t)[np.arange(b), target]))
    zs_np = zs.double().numpy()
    mutual_t = _kl_rows(z_t, p_t).mean() + _kl_rows(p_t, z_t).mean()
    mutual_s = _kl_rows(zs_np, p_s).mean() + _kl_rows(p_s, zs_np).mean()
    tau = np.array([kendalltau(p_t[i], p_s[i]).statistic for i in range(b)])
    sel = (tau > 0.1).astype(float)
    pt0, ps0 = p_t.copy(), p_s.copy()
    pt0[np.arange(b), target] = 0.0
    ps0[np.arange(b), target] = 0.0
    proxies = float(np.mean(sel * (_kl_rows(pt0, ps0) + _kl_rows(ps0, pt0))))

    got = {k: float(v.detach()) for k, v in terms.student.items()}
    assert got["c2kd_teacher_ce"] == pytest.approx(ce_t, rel=1e-5)
    assert got["c2kd_teacher_proxy"] == pytest.approx(mutual_t, rel=1e-5)
    assert got["c2kd_student_proxy"] == pytest.approx(mutual_s, rel=1e-5)
    assert got["c2kd_proxies"] == pytest.approx(proxies, rel=1e-5, abs=1e-7)
    assert terms.logs["c2kd_selected"] == pytest.approx(sel.mean())
    assert not terms.heads_only


def test_c2kd_no_selected_pair_gives_no_proxy_term_and_single_clip_batches_nothing() -> None:
    torch.manual_seed(1)
    m = _c2kd(krc=0.999)
    b = 4
    terms = m.loss(
        StudentOutput(torch.zeros(b, 1, 6), torch.randn(b, 6), torch.randn(b, C)),
        TeacherBatch(torch.randn(b, 5), torch.randn(b, C)),
        torch.tensor([0, 1, 2, 3]),
    )
    assert terms.logs["c2kd_selected"] == 0.0 and float(terms.student["c2kd_proxies"].detach()) == 0.0
    assert float(terms.student["c2kd_student_proxy"].detach()) > 0
    one = m.loss(
        StudentOutput(torch.zeros(1, 1, 6), torch.randn(1, 6), torch.randn(1, C)),
        TeacherBatch(torch.randn(1, 5), torch.randn(1, C)),
        torch.tensor([0]),
    )
    assert not one.student


@pytest.mark.parametrize(
    ("key", "value"), [("krc", 1.0), ("krc", -2.0), ("temperature", 0.0), ("teacher_init", "imagenet")]
)
def test_c2kd_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"c2kd.{key}"):
        method_config("c2kd", {"c2kd": {key: value}})


# ----------------------------------------------------------------------------- MFH (MGDFR)


def test_permutation_salience_matches_a_loop_over_channels() -> None:
    g = torch.Generator().manual_seed(0)
    a, zs = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    head = torch.nn.Linear(3, 2)
    got = permutation_salience(head, a, zs, repeats=2, generator=torch.Generator().manual_seed(7))
    g2 = torch.Generator().manual_seed(7)
    want = np.zeros(3)
    with torch.no_grad():
        for _ in range(2):
            perms = torch.argsort(torch.rand(3, 5, generator=g2), dim=1)
            for i in range(3):
                x = a.clone()
                x[:, i] = a[perms[i], i]
                want[i] += float(((head(x) - zs) ** 2).mean()) / 2
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_salience_finds_the_only_channel_the_head_reads() -> None:
    head = torch.nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, 2] = torch.tensor([1.0, -2.0, 0.5])
    a = torch.randn(32, 4)
    with torch.no_grad():
        agree = head(a)  # a student that agrees with the teacher: only permuting channel 2 moves them apart
    s = permutation_salience(head, a, agree, repeats=3)
    assert s[2] > 0 and torch.allclose(s[[0, 1, 3]], torch.zeros(3), atol=1e-10)
    assert removed_channels(s, 0.75).tolist() == [True, True, False, True]


def test_removed_channels_and_freeze_by_hand() -> None:
    s = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7])
    assert removed_channels(s, 0.6).tolist() == [True, False, True, True, False]  # int(0.6 * 5) = 3 lowest
    a = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 5.0]])
    out = freeze_channels(a, torch.tensor([True, False, True]))
    assert out.tolist() == [[2.0, 2.0, 4.0], [2.0, 6.0, 4.0]]


@pytest.mark.parametrize(("key", "value"), [("ratio", 1.0), ("alpha", 1.5), ("co_epochs", 0), ("repeat_permute", 0)])
def test_mfh_bad_config_names_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"mfh.{key}"):
        method_config("mfh", {"mfh": {key: value}})


# ----------------------------------------------------------------------------- training loop

N, T, H, W = 8, 8, 32, 32


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (N, T, H, W, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(N) % C
    labels[::3] = UNLABELLED  # the few-labels regime
    emb, logits = torch.rand(N, 16, generator=g), torch.randn(N, C, generator=g)
    return frames, labels, emb, logits


@pytest.mark.parametrize("name", ["c2kd", "mfh"])
def test_one_epoch_trains_heads_and_student_and_leaves_teacher_frozen(name: str) -> None:
    frames, labels, emb, logits = _data()
    emb0, logits0 = emb.clone(), logits.clone()
    loader = DataLoader(TensorDataset(frames, labels, emb, logits, torch.arange(N)), batch_size=4)
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=4), C)
    method = build_method(name, Dims(student.embed_dim, 16, C, num_train=N), method_config(name, {name: {}}))
    heads0 = {n: p.detach().clone() for n, p in method.named_parameters()}
    student0 = {n: p.detach().clone() for n, p in student.named_parameters()}
    hist = train(
        student,
        method,
        loader,
        None,
        TrainConfig(epochs=1, batch_size=4, device="cpu", weight_decay=0.0),
        torch.device("cpu"),
    )
    loss_keys = {k for k in hist[0] if k.startswith("loss/")}
    assert len(loss_keys - {"loss/ce", "loss/total"}) >= 2
    assert all(math.isfinite(hist[0][k]) for k in loss_keys)
    assert heads0 and all(not torch.equal(p.detach(), heads0[n]) for n, p in method.named_parameters())
    assert any(not torch.equal(p.detach(), student0[n]) for n, p in student.named_parameters())
    assert torch.equal(emb, emb0) and torch.equal(logits, logits0) and emb.grad is None


def test_mfh_co_trains_measures_salience_then_distils_from_the_kept_channels() -> None:
    frames, labels, emb, logits = _data(1)
    loader = DataLoader(TensorDataset(frames, labels, emb, logits, torch.arange(N)), batch_size=4)
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=4), C)
    method = build_method(
        "mfh", Dims(student.embed_dim, 16, C, num_train=N), method_config("mfh", {"mfh": {"co_epochs": 1}})
    )
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", weight_decay=0.0)
    h1 = train(student, method, loader, None, cfg, torch.device("cpu"))
    assert "loss/mfh_co" in h1[0] and "loss/mfh_kd" not in h1[0]
    assert float(method.salience_batches) == 2 and not bool(method.fixed)  # 2 batches of epoch co_epochs = 1
    head = method.teacher_head.weight.detach().clone()
    h2 = train(student, method, loader, None, cfg, torch.device("cpu"))  # the counter goes on: epoch 2
    assert "loss/mfh_kd" in h2[0] and "loss/mfh_co" not in h2[0]
    assert bool(method.fixed) and int(method.removed.sum()) == int(0.75 * 16)
    assert torch.equal(method.teacher_head.weight, head)  # h_t frozen while distilling
    assert method.ce_weight == pytest.approx(0.5)


def test_mfh_without_salience_refuses_to_distil() -> None:
    m = build_method("mfh", Dims(4, 6, C, num_train=4), method_config("mfh", {"mfh": {"co_epochs": 1}}))
    m.counter.clips_seen.fill_(8)  # epoch 3: past co-training, but no batch of epoch 1 was seen here
    with pytest.raises(ConfigError, match="mfh.co_epochs"):
        m.loss(
            StudentOutput(torch.zeros(2, 1, 4), torch.zeros(2, 4), torch.zeros(2, C)),
            TeacherBatch(torch.zeros(2, 6), torch.zeros(2, C)),
            torch.tensor([0, 1]),
        )


def test_mfh_distillation_term_is_hintons_kd_from_the_frozen_channels() -> None:
    from xmkd.methods.base import kd_loss

    g = torch.Generator().manual_seed(3)
    m = build_method("mfh", Dims(4, 6, C, num_train=4), method_config("mfh", {"mfh": {"co_epochs": 1}}))
    m.counter.clips_seen.fill_(4)  # epoch 2: distilling
    m.removed.copy_(torch.tensor([True, False, True, True, False, True]))
    m.fixed.fill_(True)
    a, zs, zt = torch.randn(3, 6, generator=g), torch.randn(3, C, generator=g), torch.randn(3, C, generator=g)
    terms = m.loss(StudentOutput(torch.zeros(3, 1, 4), torch.zeros(3, 4), zs), TeacherBatch(a, zt), torch.tensor([0, -1, 2]))
    frozen = a.clone()
    frozen[:, [0, 2, 3, 5]] = a[:, [0, 2, 3, 5]].mean(dim=0)  # the removed channels at their batch mean
    with torch.no_grad():
        want = 0.5 * kd_loss(zs, m.teacher_head(frozen), 4.0)  # alpha 0.5, T 4: MGDFR's defaults
    assert set(terms.student) == {"mfh_kd"}
    assert float(terms.student["mfh_kd"]) == pytest.approx(float(want), rel=1e-6)
    assert m.ce_weight == pytest.approx(0.5)
