"""Cross-modal baselines CCL (arXiv 2104.10955) and XKD (arXiv 2211.13929): losses pinned to
hand-computed closed forms, the gradient groups, and one epoch of the training loop on toy data."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from xmkd.errors import ConfigError
from xmkd.methods.base import Dims, TeacherBatch, build_method, method_config
from xmkd.methods.ccl import CCLConfig, Composition, divergence_loss, nce_loss, symmetric_nce
from xmkd.methods.xkd import DEFAULT_GAMMAS, XKDConfig, dino_distill_loss, mmd_gaussian
from xmkd.models.student import StudentConfig, StudentOutput, build_student
from xmkd.train import TrainConfig, train

E = math.e
E2 = math.exp(2.0)
SMALL_HEAD = {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8}


# ----------------------------------------------------------------------------------------------- CCL
def test_ccl_nce_three_samples() -> None:
    """x̂ x̂2ᵀ = [[1,0,0],[0,1,1],[1,0,0]], τ = 0.5 -> rows softmax over [2,0,0], [0,2,2], [2,0,0];
    labels 0, 1, 0.

    row 0 (positives j=0,2; negative j=1), P = [e², 1, 1]/(e²+2):
        pos = -(log(e²/(e²+2)) + log(1/(e²+2)))/2 = ln(e²+2) - 1
        neg = -log(1 - 1/(e²+2))                   = ln(e²+2) - ln(e²+1)
    row 1 (positive j=1; negatives j=0,2), P = [1, e², e²]/(1+2e²):
        pos = -log(e²/(1+2e²))                              = ln(1+2e²) - 2
        neg = -(log(1 - 1/(1+2e²)) + log(1 - e²/(1+2e²)))/2 = ln(1+2e²) - (ln(2e²) + ln(1+e²))/2
    row 2 = row 0; loss = (2·row0 + row1)/3.
    """
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # norms differ: the loss normalises
    x2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 0])
    row0 = (math.log(E2 + 2) - 1) + (math.log(E2 + 2) - math.log(E2 + 1))
    row1 = (math.log(1 + 2 * E2) - 2) + (math.log(1 + 2 * E2) - (math.log(2 * E2) + math.log(1 + E2)) / 2)
    expected = (2 * row0 + row1) / 3
    assert nce_loss(x, x2, y, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.2705109, rel=1e-6)  # (2·(1.2395+0.1126) + 0.7587+0.3486)/3


def test_ccl_nce_single_class_batch_is_finite() -> None:
    """All labels equal (the reference divides by 0 negatives -> NaN): x = x2 = I, τ = 1,
    each row P = [e, 1]/(e+1) with both entries positive: -(1 - 2 ln(e+1))/2 = ln(1+e) - 1/2."""
    x = torch.eye(2)
    got = nce_loss(x, x, torch.tensor([0, 0]), 1.0)
    assert got.item() == pytest.approx(math.log(1 + E) - 0.5, rel=1e-6)
    assert got.item() == pytest.approx(0.8132617, rel=1e-6)
    assert symmetric_nce(x, x, torch.tensor([0, 0]), 1.0).item() == pytest.approx(2 * got.item(), rel=1e-6)


def test_ccl_divergence_kinds() -> None:
    """p = softmax([0, ln3]) = [1/4, 3/4], q = softmax([ln3, 0]) = [3/4, 1/4].

    symmetric_kl: KL(p‖q) + KL(q‖p) = 2 · (3/4 - 1/4) ln 3 = ln 3
    js: m = [1/2, 1/2]; KL(p‖m) + KL(q‖m) = 2 · (1/4 ln(1/2) + 3/4 ln(3/2)) = ½ ln ½ + 3/2 ln 3/2
    """
    zp = torch.tensor([[0.0, math.log(3.0)]])
    zq = torch.tensor([[math.log(3.0), 0.0]])
    assert divergence_loss(zp, zq, "symmetric_kl").item() == pytest.approx(math.log(3.0), rel=1e-6)
    js = 0.5 * math.log(0.5) + 1.5 * math.log(1.5)
    assert divergence_loss(zp, zq, "js").item() == pytest.approx(js, rel=1e-5)
    assert js == pytest.approx(0.2616241, rel=1e-6)
    assert divergence_loss(zp, zp).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence_loss(zp, zq, "jsd")


def test_ccl_composition_is_residual_on_the_teacher() -> None:
    """a = [1, 0], v = [0, 3] -> [â; v̂] = [1, 0, 0, 1]; W_r = [[1,2,3,4],[0,1,0,1]], b_r = [.5, -.5]:
    residual = [1+4+.5, 0+1-.5] = [5.5, .5]; f = a + residual = [6.5, .5];
    W_c = [[1,0],[0,1],[1,1]], b_c = 0 -> z_f = [6.5, .5, 7]."""
    comp = Composition(student_dim=2, teacher_dim=2, num_classes=3, normalize=True)
    with torch.no_grad():
        comp.mlp.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0]]))
        comp.mlp.bias.copy_(torch.tensor([0.5, -0.5]))
        comp.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        comp.fc.bias.zero_()
    z, f = comp(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    assert torch.allclose(f, torch.tensor([[6.5, 0.5]]))
    assert torch.allclose(z, torch.tensor([[6.5, 0.5, 7.0]]))


def _ccl(student_dim: int = 2, teacher_dim: int = 2, num_classes: int = 2, **kw: object):  # noqa: ANN202
    cfg = method_config("ccl", {"ccl": dict(kw)})
    return build_method("ccl", Dims(student_dim, teacher_dim, num_classes), cfg)


def test_ccl_full_loss_pinned_with_identity_composition() -> None:
    """Composition weights zeroed -> f = a and z_f = 0 (q uniform). v = a = I (orthonormal), y = [0, 1],
    τ = 0.5, C = 2, z_v rows [0, ln3] and [ln3, 0] (p = [1/4, 3/4] and its mirror).

    NCE(I, I): each row P = [e², 1]/(e²+1) over (positive i, negative j):
        -log(e²/(e²+1)) - log(1 - 1/(e²+1)) = 2(ln(e²+1) - 2); symmetrised: 4(ln(e²+1) - 2)
    -> ct_vm = ct_va = ct_ma = 4(ln(e²+1) - 2).
    div = 0.5 · [KL(p‖u) + KL(u‖p)] = 0.5 · [(¼ ln ½ + ¾ ln 3/2) + ½ ln(4/3)];  ce_comp = ln 2.
    """
    method = _ccl(head_gradient="separate")
    with torch.no_grad():
        for p in method.composition.parameters():
            p.zero_()
    a = torch.eye(2)
    zv = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    student = StudentOutput(a[:, None, :], a.clone(), zv)
    terms = method.loss(student, TeacherBatch(a, torch.zeros(2, 2)), torch.tensor([0, 1]))
    assert set(terms.student) == {"ct_vm", "ct_va", "div"} and set(terms.heads_only) == {"ce_comp", "ct_ma"}
    ct = 4 * (math.log(E2 + 1) - 2)
    for k in ("ct_vm", "ct_va"):
        assert terms.student[k].item() == pytest.approx(ct, rel=1e-6)
    assert terms.heads_only["ct_ma"].item() == pytest.approx(ct, rel=1e-6)
    assert ct == pytest.approx(0.5077120, rel=1e-6)
    div = 0.5 * ((0.25 * math.log(0.5) + 0.75 * math.log(1.5)) + 0.5 * math.log(4 / 3))
    assert terms.student["div"].item() == pytest.approx(div, rel=1e-6)
    assert div == pytest.approx(0.1373265, rel=1e-6)
    assert terms.heads_only["ce_comp"].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_ccl_gradient_groups_follow_the_reference() -> None:
    """Reference: the video net gets CE(z_v) + L_vm + L_va + L_div, the composition head gets
    CE(z_f) + L_vm + L_ma + L_div. Here: the heads-only group never reaches the student; the student
    group reaches the composition head (L_vm, L_div)."""
    torch.manual_seed(0)
    method = _ccl(student_dim=3, teacher_dim=3, num_classes=2)
    v = torch.randn(4, 3, requires_grad=True)
    zv = torch.randn(4, 2, requires_grad=True)
    student = StudentOutput(v[:, None, :], v, zv)
    teacher = TeacherBatch(torch.rand(4, 3), torch.randn(4, 2))
    terms = method.loss(student, teacher, torch.tensor([0, 1, 0, 1]))
    sum(terms.heads_only.values()).backward(inputs=list(method.parameters()), retain_graph=True)
    assert v.grad is None and zv.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    method.zero_grad(set_to_none=True)
    (terms.student["ct_vm"] + terms.student["div"]).backward(retain_graph=True)
    assert v.grad is not None and zv.grad is not None
    assert method.composition.mlp.weight.grad.abs().sum() > 0 and method.composition.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head_gradient, k", [("reference", 2.0), ("separate", 1.0)])
def test_ccl_head_gradient_is_the_references_sum(head_gradient: str, k: float) -> None:
    """The composition head's gradient after the loop's two backward passes (heads-only, then student
    group) = grad of CE_f + k·L_vm + L_ma + k·L_div, computed term by term: k = 2 in the reference's code
    at HEAD (b590483), 1 in its first release (5c18684). The student's gradient is the same in both."""
    torch.manual_seed(0)
    method = _ccl(student_dim=3, teacher_dim=3, num_classes=2, head_gradient=head_gradient)
    v = torch.randn(4, 3, requires_grad=True)
    zv = torch.randn(4, 2, requires_grad=True)
    student = StudentOutput(v[:, None, :], v, zv)
    teacher = TeacherBatch(torch.rand(4, 3), torch.randn(4, 2))
    y = torch.tensor([0, 1, 0, 1])
    heads = list(method.parameters())
    terms = method.loss(student, teacher, y)
    sum(terms.heads_only.values()).backward(inputs=heads, retain_graph=True)  # as xmkd.train does
    sum(terms.student.values()).backward()
    got = [p.grad.clone() for p in heads]
    v_grad = v.grad.clone()
    t = method.loss(student, teacher, y)  # the same terms, recomputed, each differentiated alone
    want_total = t.heads_only["ce_comp"] + k * t.student["ct_vm"] + t.heads_only["ct_ma"] + k * t.student["div"]
    want = torch.autograd.grad(want_total, heads, retain_graph=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    (v_student,) = torch.autograd.grad(sum(t.student.values()), [v])
    torch.testing.assert_close(v_grad, v_student)  # heads-only terms never reach the student
    assert CCLConfig().head_gradient == "reference"


def test_ccl_projects_the_student_only_when_dims_differ() -> None:
    assert isinstance(_ccl(4, 4).project, torch.nn.Identity)
    proj = _ccl(4, 6).project
    assert isinstance(proj, torch.nn.Linear) and proj.weight.shape == (6, 4) and proj.bias is None
    with pytest.raises(ConfigError, match="temperature"):
        _ccl(ccl_temperature=1.0)  # unknown key, strictly rejected
    with pytest.raises(ConfigError, match="must be > 0"):
        method_config("ccl", {"ccl": {"temperature": 0.0}})
    assert CCLConfig().temperature == 0.5 and CCLConfig().divergence_weight == 0.5


# ----------------------------------------------------------------------------------------------- XKD
def test_mmd_of_a_sample_with_itself_is_zero() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    assert mmd_gaussian(x, x).item() == 0.0
    assert mmd_gaussian(x, x + 1.0).item() > 0.0


def test_mmd_two_points_per_side_by_hand() -> None:
    """x = {0, 1}, y = {0, 2} (1-d). Squared distances: xx [[0,1],[1,0]], yy [[0,4],[4,0]],
    xy [[0,4],[1,1]]. Per bandwidth γ:
        mean Kxx = (2 + 2e^-γ)/4, mean Kyy = (2 + 2e^-4γ)/4, mean Kxy = (1 + e^-4γ + 2e^-γ)/4
        MMD²_γ = (2 + 2e^-γ + 2 + 2e^-4γ - 2 - 2e^-4γ - 4e^-γ)/4 = (1 - e^-γ)/2
    and the kernel sums over γ, so MMD² = Σ_γ (1 - e^-γ)/2.
    """
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [2.0]])
    assert mmd_gaussian(x, y, (1.0,)).item() == pytest.approx((1 - math.exp(-1)) / 2, rel=1e-6)
    assert (1 - math.exp(-1)) / 2 == pytest.approx(0.3160603, rel=1e-6)
    expected = sum((1 - math.exp(-g)) / 2 for g in DEFAULT_GAMMAS)
    assert mmd_gaussian(x, y).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.8690937, rel=1e-6)


