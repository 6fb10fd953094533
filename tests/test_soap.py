"""SOAP similarity of 2D glyphs: real values on the paper's glyphs, not just shapes."""

import time

import numpy as np
import pytest

from affvae.affinity.soap import (
    DEFAULT_PARAMS,
    SoapParams,
    reference_descriptors,
    soap_cross,
    soap_descriptors,
    soap_kernel,
)
from affvae.data.simulate import PAPER_GLYPHS, AlphanumericSimulator
from affvae.errors import ConfigError, DataError

G = list(PAPER_GLYPHS)
IX = {g: i for i, g in enumerate(G)}
#: b, d and p are mirror images / 180-degree rotations of one another; SOAP of a
#: planar point set cannot tell mirror images apart, so they count as one shape.
MIRROR_GROUP = {"b": "bdp", "d": "bdp", "p": "bdp"}


@pytest.fixture(scope="module")
def sim():
    return AlphanumericSimulator(size=64)


@pytest.fixture(scope="module")
def templates(sim):
    return sim.render(G, np.zeros(len(G)))


@pytest.fixture(scope="module")
def descriptors(templates):
    return soap_descriptors(templates)


@pytest.fixture(scope="module")
def matrix(templates):
    t = time.perf_counter()
    M = soap_cross(templates)
    return M, time.perf_counter() - t


def off_diagonal(M):
    return M[~np.eye(len(M), dtype=bool)]


def test_descriptors_tell_the_glyphs_apart(descriptors):
    assert descriptors.shape[0] == 12 and descriptors.dtype == np.float64
    # one row per glyph; glyphs that are not mirror images of one another differ by more
    # than 5% of a descriptor's norm (the closest such pair here, a and e, by 7.8%)
    for i, a in enumerate(G):
        for b in G[:i]:
            if b not in MIRROR_GROUP.get(a, a):
                gap = np.linalg.norm(descriptors[IX[a]] - descriptors[IX[b]])
                assert gap > 0.05 * np.linalg.norm(descriptors[IX[a]]), (a, b)


def test_matrix_is_a_valid_affinity(matrix):
    M, _ = matrix
    assert M.shape == (12, 12)
    assert np.array_equal(np.diag(M), np.ones(12))
    assert np.array_equal(M, M.T)
    assert M.min() >= -1 and M.max() <= 1


def test_matrix_separates_dissimilar_glyphs(matrix):
    o = off_diagonal(matrix[0])
    # The plain settings gave 0.989..1.000 for every pair; measured here: -0.91..1.00.
    assert o.max() - o.min() > 1.5
    assert o.min() < -0.8
    assert o.std() > 0.5
    assert (o < 0).sum() > len(o) / 3  # plenty of genuinely dissimilar pairs


def test_mirror_related_glyphs_are_alike_and_unlike_x(matrix):
    M, _ = matrix
    s = lambda a, b: M[IX[a], IX[b]]  # noqa: E731
    assert s("b", "d") > 0.95 and s("b", "p") > 0.95 and s("d", "p") > 0.95  # measured 0.997, 1.000, 1.000
    assert s("b", "x") < -0.5 and s("d", "x") < -0.5 and s("p", "x") < -0.5  # measured -0.88, -0.90, -0.88
    assert s("a", "e") > 0.9  # two round bowls: 0.974
    assert s("i", "j") > 0.8  # two bars: 0.93
    assert s("i", "b") < -0.5  # a bar vs a bowl on a stem: -0.85


def test_mirror_image_has_the_same_descriptor(templates):
    D = soap_descriptors(np.stack([templates[IX["k"]], templates[IX["k"]][:, ::-1]]))
    assert np.allclose(D[0], D[1], rtol=1e-9, atol=1e-9 * np.abs(D).max())


@pytest.mark.parametrize("angle", [30.0, -45.0])
def test_rotated_copy_beats_every_other_glyph(sim, descriptors, angle):
    rotated = soap_descriptors(sim.render(G, np.full(12, angle)))
    M = soap_kernel(np.vstack([descriptors, rotated]))  # 24 objects, centred on all of them
    for i, g in enumerate(G):
        others = [j for j in range(12) if G[j] not in MIRROR_GROUP.get(g, g)]
        best_other = max(M[i, others].max(), M[i, [12 + j for j in others]].max())
        assert M[i, 12 + i] > best_other, (g, M[i, 12 + i], best_other)
        assert M[i, 12 + i] > 0.9


