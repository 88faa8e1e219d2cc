"""Feature-level baselines: FitNet, PKT, CC, RKD.

Per method: (1) a loss value pinned to a closed form computed by hand with ``math`` (and the literal);
(2) one epoch of the real training loop on toy clips: the method's heads train, the teacher tensors stay
untouched and gradient-free, every loss term is finite.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from xmkd.errors import ConfigError
from xmkd.methods import Dims, TeacherBatch, build_method, method_config
from xmkd.methods.cc import CCConfig, cc_loss, cc_repdistiller_loss, taylor_rbf_correlation
from xmkd.methods.fitnet import hint_loss
from xmkd.methods.pkt import cosine_kernel_probabilities, pkt_loss
from xmkd.methods.rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from xmkd.models.student import StudentConfig, StudentOutput, build_student, normalize_frames
from xmkd.train import TrainConfig, train

C = 3
SQRT2 = math.sqrt(2.0)


def _huber(x: float) -> float:
    """l_δ with δ = 1."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _student_output(v: torch.Tensor) -> StudentOutput:
    """A StudentOutput carrying feature v (B, d) (one token per clip, dummy logits)."""
    return StudentOutput(v[:, None, :], v, torch.zeros(v.shape[0], C))


def _teacher(a: torch.Tensor) -> TeacherBatch:
    return TeacherBatch(a, torch.zeros(a.shape[0], C))


# ----------------------------------------------------------------------------- FitNet


def test_fitnet_hint_loss_matches_closed_form() -> None:
    """r(v) = ReLU(W v), W = [[1,0],[0,1],[1,-1]], b = 0, v = [[1,2],[0,1]] -> r = [[1,2,0],[0,1,0]].

    a = [[1,1,1],[0,0,1]]: r − a = [[0,1,-1],[0,1,-1]] -> squared errors sum to 4 over B·D = 6 entries,
    L = 4/6 = 2/3; the method returns w·L with w = 100.
    """
    dims = Dims(student_dim=2, teacher_dim=3, num_classes=C)
    method = build_method("fitnet", dims, method_config("fitnet", {"fitnet": {}}))
    with torch.no_grad():
        method.regressor.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        method.regressor.linear.bias.zero_()
    v = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    expected = 4.0 / 6.0
    assert hint_loss(method.regressor(v), a).item() == pytest.approx(expected, rel=1e-6)
    terms = method.loss(_student_output(v), _teacher(a), torch.zeros(2, dtype=torch.long))
    assert set(terms.student) == {"fitnet"} and not terms.heads_only
    assert terms.student["fitnet"].item() == pytest.approx(100.0 * expected, rel=1e-6)
    assert 100.0 * expected == pytest.approx(66.666667, rel=1e-6)
    # relu: false gives the linear regressor: W v = [[1,2,-1],[0,1,-1]] -> errors [[0,1,-2],[0,1,-2]] -> 10/6
    linear = build_method("fitnet", dims, method_config("fitnet", {"fitnet": {"relu": False}}))
    linear.load_state_dict(method.state_dict())
    assert hint_loss(linear.regressor(v), a).item() == pytest.approx(10.0 / 6.0, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        hint_loss(v, a)


# ----------------------------------------------------------------------------- PKT


def test_pkt_matches_closed_form() -> None:
    """s = [[1,0],[0,1],[1,1]] (d = 2), t = I_3 (D = 3): kernel K = (cos + 1)/2, rows normalised.

    Student: cos_12 = 0, cos_13 = cos_23 = 1/√2; with c = (1 + 1/√2)/2,
        q_1 = [1, ½, c]/(3/2 + c),  q_2 = [½, 1, c]/(3/2 + c),  q_3 = [c, c, 1]/(1 + 2c).
    Teacher: all cos = 0 -> p_1 = [½, ¼, ¼], p_2 = [¼, ½, ¼], p_3 = [¼, ¼, ½].
    L = (1/9) Σ_ij p_ij log(p_ij/q_ij) = (2·KL(p_1‖q_1) + KL(p_3‖q_3)) / 9  (rows 1 and 2 are mirror images).
    """
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.eye(3)
    c = (1 + 1 / SQRT2) / 2

    def kl(p: list[float], q: list[float]) -> float:
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    row1 = kl([0.5, 0.25, 0.25], [1 / (1.5 + c), 0.5 / (1.5 + c), c / (1.5 + c)])
    row3 = kl([0.25, 0.25, 0.5], [c / (1 + 2 * c), c / (1 + 2 * c), 1 / (1 + 2 * c)])
    expected = (2 * row1 + row3) / 9
    # the authors' ε = 1e-7 (norm and log) moves the value by ~1e-7 only
    assert pkt_loss(s, t).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.0103879391, rel=1e-6)  # by hand: (2·0.0290791 + 0.0353333)/9
    q = cosine_kernel_probabilities(s)
    assert torch.allclose(q.sum(1), torch.ones(3)) and q[0, 1].item() == pytest.approx(0.5 / (1.5 + c), rel=1e-6)
    # identical geometry (any scale, any dimension) -> 0
    assert pkt_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-7)

    method = build_method("pkt", Dims(2, 3, C), method_config("pkt", {"pkt": {}}))
    terms = method.loss(_student_output(s), _teacher(t), torch.zeros(3, dtype=torch.long))
    assert set(terms.student) == {"pkt"} and not terms.heads_only
    assert terms.student["pkt"].item() == pytest.approx(30000.0 * expected, rel=1e-4)


