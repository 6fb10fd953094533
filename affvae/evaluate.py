"""How good is a latent space?  Pure functions from arrays to numbers.

The evaluation asks the questions of the affinity-VAE paper, each answered by one
function here and bundled by :func:`evaluate_latents` into the ``metrics.json`` of
an evaluation run:

* Does the latent space **classify** the seen classes?  Nearest class centre of
  the :class:`~affvae.latent_map.LatentMap` (the paper's rule) or, as the
  reference implementation also offers, a small MLP trained on the training
  ``mu``; scored by accuracy and per-class F1 over the objects of seen classes
  (:func:`classification_report`, :func:`confusion`).
* Are **unseen** classes recognisable as new?  Their objects should lie farther
  from every centre than members do, so the novelty score of the map should rank
  them above seen objects: :func:`novelty_auroc` (1 = perfectly separated,
  0.5 = chance).  And do they land near the seen classes they resemble?
  :func:`nearest_seen_classes`.
* Is the **geometry** meaningful?  :func:`proximity_matrix` (distances between
  centres on a 0-100 scale, as in the paper's Fig. 8) and :func:`silhouette`.
* Has the **pose** head captured the orientation?  :func:`pose_angle_correlation`.

Labels are strings; ``""`` (or None/NaN) means "unknown" and such objects are left
out of every labelled score.  A class is *unseen* when it is a known label that
is not among the seen classes.  Everything :func:`evaluate_latents` returns is
JSON-serialisable, with NaN written as ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from affvae.errors import DataError
from affvae.labels import as_labels, index_of
from affvae.latent_map import LatentMap

CLASSIFIERS = ("nearest", "mlp")


# -- classification ---------------------------------------------------------------------

def classification_report(labels, predicted, seen_classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy and per-class F1 over the objects whose label is a seen class.

    Returns ``{"n", "accuracy", "f1_macro", "f1": {class: F1}, "support": {class: n}}``.
    F1 of a class is ``2 TP / (2 TP + FP + FN)``; a seen class that is neither
    present nor predicted has an undefined F1 (NaN) and is left out of the macro
    average, which is the plain mean over the remaining classes.  Predictions of
    objects of unseen classes are not counted (not even as false positives): they
    cannot be right, and are judged by :func:`novelty_auroc` instead.
    """
    from sklearn.metrics import f1_score

    labels, predicted = as_labels(labels), as_labels(predicted)
    if labels.shape != predicted.shape:
        raise ValueError(f"{labels.size} labels but {predicted.size} predictions")
    seen = [str(c) for c in seen_classes]
    keep = index_of(labels, seen) >= 0
    true, pred = labels[keep], predicted[keep]
    n = int(true.size)
    f1 = f1_score(true, pred, labels=seen, average=None, zero_division=np.nan) if n else np.full(len(seen), np.nan)
    support = [int((true == c).sum()) for c in seen]
    defined = ~np.isnan(f1)
    return {
        "n": n,
        "accuracy": float((true == pred).mean()) if n else math.nan,
        "f1_macro": float(f1[defined].mean()) if defined.any() else math.nan,
        "f1": dict(zip(seen, np.asarray(f1, dtype=float).tolist(), strict=True)),
        "support": dict(zip(seen, support, strict=True)),
    }


