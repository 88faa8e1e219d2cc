"""Loss values pinned to hand-computed numbers (closed forms written out independently of the code)."""

from __future__ import annotations

import math

import pytest
import torch

from xmkd.methods.kd import kd_loss
from xmkd.methods.mnf_csc import CSCConfig, csc_loss, csc_temperature, gate_norm, triplet_loss

E2 = math.exp(2.0)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # v: student features, vs: MNF-selected features, labels: 0, 1, 0
    v = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])  # norms differ: the loss normalises
    vs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 0])
    return v, vs, y


def test_csc_fixed_temperature_three_samples() -> None:
    """cos matrix [[1,0,0],[0,1,1],[1,0,0]] / tau=0.5 -> rows softmax over [2,0,0], [0,2,2], [2,0,0].

    row 0 (label 0, positives j=0,2): -(log(e²/(e²+2)) + log(1/(e²+2)))/2 = ln(e²+2) - 1
    row 1 (label 1, positive j=1):     -log(e²/(1+2e²))                    = ln(1+2e²) - 2
    row 2 = row 0.
    """
    v, vs, y = _batch()
    expected = (2 * (math.log(E2 + 2) - 1) + (math.log(1 + 2 * E2) - 2)) / 3
    got = csc_loss(v, vs, y, 0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.0792377, rel=1e-6)  # by hand: (2·1.2395447 + 0.7586237)/3


def test_csc_adaptive_temperature_uses_cos_of_selected_audio() -> None:
    """tau_ij = cos(v_i, a'_j) + tau0 with a' = vs and tau0 = 0.5: tau = C + 0.5, s = C / tau.

    row 0: s = [1/1.5, 0, 0] -> -(log(e^(2/3)/(e^(2/3)+2)) + log(1/(e^(2/3)+2)))/2
    row 1: s = [0, 2/3, 2/3] -> -log(e^(2/3)/(1+2e^(2/3)))
    """
    v, vs, y = _batch()
    tau = csc_temperature(v, vs, CSCConfig(temperature=0.5, adaptive=True))
    assert torch.allclose(tau, torch.tensor([[1.5, 0.5, 0.5], [0.5, 1.5, 1.5], [1.5, 0.5, 0.5]]))
    e = math.exp(2 / 3)
    row0 = -(math.log(e / (e + 2)) + math.log(1 / (e + 2))) / 2
    row1 = -math.log(e / (1 + 2 * e))
    assert csc_loss(v, vs, y, tau).item() == pytest.approx((2 * row0 + row1) / 3, rel=1e-6)


def test_csc_tau_guard_is_optional() -> None:
    """Faithful: a cos below -tau0 gives a non-positive tau (counted, not fixed); tau_min clamps it."""
    v = torch.tensor([[1.0, 0.0]])
    a = torch.tensor([[-1.0, 0.0]])
    assert csc_temperature(v, a, CSCConfig(temperature=0.07)).item() == pytest.approx(-0.93)
    assert csc_temperature(v, a, CSCConfig(temperature=0.07, tau_min=0.01)).item() == pytest.approx(0.01)


def test_kd_matches_closed_form() -> None:
    """T=2, z_s=[1,2,3], z_t=[3,2,1]: T² Σ p_t (log p_t - log p_s), p = softmax(z/T)."""
    zs, zt, t = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0

    def softmax(z: list[float]) -> list[float]:
        ex = [math.exp(x / t) for x in z]
        return [x / sum(ex) for x in ex]

    ps, pt = softmax(zs), softmax(zt)
    expected = t * t * sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
    got = kd_loss(torch.tensor([zs]), torch.tensor([zt]), t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.2806267, rel=1e-6)  # by hand: 4·(0.5065−0.1863)·1.0000
    # batch mean: two identical rows give the same value
    assert kd_loss(torch.tensor([zs, zs]), torch.tensor([zt, zt]), t).item() == pytest.approx(expected, rel=1e-6)


def test_triplet_and_gate_norm() -> None:
    """triplet = mean max(0, cos(v,a) - cos(v,a') + m); gate norm = mean of row L1 norms (W2, or W1+W2)."""
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # cos 1/sqrt2, 0
    a_sel = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos 1, 1/sqrt2
    r = 1 / math.sqrt(2)
    expected = (max(0.0, r - 1 + 0.2) + max(0.0, 0 - r + 0.2)) / 2  # both hinge at 0 -> 0
    assert triplet_loss(v, a, a_sel, 0.2).item() == pytest.approx(expected, abs=1e-7)
    assert triplet_loss(v, a_sel, a, 0.2).item() == pytest.approx(((1 - r + 0.2) + (r - 0 + 0.2)) / 2, rel=1e-6)
    w1 = torch.tensor([[1.0, -2.0], [0.5, 0.5]])  # row L1: 3, 1 -> mean 2
    w2 = torch.tensor([[-4.0, 0.0]])  # row L1: 4
    assert gate_norm((w1, w2), "w2").item() == pytest.approx(4.0)
    assert gate_norm((w1, w2), "both").item() == pytest.approx(6.0)
