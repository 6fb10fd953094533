import re

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from affvae.affinity.metrics import (
    aligned_matrix,
    fsc_compare,
    fsc_prepare,
    rotation_set,
    similarity,
    similarity_matrix,
)
from affvae.data.simulate import AlphanumericSimulator, TetraminoSimulator
from affvae.errors import AffinityError, DataError
from affvae.transforms.augment import angle_to_matrix, rotate


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    return np.stack([gaussian_filter(v, 1.5) for v in rng.standard_normal((4, 24, 24, 24))])


def direct_fsc(a, b):
    """Shell-weighted mean FSC from full FFTs, one shell at a time."""
    n = a.shape[0]
    Fa, Fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(n, 1.0 / n)
    r = np.round(np.sqrt(sum(g**2 for g in np.meshgrid(*[f] * a.ndim, indexing="ij"))))
    num = den = 0.0
    for s in range(n // 2 + 1):
        m = r == s
        c = (Fa[m] * Fb[m].conj()).real.sum() / np.sqrt((abs(Fa[m]) ** 2).sum() * (abs(Fb[m]) ** 2).sum())
        num += m.sum() * c
        den += m.sum()
    return num / den


@pytest.mark.parametrize("shape", [(24, 24, 24), (17, 17, 17), (32, 32), (31, 31)])
def test_fsc_matches_a_direct_shell_by_shell_computation(shape):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape)
    b = a + 0.7 * rng.standard_normal(shape)
    assert similarity(a, b, "fsc") == pytest.approx(direct_fsc(a, b), abs=1e-10)


def test_fsc_identities(blobs):
    x = blobs[0]
    assert similarity(x, x, "fsc") == pytest.approx(1.0, abs=1e-12)
    assert similarity(x, -x, "fsc") == pytest.approx(-1.0, abs=1e-12)
    assert similarity(x, 7.5 * x, "fsc") == pytest.approx(1.0, abs=1e-12)
    m = similarity_matrix(blobs, metric="fsc")
    assert np.allclose(m, m.T)
    assert np.allclose(np.diag(m), 1.0)


def test_fsc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((6, 32, 32, 32))
    m = similarity_matrix(noise, metric="fsc")
    off = m[~np.eye(6, dtype=bool)]
    assert np.abs(off).max() < 0.05


def test_fsc_per_shell_is_one_for_identical_objects(blobs):
    p = fsc_prepare(blobs[:1])
    per = fsc_compare(p, p, per_shell=True)
    assert per.shape == (13, 1, 1)
    assert np.allclose(per.numpy(), 1.0)
    # shell counts of the half spectrum add up to the full spectrum inside Nyquist
    f = np.fft.fftfreq(24, 1 / 24)
    r = np.round(np.sqrt(sum(g**2 for g in np.meshgrid(f, f, f, indexing="ij"))))
    assert p.counts.numpy().sum() == pytest.approx((r <= 12).sum())


@pytest.mark.parametrize("metric", ["fsc", "ncc", "mean-diff"])
def test_metric_range_scale_invariance_and_self_similarity(metric, blobs):
    m = similarity_matrix(blobs, metric=metric)
    assert m.min() >= -1 and m.max() <= 1
    assert similarity(blobs[0], 3.0 * blobs[0], metric) == pytest.approx(1.0)
    assert similarity(blobs[0], blobs[1], metric) < 0.9


def test_mean_diff_mapping():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 16))
    az = (a - a.mean()) / a.std()
    # s = 1 - mean|a - (-a)| = 1 - 2 mean|a| on standardised data
    assert similarity(a, -a, "mean-diff") == pytest.approx(1 - 2 * np.abs(az).mean())
    b = rng.standard_normal((16, 16))
    bz = (b - b.mean()) / b.std()
    assert similarity(a, b, "mean-diff") == pytest.approx(1 - np.abs(az - bz).mean())


def test_ncc_is_pearson_correlation():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 10, 10, 10))
    b = a + b
    assert similarity(a, b, "ncc") == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_tetracube_fsc_reflects_shape_kinship():
    sim = TetraminoSimulator(size=24, cube=4, fused=[("L", "T")])
    X = np.stack([sim.template(c) for c in sim.classes])
    m = similarity_matrix(X, metric="fsc")
    k = {c: i for i, c in enumerate(sim.classes)}
    # the fused L+T piece is closer to its parents than to the straight I
    assert m[k["LT"], k["L"]] > m[k["LT"], k["I"]]
    assert m[k["LT"], k["T"]] > m[k["LT"], k["I"]]


def test_aligned_mode_recovers_a_rotated_copy():
    sim = AlphanumericSimulator(size=48, glyphs="kx")
    k = sim.template("k")
    rotated = rotate(k[None], angle_to_matrix([90.0]))[0]
    plain = similarity(k, rotated, "fsc")
    X = np.stack([k, rotated, sim.template("x")])
    A = aligned_matrix(X, rotation_set(2, 8), "fsc")  # includes 90 degrees
    assert A[0, 1] > 0.95 > plain
    assert A[0, 1] > A[0, 2]
    assert np.allclose(A, A.T)


def test_errors_name_the_problem():
    with pytest.raises(AffinityError, match="unknown metric 'nope'"):
        similarity_matrix(np.zeros((2, 8, 8)), metric="nope")
    with pytest.raises(DataError, match="object 1 is constant"):
        similarity_matrix(np.stack([np.eye(8), np.ones((8, 8))]), metric="ncc")
    bad = np.ones((2, 8, 8))
    bad[1, 0, 0] = np.nan
    with pytest.raises(DataError, match="object 1 has NaN"):
        similarity_matrix(bad, metric="fsc")
    with pytest.raises(DataError, match="square"):
        similarity_matrix(np.random.rand(2, 8, 6), metric="fsc")


def test_every_metric_the_readme_lists_compares_glyphs_sensibly():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Affinity metrics", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\* `([a-z-]+)`:", section, flags=re.M)
    assert listed == ["fsc", "mean-diff", "ncc", "soap"]
    sim = AlphanumericSimulator(size=32, glyphs="aex")
    X = np.stack([sim.template(g) for g in "aex"])
    for metric in listed:
        m = similarity_matrix(X, metric=metric)
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9, err_msg=metric)
        np.testing.assert_allclose(m, m.T, atol=1e-9, err_msg=metric)
        assert m[0, 1] > m[0, 2], metric  # a is closer to e than to x by every measure