# ----------------------------------------------------------------------------- CC


def test_cc_taylor_rbf_matches_closed_form() -> None:
    """γ = 0.4, P = 2: ψ(z) = e^(−0.8)·(1 + 0.8 z + 0.32 z²) on the cosines z of L2-normalised features.

    s = [[1,0],[0,1],[1,1]] -> z_12 = 0, z_13 = z_23 = 1/√2, z_ii = 1; t = I_3 -> z_ij = 0 (i != j).
    Diagonals and the (1,2) pair agree; the pairs (1,3), (2,3) count twice each:
        L = (1/9) · 4 · (ψ(1/√2) − ψ(0))² = (4/9) · e^(−1.6) · (0.8/√2 + 0.16)².
    """
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.eye(3)
    expected = 4 / 9 * math.exp(-1.6) * (0.8 / SQRT2 + 0.16) ** 2
    assert cc_loss(s, t, gamma=0.4, order=2).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.0472544934, rel=1e-6)  # by hand: 4/9 · (0.7754004 − 0.4493290)²
    psi = taylor_rbf_correlation(t, 0.4, 2)
    assert psi[0, 0].item() == pytest.approx(math.exp(-0.8) * 2.12, rel=1e-6)
    assert psi[0, 1].item() == pytest.approx(math.exp(-0.8), rel=1e-6)
    # a high Taylor order approaches the exact RBF exp(−γ‖x − y‖²) = exp(−0.4·2) for orthogonal unit vectors
    assert taylor_rbf_correlation(t, 0.4, 12)[0, 0].item() == pytest.approx(1.0, rel=1e-6)

    method = build_method("cc", Dims(2, 3, C), method_config("cc", {"cc": {}}))
    assert list(method.parameters()) == []  # taylor_rbf needs no heads (B x B matrices)
    terms = method.loss(_student_output(s), _teacher(t), torch.zeros(3, dtype=torch.long))
    assert terms.student["cc"].item() == pytest.approx(100.0 * expected, rel=1e-5)


def test_cc_repdistiller_variant_matches_closed_form() -> None:
    """f_s = [[1,2],[3,4],[0,1]], f_t = [[0,0],[1,1],[1,1]] -> Δ = |f_s − f_t| = [[1,2],[2,3],[1,0]].

    Consecutive rows: Δ_1·Δ_2 = 1·2 + 2·3 = 8, Δ_2·Δ_3 = 2·1 + 3·0 = 2 -> L = (8 + 2)/2 = 5.
    """
    fs = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
    ft = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert cc_repdistiller_loss(fs, ft).item() == pytest.approx(5.0, rel=1e-7)
    assert cc_repdistiller_loss(fs[:1], ft[:1]).item() == 0.0

    cfg = method_config("cc", {"cc": {"variant": "repdistiller", "embed_dim": 2}})
    assert cfg["cc"].resolved_weight == 0.02
    method = build_method("cc", Dims(2, 2, C), cfg)
    with torch.no_grad():  # identity embeddings -> the method's value is 0.02 · 5
        for lin in (method.embed_student, method.embed_teacher):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    terms = method.loss(_student_output(fs), _teacher(ft), torch.zeros(3, dtype=torch.long))
    assert terms.student["cc"].item() == pytest.approx(0.1, rel=1e-6)