def confusion(labels, predicted, seen_classes: Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts of (true label, predicted class).

    Columns are the seen classes (a classifier trained on them can only predict
    those).  Rows are the seen classes and then, as extra rows in sorted order,
    the unseen classes present in ``labels``: their row shows which seen classes
    they are mistaken for.  Objects of unknown label are left out.
    """
    labels, predicted = as_labels(labels), as_labels(predicted)
    if labels.shape != predicted.shape:
        raise ValueError(f"{labels.size} labels but {predicted.size} predictions")
    cols = [str(c) for c in seen_classes]
    known = labels != ""
    labels, predicted = labels[known], predicted[known]
    unseen = sorted(set(np.unique(labels).tolist()) - set(cols))
    rows = cols + unseen
    outside = index_of(predicted, cols) < 0
    if outside.any():
        bad = sorted(set(predicted[outside].tolist()))
        raise ValueError(f"predictions {bad} are not among the seen classes {cols}")
    from sklearn.metrics import confusion_matrix

    if not labels.size:
        return np.zeros((len(rows), len(cols)), dtype=np.int64), rows, cols
    counts = confusion_matrix(labels, predicted, labels=rows)[:, :len(cols)]
    return counts.astype(np.int64), rows, cols


def mlp_classifier(mu_train, y_train, mu_test, seed: int = 0,
                   hidden_layer_sizes: tuple[int, ...] = (100,), max_iter: int = 1000) -> np.ndarray:
    """Predict classes of ``mu_test`` with an MLP fitted on ``(mu_train, y_train)``.

    The reference implementation's alternative to the nearest centre: it can follow
    curved class boundaries but needs the training embeddings, not just the map.
    Inputs are standardised first; ``seed`` fixes the initialisation and shuffling.
    """
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mu_train = np.asarray(mu_train, dtype=np.float64)
    mu_test = np.asarray(mu_test, dtype=np.float64)
    y_train = as_labels(y_train)
    if mu_train.shape[0] != y_train.size:
        raise ValueError(f"{mu_train.shape[0]} training vectors but {y_train.size} labels")
    classes = np.unique(y_train)
    if mu_test.shape[0] == 0:  # nothing to classify (scikit-learn refuses empty input)
        return np.zeros(0, dtype=str)
    if classes.size == 1:  # nothing to learn
        return np.full(mu_test.shape[0], classes[0], dtype=classes.dtype)
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=hidden_layer_sizes, max_iter=max_iter, random_state=seed),
    )
    model.fit(mu_train, y_train)
    return np.asarray(model.predict(mu_test)).astype(str)


# -- geometry -----------------------------------------------------------------------------

def proximity_matrix(latent_map: LatentMap) -> np.ndarray:
    """Distances between class centres scaled to 0-100, (C, C).

    ``100 * d / d.max()``: 0 on the diagonal (a class with itself) and 100 for the
    most distant pair of centres.  Scaling by the largest distance makes runs with
    latent spaces of different size (different beta, gamma, latent dims)
    comparable, as in the affinity-VAE paper's Fig. 8.  All zeros if there is a
    single class (or all centres coincide).
    """
    d = np.clip(latent_map.distances(latent_map.centres), 0.0, None)
    np.fill_diagonal(d, 0.0)
    top = d.max() if d.size else 0.0
    return 100.0 * d / top if top > 0 else np.zeros_like(d)


def mean_offdiag(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix (NaN below 2 x 2)."""
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    if n < 2:
        return math.nan
    return float(m[~np.eye(n, dtype=bool)].mean())


def silhouette(mu, labels, sample_size: int = 5000, seed: int = 0) -> float:
    """Mean silhouette coefficient of ``mu`` grouped by label (-1 to 1, higher = tighter).

    Objects of unknown label are left out.  NaN when there are fewer than two
    classes (or no class has a second member).  Above ``sample_size`` objects a
    random subset of that size is scored (the exact score needs all pairwise
    distances).
    """
    from sklearn.metrics import silhouette_score

    mu = np.asarray(mu, dtype=np.float64)
    labels = as_labels(labels)
    known = labels != ""
    mu, labels = mu[known], labels[known]
    n, n_cls = labels.size, np.unique(labels).size
    if n_cls < 2 or n_cls > n - 1:
        return math.nan
    try:
        return float(silhouette_score(mu, labels, sample_size=sample_size if n > sample_size else None,
                                      random_state=seed))
    except ValueError:  # a subsample with a single class
        return math.nan


def nearest_seen_classes(latent_map: LatentMap, mu, labels, unseen_class: str, k: int = 2,
                         by: str = "cosine") -> list[str]:
    """The ``k`` class centres of the map nearest to the mean ``mu`` of ``unseen_class``.

    Answers "what does the new class look like to the model?": e.g. a glyph unseen
    in training should land near the seen glyphs it resembles.  ``by="cosine"`` (the
    default) ranks centres by the angle to the class's mean direction, the quantity
    the affinity term shapes.  ``by="euclidean"`` ranks by distance; the mean of
    scattered vectors is shorter than its members, so that ranking leans towards the
    centres nearest the origin.
    """
    if by not in ("cosine", "euclidean"):
        raise ValueError(f"by={by!r}: expected cosine or euclidean")
    mu = np.asarray(mu, dtype=np.float64)
    members = as_labels(labels) == str(unseen_class)
    if not members.any():
        raise DataError(f"class {unseen_class!r} has no member in the data")
    mean = mu[members].mean(axis=0, keepdims=True)
    if by == "euclidean":
        d = latent_map.distances(mean)[0]
    else:
        centres = np.asarray(latent_map.centres, dtype=np.float64)
        norms = np.linalg.norm(centres, axis=1) * max(float(np.linalg.norm(mean)), 1e-12)
        d = -(centres @ mean[0]) / np.maximum(norms, 1e-12)
    order = np.argsort(d, kind="stable")[:k]
    return [latent_map.classes[i] for i in order]


# -- the decoder ----------------------------------------------------------------------------

def decoded_identification(decoded: np.ndarray, references: np.ndarray, classes: Sequence[str],
                           metric: str = "fsc", align: bool = True) -> dict[str, Any]:
    """Does the decoder use z?  Each class's decoded centre against every class's reference.

    ``decoded[i]`` is the decoder's output at class i's centre, ``references[i]`` class
    i's template (or medoid).  A class is identified when its decoded centre is more
    similar to its own reference than to any other's, after rotational alignment (the
    pose head may decode it in any orientation; a cheaper search than the affinity
    matrix's, since only the best match matters).  A decoder that ignores z decodes
    one blob for every class and identifies about one class in C.
    """
    from affvae.affinity.align import aligned_cross
    from affvae.affinity.metrics import similarity_matrix

    classes = [str(c) for c in classes]
    if align:
        sims = aligned_cross(decoded, references, metric, coarse=200, steps=(10.0, 5.0), rounds=1)
    else:
        sims = similarity_matrix(decoded, references, metric=metric)
    best = sims.argmax(1)
    hit = best == np.arange(len(classes))
    return {
        "decoded_identification": float(hit.mean()) if len(classes) else math.nan,
        "decoded_best_reference": {c: classes[b] for c, b in zip(classes, best)},
        "decoded_own_similarity": {c: float(sims[i, i]) for i, c in enumerate(classes)},
    }


# -- novelty ------------------------------------------------------------------------------

def novelty_auroc(novelty, is_unseen) -> float:
    """Area under the ROC curve of the novelty score for telling unseen from seen.

    1.0: every unseen object scores higher than every seen one; 0.5: chance.
    NaN if either group is empty.
    """
    from sklearn.metrics import roc_auc_score

    novelty = np.asarray(novelty, dtype=np.float64).reshape(-1)
    is_unseen = np.asarray(is_unseen, dtype=bool).reshape(-1)
    if novelty.shape != is_unseen.shape:
        raise ValueError(f"{novelty.size} novelty scores but {is_unseen.size} flags")
    if is_unseen.all() or not is_unseen.any():
        return math.nan
    return float(roc_auc_score(is_unseen, novelty))


# -- pose ---------------------------------------------------------------------------------

def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    sd = x.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, x / np.where(sd > 0, sd, 1), np.nan)