def test_dino_distill_loss_by_hand() -> None:
    """k = 2, τ_s = 0.1, τ_t = 0.07, s = [0, 0.1] -> s/τ_s = [0, 1]; t = [0.07, 0].

    c = 0:        q = softmax([1, 0]) = [e, 1]/(e+1);  H = -Σ q log softmax([0,1]) = ln(1+e) - 1/(1+e)
    c = [0, .07]: q = softmax([1, -1]) = [e², 1]/(e²+1);                        H = ln(1+e) - 1/(e²+1)
    (a constant centre changes nothing: softmax is shift invariant.)
    """
    s = torch.tensor([[0.0, 0.1]])
    t = torch.tensor([[0.07, 0.0]])
    h0 = dino_distill_loss(s, t, torch.zeros(1, 2), 0.1, 0.07).item()
    assert h0 == pytest.approx(math.log(1 + E) - 1 / (1 + E), rel=1e-6)
    assert h0 == pytest.approx(1.0443203, rel=1e-6)
    assert dino_distill_loss(s, t, torch.full((1, 2), 0.07), 0.1, 0.07).item() == pytest.approx(h0, rel=1e-6)
    h1 = dino_distill_loss(s, t, torch.tensor([[0.0, 0.07]]), 0.1, 0.07).item()
    assert h1 == pytest.approx(math.log(1 + E) - 1 / (E2 + 1), rel=1e-6)
    assert h1 == pytest.approx(1.1940588, rel=1e-6)


