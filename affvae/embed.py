"""Two-dimensional pictures of the latent space: UMAP, openTSNE or PCA.

The latent space has more than two dimensions, so looking at it needs an
embedding.  Following the affinity-VAE paper, ``method="auto"`` uses UMAP for
2D image data and t-SNE (openTSNE, the fast FFT-accelerated implementation) for
3D volumes.  Both are non-linear and stochastic; a ``seed`` makes them
repeatable (UMAP then runs single-threaded, and openTSNE is run with one job, as
parallel optimisation changes the result from run to run).

Two cases do not deserve a non-linear method, whatever was asked for:

* a latent space of at most two dimensions *is* already a picture: it is
  returned as it is (a single dimension is padded with a zero column), so the
  plot shows the real latent coordinates;
* very few points (fewer than :data:`MIN_POINTS`): UMAP's neighbour graph and
  t-SNE's perplexity are meaningless there, so PCA is used.

umap-learn and numba are chatty (warnings about seeds and parallelism, numba
deprecations); those are silenced only inside :func:`embed`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

from affvae.errors import ConfigError, DataError

METHODS = ("auto", "umap", "tsne", "pca")
#: Below this many points the non-linear methods fall back to PCA.
MIN_POINTS = 10


@contextmanager
def _quiet():
    """Silence warnings raised from umap, numba and pynndescent, for this block only."""
    with warnings.catch_warnings():
        for module in ("umap", "numba", "pynndescent", "openTSNE"):
            warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
        try:
            from numba.core.errors import NumbaWarning

            warnings.filterwarnings("ignore", category=NumbaWarning)
        except ImportError:  # pragma: no cover - numba comes with umap-learn
            pass
        yield


def _pad(x: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], 2))
    out[:, : min(2, x.shape[1])] = x[:, :2]
    return out


def _pca(mu: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    k = min(2, mu.shape[0] - 1, mu.shape[1])  # one point has no direction of variance
    if k <= 0:
        return np.zeros((mu.shape[0], 2))
    return _pad(PCA(n_components=k, svd_solver="full", random_state=seed).fit_transform(mu))


def _umap(mu: np.ndarray, seed: int, max_iter: int | None) -> np.ndarray:
    import umap

    model = umap.UMAP(n_components=2, n_neighbors=min(15, mu.shape[0] - 1), random_state=seed,
                      n_jobs=1, n_epochs=max_iter)
    return model.fit_transform(mu)


def _tsne(mu: np.ndarray, seed: int, max_iter: int | None) -> np.ndarray:
    from openTSNE import TSNE

    # Perplexity must stay well below the number of points (openTSNE wants < N/3).
    perplexity = float(min(30.0, max(2.0, (mu.shape[0] - 1) / 3.0)))
    kwargs = {} if max_iter is None else {
        "n_iter": max_iter, "early_exaggeration_iter": min(250, max(1, max_iter // 2))}
    model = TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1,
                 verbose=False, **kwargs)
    return np.asarray(model.fit(mu))


def embed(mu, method: str = "auto", ndim_data: int = 2, seed: int = 0, *,
          max_iter: int | None = None) -> np.ndarray:
    """Embed latent vectors ``mu`` (N, D) in the plane, (N, 2) float64.

    ``method``: ``"auto"`` (UMAP if ``ndim_data`` is 2, openTSNE if it is 3),
    ``"umap"``, ``"tsne"`` or ``"pca"``.  ``ndim_data`` is the dimensionality of
    the images (2) or volumes (3), not of the latent space.  The same ``seed``
    gives the same picture.  ``max_iter`` caps the optimisation (UMAP epochs,
    t-SNE iterations) for quick looks and tests; None keeps the libraries'
    defaults.
    """
    if method not in METHODS:
        raise ConfigError(f"embedding method must be one of {', '.join(METHODS)}, not {method!r}")
    if ndim_data not in (2, 3):
        raise ConfigError(f"ndim_data must be 2 (images) or 3 (volumes), not {ndim_data!r}")
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2:
        raise DataError(f"latent vectors must be a 2-D array (objects x dims), got shape {mu.shape}")
    if not np.isfinite(mu).all():
        raise DataError("latent vectors contain non-finite values (NaN or inf)")
    if mu.shape[1] <= 2:
        return _pad(mu)
    if method == "auto":
        method = "umap" if ndim_data == 2 else "tsne"
    if method == "pca" or mu.shape[0] < MIN_POINTS:
        return _pca(mu, seed)
    with _quiet():
        xy = _umap(mu, seed, max_iter) if method == "umap" else _tsne(mu, seed, max_iter)
    return np.asarray(xy, dtype=np.float64)
