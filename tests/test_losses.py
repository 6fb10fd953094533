import math

import pytest
import torch

from affvae.config import Schedule
from affvae.losses import (
    affinity_loss,
    class_anchors,
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


def test_balanced_pairs_weigh_same_class_and_cross_class_pairs_as_two_halves(batch):
    z, c, A = batch
    n = len(z)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    err = {p: abs(float(A[c[p[0]], c[p[1]]]) - _cos(z[p[0]], z[p[1]])) for p in pairs}
    same = [e for (i, j), e in err.items() if c[i] == c[j]]
    other = [e for (i, j), e in err.items() if c[i] != c[j]]
    assert 0 < len(same) < len(other)  # 4 pairs of one class against 17 of two
    expected = (sum(same) / len(same) + sum(other) / len(other)) / 2
    assert float(affinity_loss(z, c, A, "reference", pairs="balanced")) == pytest.approx(expected, rel=1e-5)
    uniform = float(affinity_loss(z, c, A, "reference"))
    assert abs(expected - uniform) > 0.01  # the weighting changes S here
    # the formula convention scales it as it scales the plain mean: times N - 1
    assert float(affinity_loss(z, c, A, "formula", pairs="balanced")) == pytest.approx(expected * (n - 1), rel=1e-5)
    # a batch of one class has no cross-class half: its mean is the same-class pairs'
    one = torch.zeros(n, dtype=torch.long)
    alone = [abs(1 - _cos(z[i], z[j])) for i, j in pairs]
    assert float(affinity_loss(z, one, A, "reference", pairs="balanced")) == pytest.approx(
        sum(alone) / len(alone), rel=1e-5)


def test_balanced_anchor_pairs_weigh_the_own_anchor_as_one_half(batch):
    z, c, A = batch
    P = class_anchors(A, z.shape[1])
    cos = [[_cos(z[i], P[k]) for k in range(3)] for i in range(len(z))]
    own = [abs(1 - cos[i][int(c[i])]) for i in range(len(z))]
    other = [abs(float(A[c[i], k]) - cos[i][k]) for i in range(len(z)) for k in range(3) if k != c[i]]
    w = 2.0
    base = float(affinity_loss(z, c, A, "reference", pairs="balanced"))
    got = float(affinity_loss(z, c, A, "reference", anchors=P, anchor_weight=w, pairs="balanced"))
    assert got - base == pytest.approx(w * (sum(own) / len(own) + sum(other) / len(other)) / 2, rel=1e-5)


def test_affinity_loss_zero_when_latents_realise_the_matrix():
    A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    c = torch.tensor([0, 1, 0])
    assert float(affinity_loss(z, c, A, "formula")) == pytest.approx(0.0, abs=1e-6)
    assert float(affinity_loss(z, c, A, "reference")) == pytest.approx(0.0, abs=1e-6)


def test_class_anchors_realise_a_valid_cosine_matrix():
    # a Gram matrix of four unit vectors in 3-D: the anchors must reproduce it
    g = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    A = v @ v.T
    P = class_anchors(A, 5)
    assert P.shape == (4, 5)
    assert torch.allclose(P.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(P @ P.T, A, atol=1e-5)


def test_class_anchors_of_the_identity_are_orthonormal_and_truncate_to_the_dims():
    P = class_anchors(torch.eye(3), 3)
    assert torch.allclose(P @ P.T, torch.eye(3), atol=1e-6)
    # more classes than dims: the rank is cut to the latent size, rows stay unit
    A = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.1], [0.0, 0.1, 1.0]])
    P = class_anchors(A, 2)
    assert P.shape == (3, 2)
    assert torch.allclose(P.norm(dim=1), torch.ones(3), atol=1e-6)
    assert float((P @ P.T - A).abs().max()) < 0.15