def test_cc_config_is_checked() -> None:
    assert CCConfig().resolved_weight == 100.0 and CCConfig(weight=3.0).resolved_weight == 3.0
    with pytest.raises(ConfigError, match="not allowed"):
        method_config("cc", {"cc": {"variant": "bilinear"}})
    with pytest.raises(ConfigError, match="gamma"):
        method_config("cc", {"cc": {"gamma": 0.0}})


# ----------------------------------------------------------------------------- RKD


def test_rkd_distance_matches_closed_form() -> None:
    """s = [0,0],[1,0],[0,1] (distances 1, 1, √2); t = [0,0],[1,0],[2,0] (distances 1, 2, 1).

    μ_s = (2 + √2)/3, μ_t = 4/3 (means over the 6 off-diagonal entries). Normalised pairs (12, 13, 23):
        s: [1, 1, √2]/μ_s,   t: [3/4, 3/2, 3/4].
    All |differences| < 1 (Huber in its quadratic part); each pair counts twice, diagonals give 0:
        L_D = (2/9) · Σ_pairs ½ (s − t)².
    """
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    mu_s = (2 + SQRT2) / 3
    ds = [1 / mu_s, 1 / mu_s, SQRT2 / mu_s]
    dt = [0.75, 1.5, 0.75]
    expected = 2 / 9 * sum(_huber(a - b) for a, b in zip(ds, dt, strict=True))
    assert rkd_distance_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.0716991411, rel=1e-6)  # by hand: (0.12868² + 0.62132² + 0.49264²)/9
    assert torch.allclose(pairwise_distances(s), torch.tensor([[0, 1, 1], [1, 0, SQRT2], [1, SQRT2, 0]]))


def test_rkd_angle_matches_closed_form() -> None:
    """Same points. Cosine of the angle at each vertex i between the two other points:

        s: right angle at s_1 -> 0; at s_2 and s_3 -> 1/√2.     t (collinear): t_1 -> 1, t_2 -> −1, t_3 -> 1.
    Of the 27 triplets (i, j, k), those with j = i or k = i are 0 on both sides and j = k gives 1 on
    both sides; the two orders of the two other points give the vertex cosine. Huber of the differences:
        i=1: |0 − 1| = 1 -> 1 − ½ = ½;  i=2: 1/√2 + 1 -> 1/√2 + ½;  i=3: 1 − 1/√2 < 1 -> ½ (1 − 1/√2)².
    L_A = (2/27)(½ + 1/√2 + ½ + ½ (1 − 1/√2)²) = (2/27)(7/4) = 7/54.
    """
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    r = 1 / SQRT2
    expected = 2 / 27 * (_huber(0 - 1) + _huber(r + 1) + _huber(r - 1))
    assert rkd_angle_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(7 / 54, rel=1e-9) and 7 / 54 == pytest.approx(0.1296296296, rel=1e-9)


def test_rkd_method_weights_and_normalisation() -> None:
    """Method = w·(25·L_D + 50·L_A), on raw features (normalize: false) or on L2-normalised ones."""
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    y = torch.zeros(3, dtype=torch.long)
    raw = build_method("rkd", Dims(2, 2, C), method_config("rkd", {"rkd": {"normalize": False}}))
    terms = raw.loss(_student_output(s), _teacher(t), y)
    assert list(raw.parameters()) == [] and not terms.heads_only
    assert terms.student["rkd_distance"].item() == pytest.approx(25 * 0.0716991411, rel=1e-5)
    assert terms.student["rkd_angle"].item() == pytest.approx(50 * 7 / 54, rel=1e-5)

    s2 = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    t2 = torch.tensor([[1.0, 2.0], [2.0, 0.0], [1.0, 1.0]])
    normed = build_method("rkd", Dims(2, 2, C), method_config("rkd", {"rkd": {"weight": 2.0}}))
    terms = normed.loss(_student_output(s2), _teacher(t2), y)
    sn, tn = torch.nn.functional.normalize(s2, dim=1), torch.nn.functional.normalize(t2, dim=1)
    assert terms.student["rkd_distance"].item() == pytest.approx(50 * rkd_distance_loss(sn, tn).item(), rel=1e-6)
    assert terms.student["rkd_angle"].item() == pytest.approx(100 * rkd_angle_loss(sn, tn).item(), rel=1e-6)