def test_rotated_copy_through_soap_cross(sim, templates):
    R = sim.render(["z", "k", "2"], np.array([30.0, 30.0, 30.0]))
    C = soap_cross(templates, R)  # union of 15 objects as the reference
    assert C.shape == (12, 3)
    for col, g in enumerate("zk2"):
        assert int(np.argmax(C[:, col])) == IX[g]


def test_pairs_fall_back_to_the_paper_glyph_reference(templates, matrix):
    M, _ = matrix
    # Centring on two objects would make every pair -1; with one or two objects the
    # paper glyphs are the reference, which is exactly what the 12x12 matrix used.
    pair = soap_cross(templates[[IX["b"], IX["x"]]])
    assert pair.shape == (2, 2) and np.array_equal(np.diag(pair), [1.0, 1.0])
    assert pair[0, 1] == pytest.approx(M[IX["b"], IX["x"]], abs=1e-9)
    single = soap_cross(templates[[IX["a"]]], templates[[IX["e"]]])
    assert single[0, 0] == pytest.approx(M[IX["a"], IX["e"]], abs=1e-9)
    assert reference_descriptors(64) is reference_descriptors(64)  # cached


def test_duplicates_do_not_change_the_reference(descriptors, matrix):
    # metrics.py passes the same block twice for X vs X
    assert np.allclose(soap_kernel(descriptors, descriptors), matrix[0], atol=1e-9)
    two = descriptors[:2]  # two distinct objects: the paper-glyph reference, not -1
    assert np.allclose(soap_kernel(two, two), matrix[0][:2, :2], atol=1e-9)


def test_identical_images_score_one(templates):
    X = templates[[0, 0, 5, 7]]
    M = soap_cross(X)
    assert M[0, 1] == 1.0 and M[1, 0] == 1.0


def test_resolution_changes_little():
    M64 = soap_cross(AlphanumericSimulator(size=64).render(G, np.zeros(12)))
    M128 = soap_cross(AlphanumericSimulator(size=128).render(G, np.zeros(12)))
    # measured: correlation 0.97 over the 66 pairs; the largest single change is
    # z-x (0.77 at 64 px, about 0.3 at 128 px)
    assert np.corrcoef(off_diagonal(M64), off_diagonal(M128))[0, 1] > 0.95
    assert M128[IX["b"], IX["d"]] > 0.95 and M128[IX["b"], IX["x"]] < -0.5


def test_fast_enough(matrix):
    assert matrix[1] < 10.0  # about 0.3 s on 2 cores


def test_empty_image_is_named(templates):
    X = templates[:3].copy()
    X[1] = 0
    with pytest.raises(DataError, match="image 1 has no foreground"):
        soap_descriptors(X)
    with pytest.raises(DataError, match="image 1"):
        soap_cross(X)


def test_volumes_and_single_images_are_rejected(templates):
    with pytest.raises(DataError, match="SOAP is for 2D images"):
        soap_cross(np.zeros((2, 8, 8, 8)))
    with pytest.raises(DataError, match="batch"):
        soap_cross(templates[0])


def test_parameters_are_recorded_and_checked(templates):
    assert isinstance(DEFAULT_PARAMS, SoapParams)
    d = DEFAULT_PARAMS.as_dict()
    assert d["r_cut"] == 12.0 and d["sigma"] == 1.0 and d["average"] == "outer"
    with pytest.raises(ConfigError, match="unknown SOAP parameter 'rcut'"):
        soap_cross(templates[:3], rcut=3)
    with pytest.raises(ConfigError, match="r_cut"):
        soap_cross(templates[:3], r_cut=0.5)
    M = soap_cross(templates[:4], zeta=2, l_max=4)
    assert np.array_equal(np.diag(M), np.ones(4)) and np.abs(M).max() <= 1