def test_anchor_pairs_are_added_against_a_direct_loop(batch):
    z, c, A = batch
    n = len(z)
    P = class_anchors(A, z.shape[1])
    anchor_pairs = [abs(float(A[c[i], k]) - _cos(z[i], P[k])) for i in range(n) for k in range(len(A))]
    w = 0.5
    base = float(affinity_loss(z, c, A, "reference"))
    got = float(affinity_loss(z, c, A, "reference", anchors=P, anchor_weight=w))
    assert got == pytest.approx(base + w * sum(anchor_pairs) / len(anchor_pairs), rel=1e-5)
    base = float(affinity_loss(z, c, A, "formula"))
    got = float(affinity_loss(z, c, A, "formula", anchors=P, anchor_weight=w))
    assert got == pytest.approx(base + w * sum(anchor_pairs) / n, rel=1e-5)
    # weight 0 is the paper's S exactly
    assert float(affinity_loss(z, c, A, "formula", anchors=P, anchor_weight=0.0)) == pytest.approx(base)


def test_anchors_separate_a_merged_pair_where_item_pairs_cannot():
    # two classes with A = identity, every latent at the same point: the pairwise
    # term's gradient vanishes (cosine 1 is flat), the anchor pairs pull them apart
    A = torch.eye(2)
    c = torch.tensor([0, 1, 0, 1])
    z = torch.tensor([[1.0, 1.0]] * 4, requires_grad=True)
    affinity_loss(z, c, A, "reference").backward()
    assert float(z.grad.abs().max()) < 1e-6
    z.grad = None
    affinity_loss(z, c, A, "reference", anchors=class_anchors(A, 2), anchor_weight=1.0).backward()
    g = z.grad
    assert float((g[0] - g[1]).norm()) > 0.1  # the two classes are pushed different ways


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


@pytest.mark.parametrize("kind", ["mse", "bce"])
@pytest.mark.parametrize("convention", ["reference", "formula"])
def test_losses_on_logits_equal_the_losses_of_the_sigmoid_with_their_gradients(kind, convention):
    torch.manual_seed(3)
    x = torch.rand(5, 6, 7, dtype=torch.double)
    logits = (torch.randn(5, 6, 7, dtype=torch.double) * 3).requires_grad_()
    fused = reconstruction_loss(x, logits, kind, convention, from_logits=True)
    plain = reconstruction_loss(x, torch.sigmoid(logits), kind, convention)
    assert fused.dtype == torch.float32  # the loss is computed in float32, as the plain one
    (g_fused,) = torch.autograd.grad(fused, logits)
    (g_plain,) = torch.autograd.grad(plain, logits)
    assert float(fused) == pytest.approx(float(plain), rel=1e-5)
    assert torch.allclose(g_fused, g_plain, rtol=1e-4, atol=1e-9)


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


def test_reference_scores_the_affinity_of_mu_and_formula_that_of_z(batch):
    # mu and z differ (z = mu + noise, as sampled in training): the reference convention
    # must score S on mu, the paper's formula on z, each with its own scaling
    mu, c, A = batch
    z = mu + 1.5 * torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    n = len(mu)
    x = torch.rand(n, 4, 4)
    y = torch.rand(n, 4, 4)
    logvar = torch.zeros_like(mu)

    def over_pairs(v):  # |A - cos| of the pairs i < j, by hand
        return [abs(float(A[c[i], c[j]]) - _cos(v[i], v[j])) for i in range(n) for j in range(i + 1, n)]

    ref_mu = sum(over_pairs(mu)) / (n * (n - 1) / 2)
    formula_z = 2 * sum(over_pairs(z)) / n  # ordered pairs: each i < j twice, the diagonal 0
    _, ref = loss_terms(x, y, mu, logvar, z, c, A, beta=1.0, gamma=1.0, convention="reference")
    _, formula = loss_terms(x, y, mu, logvar, z, c, A, beta=1.0, gamma=1.0, convention="formula")
    assert float(ref["affinity"]) == pytest.approx(ref_mu, rel=1e-5)
    assert float(formula["affinity"]) == pytest.approx(formula_z, rel=1e-5)
    # the two latents really score differently, so a swap of mu and z could not pass
    assert abs(ref_mu - sum(over_pairs(z)) / (n * (n - 1) / 2)) > 0.05
    assert abs(formula_z - 2 * sum(over_pairs(mu)) / n) > 0.05
