import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from affvae.embed import embed
from affvae.errors import ConfigError, DataError
from affvae.plots import plot_embedding


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    means = 6.0 * rng.standard_normal((4, 8))
    labels = np.repeat(np.array(["a", "b", "c", "d"]), 40)
    return means.repeat(40, axis=0) + rng.standard_normal((labels.size, 8)), labels


def knn_accuracy(xy, labels):
    return cross_val_score(KNeighborsClassifier(5), xy, labels, cv=5).mean()


# auto for images is UMAP, whose numba compilation takes a minute in a fresh process: slow tier
@pytest.mark.parametrize("method, ndim", [pytest.param("auto", 2, marks=pytest.mark.slow), ("auto", 3), ("pca", 2)])
def test_embedding_is_deterministic_and_keeps_clusters_apart(blobs, method, ndim):
    mu, labels = blobs
    xy = embed(mu, method, ndim_data=ndim, seed=3, max_iter=150)
    assert xy.shape == (len(mu), 2) and xy.dtype == np.float64 and np.isfinite(xy).all()
    assert np.array_equal(xy, embed(mu, method, ndim_data=ndim, seed=3, max_iter=150))
    assert knn_accuracy(xy, labels) > 0.95
    assert xy.std(axis=0).min() > 0  # not collapsed onto a line


def test_auto_picks_umap_for_images_and_tsne_for_volumes(blobs, monkeypatch):
    import affvae.embed as e

    called = []
    monkeypatch.setattr(e, "_umap", lambda mu, seed, it: called.append("umap") or mu[:, :2])
    monkeypatch.setattr(e, "_tsne", lambda mu, seed, it: called.append("tsne") or mu[:, :2])
    embed(blobs[0], ndim_data=2)
    embed(blobs[0], ndim_data=3)
    embed(blobs[0][:5], ndim_data=2)  # too few points: PCA
    assert called == ["umap", "tsne"]


def test_pca_matches_sklearn_and_tiny_input_falls_back(blobs):
    from sklearn.decomposition import PCA

    mu = blobs[0]
    np.testing.assert_allclose(embed(mu, "pca"), PCA(2, svd_solver="full").fit_transform(mu))
    tiny = mu[:4]
    np.testing.assert_allclose(embed(tiny, "umap"), PCA(2, svd_solver="full").fit_transform(tiny))
    one = embed(mu[:1], "tsne")
    assert one.shape == (1, 2) and np.all(one == 0)


def test_low_dimensional_latents_are_returned_as_they_are():
    mu = np.arange(24.0).reshape(12, 2)
    assert np.array_equal(embed(mu, "umap"), mu)
    one = embed(np.arange(12.0)[:, None], "tsne")
    assert np.array_equal(one[:, 0], np.arange(12.0)) and np.all(one[:, 1] == 0)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="method"):
        embed(np.zeros((20, 4)), "mds")
    with pytest.raises(ConfigError, match="ndim_data"):
        embed(np.zeros((20, 4)), ndim_data=4)
    with pytest.raises(DataError, match="non-finite"):
        embed(np.full((20, 4), np.nan))


def test_plot_embedding_draws_each_class_in_its_own_colour(tmp_path, blobs, png):
    from matplotlib import colormaps

    mu, labels = blobs
    xy = embed(mu, "pca")
    labels = labels.copy()
    labels[:3] = ""
    p = plot_embedding(xy, labels, tmp_path / "figs" / "embedding.png", unseen=["d"], title="test")
    assert p.name == "embedding.png" and sorted(x.name for x in p.parent.iterdir()) == ["embedding.png"]
    img = png(p)
    assert 500 < img.shape[0] < 800 and 600 < img.shape[1] < 1000  # 7 x 6 inches at 120 dpi, trimmed
    tab = colormaps["tab10"]
    for i in range(3):  # seen classes: dots at alpha 0.8 over white
        assert png.share(img, 0.8 * np.array(tab(i)[:3]) + 0.2) > 5e-4, i
    assert png.share(img, tab(3)) > 5e-4  # the unseen class: opaque stars in the next colour
    assert png.share(img, 0.8 * np.array(tab(3)[:3]) + 0.2) < 1e-4  # ...and no dots
    assert png.share(img, (0.7, 0.7, 0.7)) > 5e-5  # the three unknown items in grey