def _xkd(student_dim: int = 6, teacher_dim: int = 5, **kw: object):  # noqa: ANN202
    cfg = method_config("xkd", {"xkd": {**SMALL_HEAD, **kw}})
    return build_method("xkd", Dims(student_dim, teacher_dim, 3), cfg)


@pytest.mark.parametrize("align", [True, False])
def test_xkd_terms_switch_and_gradients(align: bool) -> None:
    """align on: {distill, align}, the teacher head trained (by MMD only); off: {distill}, the teacher
    head frozen. The distillation term never reaches the teacher head (its target is detached)."""
    torch.manual_seed(0)
    method = _xkd(align=align)
    v = torch.randn(4, 6, requires_grad=True)
    student = StudentOutput(v[:, None, :], v, torch.randn(4, 3))
    teacher = TeacherBatch(torch.rand(4, 5), torch.randn(4, 3))
    terms = method.loss(student, teacher, torch.tensor([0, 1, 2, 0]))
    assert set(terms.student) == ({"distill", "align"} if align else {"distill"}) and not terms.heads_only
    assert "mmd" in terms.logs and terms.logs["mmd"] > 0
    if align:
        assert terms.student["align"].item() == pytest.approx(terms.logs["mmd"], rel=1e-6)
    assert all(p.requires_grad == align for p in method.teacher_head.parameters())
    terms.student["distill"].backward(retain_graph=True)
    assert all(p.grad is None for p in method.teacher_head.parameters())
    assert v.grad is not None and all(p.grad is not None for p in method.student_head.parameters())
    if align:
        terms.student["align"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.teacher_head.parameters())


