import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from affvae.errors import DataError
from affvae.labels import index_of
from affvae.latent_map import LatentMap


def clusters(n=60, dim=5, seed=0, names=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    means = 10.0 * rng.standard_normal((len(names), dim))
    labels = np.repeat(np.array(names), n)
    mu = means.repeat(n, axis=0) + rng.standard_normal((len(names) * n, dim))
    perm = rng.permutation(labels.size)
    return mu[perm], labels[perm], means


def test_centres_are_class_means_and_spread_is_rms_distance():
    mu, labels, _ = clusters()
    m = LatentMap.fit(mu, labels)
    assert m.classes == ["a", "b", "c"]
    for i, c in enumerate(m.classes):
        members = mu[labels == c]
        np.testing.assert_allclose(m.centres[i], members.mean(axis=0))
        assert m.counts[i] == len(members)
        rms = np.sqrt(((members - members.mean(axis=0)) ** 2).sum(axis=1).mean())
        assert m.spread[i] == pytest.approx(rms)
    # unit-variance Gaussian in 5 dims: typical distance to the centre is about sqrt(5)
    assert np.all(np.abs(m.spread - np.sqrt(5)) < 0.5)


def test_class_order_and_unlisted_labels():
    mu, labels, _ = clusters()
    m = LatentMap.fit(mu, labels, classes=["c", "a"])  # "b" objects are ignored
    assert m.classes == ["c", "a"]
    np.testing.assert_allclose(m.centres[0], mu[labels == "c"].mean(axis=0))
    with pytest.raises(DataError, match="'z'"):
        LatentMap.fit(mu, labels, classes=["a", "z"])


def test_predict_recovers_labels_and_distances_are_euclidean():
    mu, labels, _ = clusters()
    m = LatentMap.fit(mu, labels)
    pred, dist = m.predict(mu)
    assert (pred == labels).all()
    d = m.distances(mu[:3])
    expected = np.linalg.norm(mu[:3, None, :] - m.centres[None], axis=2)
    np.testing.assert_allclose(d, expected)
    np.testing.assert_allclose(dist[:3], expected.min(axis=1))


def test_novelty_of_a_far_cluster_exceeds_members():
    mu, labels, _ = clusters()
    m = LatentMap.fit(mu, labels)
    member_nov = m.novelty(mu)
    assert 0.8 < np.median(member_nov) < 1.2  # about one spread for members
    far = 40.0 + np.random.default_rng(1).standard_normal((30, 5))
    far_nov = m.novelty(far)
    assert far_nov.min() > member_nov.max()
    # definition: distance to the nearest centre over that class's spread
    pred, dist = m.predict(far)
    np.testing.assert_allclose(far_nov, dist / m.spread[index_of(pred, m.classes)])


def test_single_member_class_gets_a_usable_spread():
    mu = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [10.0, 10.0]])
    m = LatentMap.fit(mu, ["a", "a", "a", "b"])
    assert m.spread[1] == pytest.approx(m.spread[0]) and m.spread[0] > 0
    # a point 1 from b's centre is 1 / spread from it, not infinitely novel
    assert m.novelty([[10.0, 11.0]]) == pytest.approx([1.0 / m.spread[1]])


def test_parquet_round_trip(tmp_path):
    mu, labels, _ = clusters(dim=7)
    m = LatentMap.fit(mu, labels)
    p = m.save(tmp_path / "run" / "latent_map.parquet")
    table = pq.read_table(p)
    assert table.column_names == ["class", "n", "spread", "centre"]
    assert pa.types.is_list(table.schema.field("centre").type)
    back = LatentMap.load(p)
    assert back.classes == m.classes
    assert np.array_equal(back.centres, m.centres)
    assert np.array_equal(back.counts, m.counts)
    assert np.array_equal(back.spread, m.spread)
    assert [p.name for p in p.parent.iterdir()] == ["latent_map.parquet"]  # no temp file left


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="junk.parquet"):
        LatentMap.load(junk)
    with pytest.raises(DataError, match="nothere.parquet"):
        LatentMap.load(tmp_path / "nothere.parquet")
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"class": ["a"], "n": [1]}), nocol)
    with pytest.raises(DataError, match="nocol.parquet.*spread, centre"):
        LatentMap.load(nocol)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"class": ["a", "b"], "n": [1, 2], "spread": [1.0, 1.0],
                             "centre": [[0.0, 1.0], [1.0]]}), ragged)
    with pytest.raises(DataError, match="ragged.parquet.*lengths"):
        LatentMap.load(ragged)


def test_dimension_mismatch_is_a_data_error():
    mu, labels, _ = clusters()
    m = LatentMap.fit(mu, labels)
    with pytest.raises(DataError, match="3 latent dimensions.*5"):
        m.predict(np.zeros((2, 3)))
