"""CRD (memory bank + NCE) and CMC (in-batch symmetric InfoNCE): pinned losses, the memory bank,
and one epoch of the training loop on toy data."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from xmkd.errors import ConfigError
from xmkd.methods.base import Dims, TeacherBatch, build_method, known_methods, method_config
from xmkd.methods.cmc import CMC, CMCConfig, symmetric_infonce
from xmkd.methods.crd import CRD, CRDConfig, momentum_update, nce_loss, sample_contrast_rows
from xmkd.models.student import StudentConfig, StudentOutput, build_student
from xmkd.train import TrainConfig, train

E = math.exp


def _identity_heads(*linears: torch.nn.Linear) -> None:
    with torch.no_grad():
        for lin in linears:
            lin.weight.copy_(torch.eye(lin.out_features, lin.in_features))
            lin.bias.zero_()


def _student(v: torch.Tensor, c: int = 3) -> StudentOutput:
    return StudentOutput(v[:, None, :], v, torch.zeros(len(v), c))


# ----------------------------------------------------------------------------------------- CRD


def _tiny_crd(tau: float = 0.5) -> CRD:
    """N=3 clips, F=d=D=2, identity heads, default nce_k (clamped to K=N-1=2), hand-set memories."""
    method = build_method("crd", Dims(2, 2, 3, num_train=3), {"crd": CRDConfig(feat_dim=2, nce_t=tau)})
    assert isinstance(method, CRD) and method.nce_k == 2
    _identity_heads(method.embed_s, method.embed_t)
    method.memory_t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # teacher memory, rows t0 t1 t2
    method.memory_s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]])  # student memory, rows s0 s1 s2
    return method


def test_crd_nce_loss_matches_closed_form() -> None:
    """Batch rows [0, 1]; z_s = z_t = [[1,0],[0,1]] (v=[[1,0],[0,2]], a=[[3,0],[0,1]] normalised); τ=0.5.

    K = N-1 = 2, so every other row is a negative and the sample order does not matter.
    Student anchor vs teacher memory, exp(s/τ): clip 0 [pos t0: e², t1: 1, t2: e⁻²]; clip 1 [e², 1, 1].
    Teacher anchor vs student memory:            clip 0 [pos s0: 1, s1: e², s2: 1]; clip 1 [1, e², e⁻²].
    Z (first batch, official estimate) = N·mean = 3·(3 + 2e² + e⁻²)/6 on both sides; P = exp/Z, q = K/N = 2/3:
    L = -(1/B) Σ_b [log(P_b0/(P_b0+q+ε)) + Σ_k log(q/(P_bk+q+ε))], ε = 1e-7; total 0.8·(L_s + L_t).
    """
    method = _tiny_crd()
    method.train()
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    terms = method.loss(_student(v), TeacherBatch(a, torch.zeros(2, 3), torch.tensor([0, 1])), torch.tensor([0, 1]))

    q, eps = 2 / 3, 1e-7
    z = (3 + 2 * E(2) + E(-2)) / 2

    def nce(rows: list[list[float]]) -> float:
        total = 0.0
        for r in rows:
            p = [x / z for x in r]
            total += math.log(p[0] / (p[0] + q + eps)) + sum(math.log(q / (x + q + eps)) for x in p[1:])
        return -total / len(rows)

    l_s = nce([[E(2), 1, E(-2)], [E(2), 1, 1]])
    l_t = nce([[1, E(2), 1], [1, E(2), E(-2)]])
    assert set(terms.student) == {"crd_s"} and set(terms.heads_only) == {"crd_t"}
    assert terms.student["crd_s"].item() == pytest.approx(0.8 * l_s, rel=1e-6)
    assert terms.heads_only["crd_t"].item() == pytest.approx(0.8 * l_t, rel=1e-6)
    assert 0.8 * (l_s + l_t) == pytest.approx(2.9371965, rel=1e-6)  # literal: 0.6685982 + 2.2685982
    assert method.z.tolist() == pytest.approx([z, z], rel=1e-6)  # Z = 8.9567237 (float32 scores), kept fixed

    # the batch's memory rows moved: M_s[0] = norm(0.5·[0,1] + 0.5·[1,0]) = [1,1]/√2, M_s[1] likewise
    r = 1 / math.sqrt(2)
    assert torch.allclose(method.memory_s, torch.tensor([[r, r], [r, r], [0.0, -1.0]]))
    assert torch.allclose(method.memory_t, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))


def test_nce_loss_helper_single_row() -> None:
    """One clip, K=1, N=2 (q = 1/2), P = [1/2, 1/2]: -(log(0.5/1) + log(0.5/1)) = 2 ln 2 (ε aside)."""
    got = nce_loss(torch.tensor([[0.5, 0.5]]), num_data=2).item()
    assert got == pytest.approx(2 * math.log(2), rel=1e-6)
    assert got == pytest.approx(1.3862944, rel=1e-6)


def test_crd_memory_rows_move_towards_new_embeddings_with_momentum() -> None:
    """M[i] <- (m·M[i] + (1-m)·z_i)/‖·‖ for the batch rows only; Z is set once and then kept."""
    torch.manual_seed(0)
    n, d, dd = 10, 6, 5
    method = build_method("crd", Dims(d, dd, 3, num_train=n), {"crd": CRDConfig(feat_dim=4, nce_k=3, nce_m=0.5)})
    method.train()
    idx = torch.tensor([7, 2, 4])
    v, a = torch.randn(3, d), torch.rand(3, dd)
    old_s, old_t = method.memory_s.clone(), method.memory_t.clone()
    terms = method.loss(_student(v), TeacherBatch(a, torch.zeros(3, 3), idx), torch.zeros(3, dtype=torch.long))
    assert all(torch.isfinite(t) for t in (*terms.student.values(), *terms.heads_only.values()))
    with torch.no_grad():
        z_s, z_t = method.embed(v, a)
    for mem, old, z in ((method.memory_s, old_s, z_s), (method.memory_t, old_t, z_t)):
        expected = 0.5 * old[idx] + 0.5 * z
        expected = expected / expected.norm(dim=1, keepdim=True)
        assert torch.allclose(mem[idx], expected, atol=1e-6)
        assert torch.allclose(mem[idx].norm(dim=1), torch.ones(3))
        cos_old = torch.nn.functional.cosine_similarity(old[idx], z)
        cos_new = torch.nn.functional.cosine_similarity(mem[idx], z)
        assert torch.all(cos_new > cos_old)  # moved towards the new embeddings
        rest = torch.tensor([i for i in range(n) if i not in idx.tolist()])
        assert torch.equal(mem[rest], old[rest])
    z_first = method.z.clone()
    assert torch.all(z_first > 0)
    method.loss(_student(v), TeacherBatch(a, torch.zeros(3, 3), idx), torch.zeros(3, dtype=torch.long))
    assert torch.equal(method.z, z_first)


def test_momentum_update_helper() -> None:
    """m=0.25: row 1 <- norm(0.25·[0,2] + 0.75·[4,0]) = norm([3, 0.5]); other rows untouched."""
    mem = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = momentum_update(mem, torch.tensor([1]), torch.tensor([[4.0, 0.0]]), 0.25)
    n = math.sqrt(3**2 + 0.5**2)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [3 / n, 0.5 / n]]))
    assert torch.equal(mem, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # out of place


def test_crd_negative_sampling_is_distinct_excludes_self_and_is_seeded() -> None:
    index = torch.tensor([0, 5, 9, 3])
    torch.manual_seed(3)
    rows = sample_contrast_rows(index, num_data=10, k=4)
    torch.manual_seed(3)
    assert torch.equal(rows, sample_contrast_rows(index, num_data=10, k=4))  # global RNG -> deterministic
    assert rows.shape == (4, 5) and torch.equal(rows[:, 0], index)
    for b in range(4):
        neg = rows[b, 1:].tolist()
        assert len(set(neg)) == 4 and index[b].item() not in neg and all(0 <= j < 10 for j in neg)
    full = sample_contrast_rows(index, num_data=10, k=9)  # K = N-1: every other row
    for b in range(4):
        assert sorted(full[b, 1:].tolist()) == [j for j in range(10) if j != index[b].item()]
    with pytest.raises(ValueError, match="K <= N - 1"):
        sample_contrast_rows(index, num_data=10, k=10)


def test_crd_clamps_k_and_needs_num_train() -> None:
    assert build_method("crd", Dims(4, 4, 2, num_train=4000), {"crd": CRDConfig()}).nce_k == 3999
    assert build_method("crd", Dims(4, 4, 2, num_train=20000), {"crd": CRDConfig()}).nce_k == 16384
    with pytest.raises(ConfigError, match="num_train"):
        build_method("crd", Dims(4, 4, 2), {"crd": CRDConfig()})


def test_crd_index_none_eval_returns_nothing_train_raises() -> None:
    method = build_method("crd", Dims(4, 4, 2, num_train=8), {"crd": CRDConfig(feat_dim=4)})
    s, t = _student(torch.randn(2, 4), 2), TeacherBatch(torch.rand(2, 4), torch.zeros(2, 2))
    method.eval()
    terms = method.loss(s, t, torch.zeros(2, dtype=torch.long))
    assert not terms.student and not terms.heads_only
    method.train()
    with pytest.raises(ValueError, match="TeacherBatch.index"):
        method.loss(s, t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        method.loss(s, t._replace(index=torch.tensor([0, 8])), torch.zeros(2, dtype=torch.long))


def test_crd_state_dict_round_trip_restores_memory_and_z() -> None:
    torch.manual_seed(0)
    dims, cfg = Dims(6, 5, 3, num_train=10), {"crd": CRDConfig(feat_dim=4, nce_k=5)}
    method = build_method("crd", dims, cfg)
    method.train()
    for idx in (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 9])):
        method.loss(_student(torch.randn(3, 6)), TeacherBatch(torch.rand(3, 5), torch.zeros(3, 3), idx),
                    torch.zeros(3, dtype=torch.long))
    state = method.state_dict()
    assert {"memory_s", "memory_t", "z"} <= set(state)
    heads = {n for n, _ in method.named_parameters()}
    assert heads == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}  # memory: not learnable

    torch.manual_seed(123)  # a fresh build has a different random memory and no Z
    rebuilt = build_method("crd", dims, cfg)
    assert not torch.equal(rebuilt.memory_s, method.memory_s) and rebuilt.z.tolist() == [-1.0, -1.0]
    rebuilt.load_state_dict(state)
    for name in ("memory_s", "memory_t", "z"):
        assert torch.equal(getattr(rebuilt, name), getattr(method, name)), name

    # and the restored method computes the same loss (same negatives under the same seed)
    s, t = _student(torch.randn(3, 6)), TeacherBatch(torch.rand(3, 5), torch.zeros(3, 3), torch.tensor([5, 6, 7]))
    y = torch.zeros(3, dtype=torch.long)
    method.eval(), rebuilt.eval()
    torch.manual_seed(7)
    a = method.loss(s, t, y)
    torch.manual_seed(7)
    b = rebuilt.loss(s, t, y)
    assert a.student["crd_s"].item() == b.student["crd_s"].item()
    assert a.heads_only["crd_t"].item() == b.heads_only["crd_t"].item()


# ----------------------------------------------------------------------------------------- CMC


def test_cmc_symmetric_infonce_matches_closed_form() -> None:
    """z_v = [[1,0],[0,1]] (v = [[2,0],[0,1]]), z_a = [[1,0],[0.6,0.8]] (a = [[1,0],[3,4]]), τ = 0.5:
    S = z_v z_aᵀ/τ = [[2, 1.2], [0, 1.6]].
    L_va (rows):    [log(1+e^-0.8) + log(1+e^-1.6)]/2   (row 0: 2 vs 1.2; row 1: 1.6 vs 0)
    L_av (columns): [log(1+e^-2)   + log(1+e^-0.4)]/2   (col 0: 2 vs 0;   col 1: 1.6 vs 1.2)
    L = 1 · (L_va + L_av).
    """
    method = build_method("cmc", Dims(2, 2, 3), {"cmc": CMCConfig(feat_dim=2, temperature=0.5)})
    assert isinstance(method, CMC)
    _identity_heads(method.proj_v, method.proj_a)
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    terms = method.loss(_student(v), TeacherBatch(a, torch.zeros(2, 3)), torch.tensor([0, 1]))
    l_va = (math.log(1 + E(-0.8)) + math.log(1 + E(-1.6))) / 2
    l_av = (math.log(1 + E(-2)) + math.log(1 + E(-0.4))) / 2
    assert set(terms.student) == {"cmc"} and not terms.heads_only
    assert terms.student["cmc"].item() == pytest.approx(l_va + l_av, rel=1e-6)
    assert l_va + l_av == pytest.approx(0.5974723, rel=1e-6)  # literal
    assert terms.logs["cmc_va"] == pytest.approx(l_va, rel=1e-6)
    assert terms.logs["cmc_av"] == pytest.approx(l_av, rel=1e-6)


def test_cmc_single_pair_has_zero_loss() -> None:
    """B = 1: the only candidate is the positive, so both softmaxes are 1 and the loss is log 1 = 0."""
    lva, lav = symmetric_infonce(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.07)
    assert lva.item() == 0.0 and lav.item() == 0.0


# ------------------------------------------------------------------------------ both: the loop


def test_registry_and_default_sections() -> None:
    assert {"crd", "cmc"} <= set(known_methods())
    assert method_config("crd", {"crd": {}})["crd"] == CRDConfig(128, 16384, 0.07, 0.5, 0.8)
    assert method_config("cmc", {"cmc": {}})["cmc"] == CMCConfig(128, 0.07, 1.0)
    with pytest.raises(ConfigError, match="crd.nce_t"):
        method_config("crd", {"crd": {"nce_t": 0.0}})


@pytest.mark.parametrize("name", ["crd", "cmc"])
def test_heads_train_and_teacher_stays_frozen(name: str) -> None:
    n, c, dd = 8, 3, 16
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (n, 8, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(n) % c
    emb, logits = torch.rand(n, dd), torch.randn(n, c)
    emb0, logits0 = emb.clone(), logits.clone()
    loader = DataLoader(TensorDataset(frames, labels, emb, logits, torch.arange(n)), batch_size=4, shuffle=True)
    student = build_student(StudentConfig(width=4), c)
    method = build_method(name, Dims(32, dd, c, num_train=n), method_config(name, {name: {}}))
    heads0 = {k: p.detach().clone() for k, p in method.named_parameters()}
    buffers0 = {k: b.clone() for k, b in method.named_buffers()}
    assert heads0

    hist = train(student, method, loader, None, TrainConfig(epochs=1, batch_size=4, device="cpu"), torch.device("cpu"))

    for k, p in method.named_parameters():
        assert not torch.equal(p.detach(), heads0[k]), f"head parameter {k} did not change"
    assert torch.equal(emb, emb0) and torch.equal(logits, logits0)
    assert not emb.requires_grad and emb.grad is None and not logits.requires_grad and logits.grad is None
    terms = [k for k in hist[0] if k.startswith("loss/")]
    assert all(math.isfinite(hist[0][k]) for k in terms)
    if name == "crd":
        assert {"loss/crd_s", "loss/crd_t"} <= set(terms) and method.nce_k == n - 1
        for k in ("memory_s", "memory_t"):  # every clip was seen once: every row moved
            assert torch.all((getattr(method, k) != buffers0[k]).any(dim=1))
        assert torch.all(method.z > 0)
    else:
        assert "loss/cmc" in terms