def test_xkd_center_is_an_ema_of_teacher_outputs() -> None:
    """c <- 0.9·c + 0.1·mean_i h_t(a_i), after the loss, in training mode only."""
    torch.manual_seed(0)
    method = _xkd()
    a = torch.rand(4, 5)
    v = torch.randn(4, 6)
    student = StudentOutput(v[:, None, :], v, torch.randn(4, 3))
    with torch.no_grad():
        t = method.teacher_head(a)
    method.loss(student, TeacherBatch(a, torch.zeros(4, 3)), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(method.center, 0.1 * t.mean(0, keepdim=True), atol=1e-6)
    method.eval()
    before = method.center.clone()
    method.loss(student, TeacherBatch(a, torch.zeros(4, 3)), torch.zeros(4, dtype=torch.long))
    assert torch.equal(method.center, before)


def test_xkd_head_shapes_and_config() -> None:
    method = _xkd(n_layers=3)
    out = method.student_head(torch.randn(3, 6))
    assert out.shape == (3, 16)
    # LayerNorm without affine at the end: zero mean, unit variance per row
    assert torch.allclose(out.mean(1), torch.zeros(3), atol=1e-5)
    assert method.center.shape == (1, 16)
    c = XKDConfig()
    assert (c.out_dim, c.hidden_dim, c.bottleneck_dim, c.n_layers) == (8192, 2048, 256, 3)
    assert (c.student_temp, c.teacher_temp, c.center_momentum) == (0.1, 0.07, 0.9)
    assert c.gammas == DEFAULT_GAMMAS and c.align
    assert method_config("xkd", {"xkd": {"gammas": [1, 2]}})["xkd"].gammas == (1.0, 2.0)
    with pytest.raises(ConfigError, match="gammas"):
        method_config("xkd", {"xkd": {"gammas": [1.0, -1.0]}})


@pytest.mark.parametrize("shared", [True, False])
def test_xkd_heads_share_one_layernorm_as_the_reference(shared: bool) -> None:
    """Reference DINOHead: ``norm = self._build_norm(...)`` once, appended after every hidden Linear, so
    n_layers - 1 = 3 hidden layers use one LayerNorm module (one weight, one bias)."""
    head = _xkd(n_layers=4, shared_norm=shared).student_head
    norms = [m for m in head.mlp if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3
    assert len({id(m) for m in norms}) == (1 if shared else 3)
    # parameters() counts a shared module once: 4 Linear (weight, bias) + 1 or 3 LayerNorm (weight, bias)
    assert len(list(head.mlp.parameters())) == 8 + (2 if shared else 6)
    assert XKDConfig().shared_norm is True


# ----------------------------------------------------------------------------- training loop (both)
def _toy_loader(n: int, teacher_dim: int, num_classes: int) -> tuple[DataLoader, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (n, 8, 32, 32, 3), dtype=torch.uint8)
    y = torch.arange(n) % num_classes
    emb, logits = torch.rand(n, teacher_dim), torch.randn(n, num_classes)
    ds = TensorDataset(frames, y, emb, logits, torch.arange(n))
    return DataLoader(ds, batch_size=4, shuffle=False), emb, logits


@pytest.mark.parametrize(
    ("name", "teacher_dim", "params"),
    [
        ("ccl", 32, {"ccl": {}}),  # D = d: the reference setting, no projection
        ("ccl", 24, {"ccl": {"divergence": "js"}}),  # D != d: projection head
        ("xkd", 24, {"xkd": dict(SMALL_HEAD)}),
        ("xkd", 24, {"xkd": {**SMALL_HEAD, "align": False}}),
    ],
)
def test_heads_train_and_teacher_stays_frozen(name: str, teacher_dim: int, params: dict) -> None:
    num_classes = 3
    loader, emb, logits = _toy_loader(8, teacher_dim, num_classes)
    emb0, logits0 = emb.clone(), logits.clone()
    torch.manual_seed(0)
    student = build_student(StudentConfig(width=4), num_classes)  # d = 32
    method = build_method(name, Dims(32, teacher_dim, num_classes, 8), method_config(name, params))
    trainable = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if not p.requires_grad}
    assert trainable
    hist = train(student, method, loader, None, TrainConfig(epochs=1, batch_size=4, device="cpu"), torch.device("cpu"))
    after = dict(method.named_parameters())
    for n, p0 in trainable.items():
        assert not torch.equal(after[n].detach(), p0), f"head parameter {n} did not change"
    for n, p0 in frozen.items():
        assert torch.equal(after[n].detach(), p0), f"frozen parameter {n} changed"
    assert torch.equal(emb, emb0) and torch.equal(logits, logits0)
    assert emb.grad is None and logits.grad is None and not emb.requires_grad
    losses = {k: v for k, v in hist[0].items() if k.startswith("loss/")}
    assert losses and all(math.isfinite(v) for v in losses.values())
    expected = {"ccl": {"ct_vm", "ct_va", "ce_comp", "ct_ma", "div"}, "xkd": {"distill"}}[name]
    assert expected <= {k.split("/", 1)[1] for k in losses}