# ----------------------------------------------------------------------------- training loop

N, T, H, W = 8, 8, 32, 32
TEACHER_DIM = 24  # != the student's d = 8·width = 32: exercises the dimension adaptation

CASES = [
    ("fitnet", {"fitnet": {}}, {"regressor.linear.weight", "regressor.linear.bias"}),
    ("pkt", {"pkt": {}}, set()),
    ("cc", {"cc": {}}, set()),
    (
        "cc",
        {"cc": {"variant": "repdistiller"}},
        {"embed_student.weight", "embed_student.bias", "embed_teacher.weight", "embed_teacher.bias"},
    ),
    ("rkd", {"rkd": {}}, set()),
]


def _toy_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (N, T, H, W, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(N) % C
    emb = torch.rand(N, TEACHER_DIM, generator=g)  # post-ReLU-like, >= 0
    logits = torch.randn(N, C, generator=g)
    return frames, labels, emb, logits


@pytest.mark.parametrize(("name", "params", "heads"), CASES, ids=["fitnet", "pkt", "cc", "cc_repdistiller", "rkd"])
def test_one_epoch_trains_heads_and_leaves_teacher_frozen(name: str, params: dict, heads: set[str]) -> None:
    frames, labels, emb, logits = _toy_data()
    emb0, logits0 = emb.clone(), logits.clone()
    loader = DataLoader(TensorDataset(frames, labels, emb, logits, torch.arange(N)), batch_size=4)
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=4), C)
    method = build_method(name, Dims(student.embed_dim, TEACHER_DIM, C, num_train=N), method_config(name, params))
    assert {n for n, _ in method.named_parameters()} == heads
    heads0 = {n: p.detach().clone() for n, p in method.named_parameters()}
    student0 = {n: p.detach().clone() for n, p in student.named_parameters()}

    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", weight_decay=0.0)  # no decay: changes come from losses
    hist = train(student, method, loader, None, cfg, torch.device("cpu"))

    loss_keys = [k for k in hist[0] if k.startswith("loss/")]
    assert {"loss/ce", "loss/total"} < set(loss_keys) and len(loss_keys) >= 3
    assert all(math.isfinite(hist[0][k]) for k in loss_keys)
    for n, p in method.named_parameters():
        assert not torch.equal(p.detach(), heads0[n]), f"head parameter {n} did not change"
    assert any(not torch.equal(p.detach(), student0[n]) for n, p in student.named_parameters())
    assert torch.equal(emb, emb0) and torch.equal(logits, logits0)
    assert not emb.requires_grad and emb.grad is None and logits.grad is None


@pytest.mark.parametrize(("name", "params", "heads"), CASES, ids=["fitnet", "pkt", "cc", "cc_repdistiller", "rkd"])
def test_distillation_term_alone_reaches_student_and_heads(name: str, params: dict, heads: set[str]) -> None:
    """Backpropagating only the method's terms (no CE) gives the student and every head a gradient."""
    frames, labels, emb, logits = _toy_data()
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=4), C)
    method = build_method(name, Dims(student.embed_dim, TEACHER_DIM, C), method_config(name, params))
    out = student(normalize_frames(frames[:4]))
    terms = method.loss(out, TeacherBatch(emb[:4], logits[:4]), labels[:4])
    assert terms.student and not terms.heads_only
    sum(terms.student.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.layers.parameters())
    for n, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert student.fc.weight.grad is None  # feature-level terms do not touch the classifier
