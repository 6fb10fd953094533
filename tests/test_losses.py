import math

import pytest
import torch

from affvae.config import Schedule
from affvae.losses import (
    affinity_loss,
    kl_divergence,
    loss_terms,
    reconstruction_loss,
    schedule_value,
)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g)
    c = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    A = torch.tensor([[1.0, 0.3, -0.4], [0.3, 1.0, 0.6], [-0.4, 0.6, 1.0]])
    return z, c, A


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_affinity_loss_formula_matches_double_loop(batch):
    z, c, A = batch
    n = len(z)
    direct = sum(abs(float(A[c[i], c[j]]) - _cos(z[i], z[j])) for i in range(n) for j in range(n)) / n
    assert float(affinity_loss(z, c, A, "formula")) == pytest.approx(direct, rel=1e-5)


def test_affinity_loss_reference_is_mean_over_pairs_i_lt_j(batch):
    z, c, A = batch
    n = len(z)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    direct = sum(abs(float(A[c[i], c[j]]) - _cos(z[i], z[j])) for i, j in pairs) / len(pairs)
    assert float(affinity_loss(z, c, A, "reference")) == pytest.approx(direct, rel=1e-5)


def test_affinity_loss_zero_when_latents_realise_the_matrix():
    A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    c = torch.tensor([0, 1, 0])
    assert float(affinity_loss(z, c, A, "formula")) == pytest.approx(0.0, abs=1e-6)
    assert float(affinity_loss(z, c, A, "reference")) == pytest.approx(0.0, abs=1e-6)


def test_kl_against_direct_computation():
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    per = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)  # closed form against N(0, 1)
    assert float(kl_divergence(mu, logvar, "formula")) == pytest.approx(float(per.sum(1).mean()))
    assert float(kl_divergence(mu, logvar, "reference")) == pytest.approx(float(per.mean()))
    assert float(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0


def test_reconstruction_losses():
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    y = torch.tensor([[0.1, 0.8, 0.9, 0.3]])
    sq = [(a - b) ** 2 for a, b in zip(x[0].tolist(), y[0].tolist())]
    assert float(reconstruction_loss(x, y, "mse", "formula")) == pytest.approx(sum(sq))
    assert float(reconstruction_loss(x, y, "mse", "reference")) == pytest.approx(sum(sq) / 4)
    bce = -sum(a * math.log(b) + (1 - a) * math.log(1 - b) for a, b in zip(x[0].tolist(), y[0].tolist()))
    assert float(reconstruction_loss(x, y, "bce", "formula")) == pytest.approx(bce, rel=1e-5)


def test_gamma_zero_is_plain_beta_vae(batch):
    z, c, A = batch
    x = torch.rand(7, 4, 4)
    y = torch.rand(7, 4, 4)
    total, terms = loss_terms(x, y, z, torch.zeros_like(z), z, c, A, beta=2.0, gamma=0.0)
    assert float(terms["affinity"]) == 0.0
    assert float(total) == pytest.approx(float(terms["recon"] + 2.0 * terms["kl"]))
    total, terms = loss_terms(x, y, z, torch.zeros_like(z), z, c, A, beta=2.0, gamma=3.0)
    assert float(total) == pytest.approx(float(terms["recon"] + 2 * terms["kl"] + 3 * terms["affinity"]))


def test_schedules():
    const = Schedule()
    assert [schedule_value(const, 2.0, e, 10) for e in range(3)] == [2.0, 2.0, 2.0]
    lin = Schedule(kind="linear", warmup_epochs=4)
    assert [schedule_value(lin, 2.0, e, 10) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cyc = Schedule(kind="cyclical", cycles=2, ratio=0.5)
    vals = [schedule_value(cyc, 1.0, e, 8) for e in range(8)]
    # two cycles of 4 epochs: ramp over the first half, then flat at the full value
    assert vals == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