def pose_angle_correlation(pose, angles, kind: str = "pearson") -> np.ndarray:
    """Correlation of every pose dimension with the rotation angle(s).

    ``pose`` is (N, P); ``angles`` in degrees is (N,) for 2D (the result is (P,))
    or (N, K) for 3D Euler angles (the result is (P, K)).  ``kind``:

    * ``"pearson"``: the signed Pearson correlation with the angle itself.  Right
      when the angles stay within half a turn without wrapping around, such as the
      simulator's default (-45, 45) degrees: a pose axis that encodes orientation
      then varies linearly with it, and r is near +1 or -1.
    * ``"abs"``: ``|r|``.  The sign of a latent axis is arbitrary, so this is the
      summary to compare between runs.
    * ``"circular"``: the multiple correlation (0 to 1) of the pose dimension with
      ``(cos a, sin a)``, for angles spread over the full circle where the linear
      correlation breaks down at the wrap-around (-180 = 180).

    NaN where a pose dimension or an angle is constant.
    """
    pose = np.asarray(pose, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    if pose.ndim == 1:
        pose = pose[:, None]
    single = angles.ndim == 1
    a = angles[:, None] if single else angles
    if pose.shape[0] != a.shape[0]:
        raise ValueError(f"{pose.shape[0]} poses but {a.shape[0]} angles")
    n = pose.shape[0]
    pz = _standardise(pose)
    if kind in ("pearson", "abs"):
        r = pz.T @ _standardise(a) / n
        r = np.abs(r) if kind == "abs" else r
    elif kind == "circular":
        rad = np.deg2rad(a)
        cz, sz = _standardise(np.cos(rad)), _standardise(np.sin(rad))
        r_pc, r_ps = pz.T @ cz / n, pz.T @ sz / n  # (P, K)
        r_cs = (cz * sz).sum(axis=0) / n  # (K,)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = (r_pc**2 + r_ps**2 - 2 * r_pc * r_ps * r_cs) / (1 - r_cs**2)
        r = np.sqrt(np.clip(r2, 0.0, 1.0))
    else:
        raise ValueError(f"kind must be 'pearson', 'abs' or 'circular', not {kind!r}")
    return np.clip(r[:, 0] if single else r, -1.0, 1.0)


# -- the bundle ---------------------------------------------------------------------------

def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN and inf to None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj if obj is None or isinstance(obj, str) else str(obj)


def evaluate_latents(mu, labels, latent_map: LatentMap, seen_classes: Sequence[str] | None = None,
                     pose=None, angles=None, classifier: str = "nearest",
                     train: tuple[Any, Any] | None = None, k_nearest: int = 2,
                     seed: int = 0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classify ``mu`` (N, D) and score it; the ``metrics.json`` of an evaluation.

    ``seen_classes`` defaults to the classes of the map.  ``classifier`` is
    ``"nearest"`` (nearest centre of ``latent_map``) or ``"mlp"`` (needs
    ``train=(mu_train, y_train)``, see :func:`mlp_classifier`).  ``pose`` (N, P)
    with ``angles`` (N,) or (N, K) in degrees adds the pose-angle correlations.

    Returns ``(metrics, predictions)``: ``metrics`` holds only JSON values (NaN as
    None); ``predictions`` is ``{"predicted": str (N,), "distance": float (N,)}``,
    the distance being to the centre of the predicted class -- the columns of
    ``predictions.csv``.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, not {classifier!r}")
    seen = [str(c) for c in (latent_map.classes if seen_classes is None else seen_classes)]
    outside = sorted(set(latent_map.classes) - set(seen))
    if outside:
        raise DataError(f"latent map classes {outside} are not among the seen classes {seen}")
    labels = as_labels(labels)
    nearest, near_dist = latent_map.nearest(mu)  # also checks the shape of mu
    mu = np.asarray(mu, dtype=np.float64)
    if labels.size != mu.shape[0]:
        raise DataError(f"{mu.shape[0]} latent vectors but {labels.size} labels")
    predicted, distance = _classify(mu, latent_map, nearest, near_dist, classifier, train, seed)
    novelty = near_dist / latent_map.spread[nearest]
    known = labels != ""
    is_seen = index_of(labels, seen) >= 0
    is_unseen = known & ~is_seen
    report = classification_report(labels, predicted, seen)
    matrix, row_labels, col_labels = confusion(labels, predicted, seen)
    metrics: dict[str, Any] = {
        "classifier": classifier,
        "n": int(mu.shape[0]),
        "n_seen": int(is_seen.sum()),
        "n_unseen": int(is_unseen.sum()),
        "n_unlabelled": int((~known).sum()),
        "accuracy": report["accuracy"],
        "f1_macro": report["f1_macro"],
        "f1": report["f1"],
        "support": report["support"],
        "confusion": {"rows": row_labels, "cols": col_labels, "matrix": matrix},
        "silhouette": silhouette(mu, labels, seed=seed),
        "novelty_median_seen": float(np.median(novelty[is_seen])) if is_seen.any() else math.nan,
        "mean_offdiag_proximity": mean_offdiag(proximity_matrix(latent_map)),
    }
    if is_unseen.any():
        metrics.update(_unseen_metrics(latent_map, mu, labels, novelty, known, is_unseen, k_nearest))
    if pose is not None and angles is not None:
        metrics.update(_pose_metrics(pose, angles, labels, seen))
    return to_jsonable(metrics), {"predicted": predicted, "distance": distance, "novelty": novelty}


def _classify(mu, latent_map: LatentMap, nearest, near_dist, classifier: str, train, seed: int):
    """Predicted classes and the distance of each object to its predicted class's centre."""
    if classifier == "nearest":
        return np.asarray(latent_map.classes, dtype=str)[nearest], near_dist
    if train is None:
        raise ValueError("classifier='mlp' needs train=(mu_train, y_train)")
    predicted = mlp_classifier(train[0], train[1], mu, seed=seed)
    idx = index_of(predicted, latent_map.classes)
    d = latent_map.distances(mu)
    return predicted, np.where(idx >= 0, d[np.arange(len(mu)), np.maximum(idx, 0)], np.nan)


def _unseen_metrics(latent_map: LatentMap, mu, labels, novelty, known, is_unseen, k: int) -> dict[str, Any]:
    """Novelty AUROC and the nearest seen centres of each unseen class."""
    unseen_classes = sorted(set(labels[is_unseen].tolist()))
    return {
        "novelty_median_unseen": float(np.median(novelty[is_unseen])),
        "novelty_auroc": novelty_auroc(novelty[known], is_unseen[known]),
        "nearest_seen": {c: nearest_seen_classes(latent_map, mu, labels, c, k=k) for c in unseen_classes},
        "nearest_seen_euclidean": {c: nearest_seen_classes(latent_map, mu, labels, c, k=k, by="euclidean")
                                   for c in unseen_classes},
    }


def _pose_metrics(pose, angles, labels, seen) -> dict[str, Any]:
    """Pose-angle correlations over all items, and within each seen class.

    The decoder is conditioned on z, so each class may run its pose axis the other way (or
    use another pose dimension): pooled over classes, opposite slopes cancel.  Within a
    class the question is plain: does a pose dimension follow the angle?
    """
    r = pose_angle_correlation(pose, angles, "pearson")
    circ = pose_angle_correlation(pose, angles, "circular")
    per_class = {}
    for c in seen:
        members = labels == c
        if members.sum() >= 3:
            per_class[c] = _nanmax0(np.abs(pose_angle_correlation(pose[members], angles[members], "pearson")))
    finite = [v for v in per_class.values() if np.isfinite(v)]
    with np.errstate(invalid="ignore"):
        return {"pose_angle_r": r, "pose_angle_best_abs_r": _nanmax0(np.abs(r)),
                "pose_angle_best_circular_r": _nanmax0(circ), "pose_angle_abs_r_per_class": per_class,
                "pose_angle_class_mean_abs_r": float(np.mean(finite)) if finite else math.nan}


def _nanmax0(x: np.ndarray):
    """Max over pose dimensions (axis 0), NaN where all are NaN; float for 1-D input."""
    x = np.asarray(x, dtype=np.float64)
    filled = np.where(np.isnan(x), -np.inf, x).max(axis=0)
    out = np.where(np.isinf(filled), np.nan, filled)
    return float(out) if out.ndim == 0 else out
