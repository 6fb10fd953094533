"""The latent map: one centre per training class in the space of latent means.

After training, the encoder's latent means ``mu`` of the training data cluster by
class (that is what the affinity loss asks for).  The map keeps, for every class,
the mean of its members' ``mu`` (the *centre*), how many members it had and how
widely they scatter around it (the *spread*).  That is all a trained model needs
to classify new objects -- the affinity matrix is not needed any more:

* **Classification** follows the affinity-VAE paper's rule: an object belongs to
  the class whose centre is nearest.  "Nearest" is measured in one of two
  geometries (:data:`METRICS`): ``euclidean``, the paper's distance between mu and
  the centre; or ``cosine``, ``1 - cos(mu, centre)`` with the centre the mean
  direction of the class's unit vectors.  The affinity term of the loss shapes
  only the directions of mu (it compares cosines), so the cosine geometry is the
  one it builds; the Euclidean one also depends on lengths, which the KL term
  shrinks and nothing aligns.
* **Novelty**: an object of a class never seen in training still lands
  *somewhere*, and the nearest-centre rule will name a seen class for it.  What
  gives it away is that it lies far from every centre compared with how far the
  members of that class lie.  :meth:`LatentMap.novelty` is therefore the
  distance to the nearest centre divided by that class's spread: about 1 for a
  typical member, much larger for candidates of a new class.  Dividing by the
  spread makes one threshold usable for tight and loose classes alike.

The spread is the root-mean-square distance of the members to their centre (for
a Gaussian cluster with standard deviation ``s`` in each of ``D`` dimensions that
is ``s * sqrt(D)``, the typical member distance).  A class whose spread is zero
(a single member, or identical members) would make every novelty near it
infinite, so its spread is replaced by the median spread of the other classes
(1.0 if no class has a positive spread); the stored spread is the one used.

On disk the map is a Parquet table, one row per class, with the columns
``class`` (string), ``n`` (int64), ``spread`` (float64) and ``centre``
(list<float64>, the centre vector), written atomically; the geometry is the
table's metadata key ``affvae.metric`` (a map without it is Euclidean).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial.distance import cdist

from affvae.errors import DataError
from affvae.labels import as_labels, index_of
from affvae.provenance import atomic_save

#: The Parquet columns, in order.
COLUMNS = ("class", "n", "spread", "centre")
#: The geometries a map can measure "nearest" in.
METRICS = ("euclidean", "cosine")
#: Parquet metadata key of the geometry.
METRIC_KEY = b"affvae.metric"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero: it has no direction)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _as_points(mu, dim: int | None = None, what: str = "mu") -> np.ndarray:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim == 1 and dim is not None and mu.size == dim:
        mu = mu[None, :]
    if mu.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (objects x latent dims), got shape {mu.shape}")
    if dim is not None and mu.shape[1] != dim:
        raise DataError(
            f"{what} has {mu.shape[1]} latent dimensions but the latent map has {dim}; "
            "was the map made by another model?"
        )
    if not np.isfinite(mu).all():
        raise DataError(f"{what} contains non-finite values (NaN or inf)")
    return mu


def _floor_spread(raw: np.ndarray) -> np.ndarray:
    """Replace zero spreads by the median positive spread (1.0 if there is none)."""
    raw = np.asarray(raw, dtype=np.float64)
    good = raw > 0
    fill = float(np.median(raw[good])) if good.any() else 1.0
    return np.where(good, raw, fill)


@dataclass(eq=False)
class LatentMap:
    """Class centres in latent space, with member counts and spreads.

    ``classes[i]`` owns row ``i`` of ``centres`` (C, D), ``counts`` (C,) and
    ``spread`` (C,).  Build one with :meth:`fit`; read one with :meth:`load`.
    """

    classes: list[str]
    centres: np.ndarray
    counts: np.ndarray
    spread: np.ndarray
    metric: str = "euclidean"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise DataError(f"latent map metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        self.classes = [str(c) for c in self.classes]
        self.centres = np.asarray(self.centres, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        self.spread = np.asarray(self.spread, dtype=np.float64).reshape(-1)
        c = len(self.classes)
        if len(set(self.classes)) != c:
            raise DataError(f"latent map has repeated class names: {self.classes}")
        if self.centres.ndim != 2 or self.centres.shape[0] != c:
            raise DataError(f"latent map: centres of shape {self.centres.shape} do not fit {c} classes")
        if self.counts.shape != (c,) or self.spread.shape != (c,):
            raise DataError(f"latent map: counts/spread must have one entry per class ({c})")
        if not (np.isfinite(self.spread).all() and (self.spread > 0).all()):
            raise DataError("latent map: every spread must be a positive finite number")

    # -- construction ---------------------------------------------------------------
    @classmethod
    def fit(cls, mu, labels, classes: Sequence[str] | None = None, metric: str = "euclidean") -> "LatentMap":
        """Centres, counts and spreads of ``mu`` (N, D) grouped by ``labels`` (N,).

        ``classes`` fixes the order of the classes (default: sorted unique labels,
        ignoring unknown ``""`` labels).  Objects whose label is not listed are
        ignored, so a map of the seen classes can be fitted on mixed data.  A
        listed class without any member is an error.  With ``metric="cosine"`` each
        centre is the unit mean direction of the class's unit vectors and the spread
        is measured in cosine distance.
        """
        mu = _as_points(mu)
        labels = as_labels(labels)
        if labels.shape[0] != mu.shape[0]:
            raise DataError(f"{mu.shape[0]} latent vectors but {labels.shape[0]} labels")
        if classes is None:
            classes = [c for c in np.unique(labels).tolist() if c != ""]
        classes = [str(c) for c in classes]
        if not classes:
            raise DataError("cannot fit a latent map without any labelled object")
        if len(set(classes)) != len(classes):
            raise DataError(f"class list has repeated names: {classes}")
        idx = index_of(labels, classes)
        keep = idx >= 0
        idx, pts = idx[keep], mu[keep]
        n_cls, dim = len(classes), mu.shape[1]
        counts = np.bincount(idx, minlength=n_cls)
        empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
        if empty:
            raise DataError(f"class(es) {', '.join(map(repr, empty))} have no member in the data")
        if metric == "cosine":
            pts = unit_rows(pts)
        sums = np.zeros((n_cls, dim))
        np.add.at(sums, idx, pts)
        centres = sums / counts[:, None]
        if metric == "cosine":
            centres = unit_rows(centres)
            d = 1.0 - (pts * centres[idx]).sum(axis=1)
        else:
            d = np.sqrt(((pts - centres[idx]) ** 2).sum(axis=1))
        spread = _floor_spread(np.sqrt(np.bincount(idx, weights=d ** 2, minlength=n_cls) / counts))
        return cls(classes, centres, counts, spread, metric)

    # -- queries --------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.centres.shape[1])

    def __len__(self) -> int:
        return len(self.classes)

    def distances(self, mu) -> np.ndarray:
        """Distance of every object to every centre in the map's geometry, (N, C)."""
        pts = _as_points(mu, self.dim)
        if self.metric == "cosine":
            return 1.0 - unit_rows(pts) @ self.centres.T
        return cdist(pts, self.centres)

    def nearest(self, mu) -> tuple[np.ndarray, np.ndarray]:
        """The nearest centre of every object (row index into the map) and the distance to it.

        The one nearest-centre rule: training's validation accuracy, evaluation and
        :meth:`predict` all classify through it.
        """
        d = self.distances(mu)
        if d.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = d.argmin(axis=1)
        return idx, d[np.arange(d.shape[0]), idx]

    def predict(self, mu) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-centre class (str array) and the distance to that centre."""
        idx, dist = self.nearest(mu)
        return np.asarray(self.classes, dtype=str)[idx], dist

    def novelty(self, mu) -> np.ndarray:
        """Distance to the nearest centre in units of that class's spread, (N,).

        About 1 for typical members of a seen class; large values flag objects that
        fit no seen class (candidates for a new one).
        """
        idx, dist = self.nearest(mu)
        return dist / self.spread[idx]

    # -- files ----------------------------------------------------------------------
    def to_arrow(self):
        import pyarrow as pa

        c, dim = self.centres.shape
        centre = pa.ListArray.from_arrays(
            pa.array(np.arange(c + 1, dtype=np.int32) * dim), pa.array(self.centres.reshape(-1))
        )
        return pa.table(
            [pa.array(self.classes, pa.string()), pa.array(self.counts, pa.int64()),
             pa.array(self.spread, pa.float64()), centre],
            names=list(COLUMNS),
        ).replace_schema_metadata({METRIC_KEY: self.metric.encode()})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map as Parquet (atomically: a failed write keeps the old file)."""
        import pyarrow.parquet as pq

        table = self.to_arrow()
        path = Path(path)
        atomic_save(path, lambda tmp: pq.write_table(table, tmp))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentMap":
        """Read a map written by :meth:`save`; a bad file raises DataError naming it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise DataError(f"latent map file {path} does not exist") from None
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"latent map file {path} is not a readable Parquet file ({exc})") from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"latent map file {path} lacks column(s) {', '.join(missing)}; "
                            f"expected {', '.join(COLUMNS)}")
        if table.num_rows == 0:
            raise DataError(f"latent map file {path} has no classes")
        try:
            centre = table.column("centre").combine_chunks()
            if not pa.types.is_list(centre.type) and not pa.types.is_large_list(centre.type):
                raise TypeError(f"centre column has type {centre.type}, expected list<float>")
            if centre.null_count:
                raise ValueError("a centre is missing")
            lengths = centre.value_lengths().to_numpy(zero_copy_only=False)
            if (lengths != lengths[0]).any() or lengths[0] == 0:
                raise ValueError(f"centre vectors have differing or zero lengths {sorted(set(lengths.tolist()))}")
            values = centre.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            centres = values.reshape(len(lengths), int(lengths[0]))
            if not np.isfinite(centres).all():
                raise ValueError("centres contain non-finite values")
            if table.column("class").null_count or table.column("n").null_count \
                    or table.column("spread").null_count:
                raise ValueError("class, n or spread has missing values")
            classes = [str(c) for c in table.column("class").to_pylist()]
            counts = table.column("n").to_numpy().astype(np.int64)
            spread = table.column("spread").to_numpy().astype(np.float64)
            meta = table.schema.metadata or {}
            metric = meta.get(METRIC_KEY, b"euclidean").decode()
            return cls(classes, centres, counts, spread, metric)
        except (TypeError, ValueError, pa.ArrowException) as exc:
            raise DataError(f"latent map file {path} is malformed: {exc}") from None
        except DataError as exc:
            raise DataError(f"latent map file {path} is malformed: {exc}") from None
