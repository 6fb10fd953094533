"""Rotational alignment of class templates: the best similarity of every pair over SO(3).

Templates of real structures come in arbitrary frames (a PDB entry's coordinates,
a subtomogram average's box), so comparing them as they lie measures how their
frames happen to line up, not how alike their shapes are.  The aligned similarity
of a pair is the metric at the rotation of the second object that makes the two
most alike.  A brute-force search needs thousands of rotations to come within a
few degrees of the best one; instead:

1. **coarse**: a fixed set of rotations uniform over SO(3) (``coarse``, default
   :data:`COARSE`, about 25 degrees apart); each is applied to every object as one
   batch and compared with all objects as one matrix, keeping each pair's best;
2. **refine**: each pair's rotation is improved by local search: the best of itself
   and its compositions with small rotations about 13 axes, both ways, at
   :data:`STEPS` degrees (a few rounds at each step size, halving down to about a
   degree), all pairs and candidates of a round rotated as one batch;
3. **measure**: the metric of each pair at its rotation, on the objects at full size.

The search (steps 1 and 2) runs on objects resized to at most ``search_size`` (32)
voxels, which preserves shapes at the resolution alignment needs; step 3 measures
the values on the objects as given.  With FSC the aligned value averages the shells
that hold signal (:attr:`~affvae.affinity.metrics.ShellSpectra.signal`): the rotated
copy is interpolated, and the interpolation error is all a shell without signal
holds.  A template and a rotated copy of itself score above 0.98 (tested).

2D objects are aligned over in-plane angles: a coarse set of 72 (5 degrees), refined
the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from affvae.affinity.metrics import get_metric
from affvae.errors import AffinityError
from affvae.transforms.augment import resize_to_box, rotate

#: coarse rotations over SO(3): about 25 degrees between neighbours
COARSE = 300
#: degrees of the local search's steps, largest first
STEPS = (10.0, 5.0, 2.5, 1.25)
#: rounds of local search at each step size
ROUNDS = 2
SEARCH_SIZE = 32


def _axes(ndim: int) -> np.ndarray:
    """Unit rotation axes of the local search: 13 directions (faces, edges, corners of a
    cube, one of each opposite pair) for 3D; the single in-plane axis for 2D."""
    if ndim == 2:
        return np.array([[1.0]])
    dirs = []
    for v in np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T:
        if v.any() and tuple(-v) not in {tuple(d) for d in dirs}:
            dirs.append(v)
    dirs = np.array(dirs, dtype=np.float64)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _small_rotations(ndim: int, degrees: float) -> np.ndarray:
    """The identity and rotations by +-``degrees`` about each search axis, as matrices."""
    from scipy.spatial.transform import Rotation

    from affvae.transforms.augment import angle_to_matrix

    if ndim == 2:
        return angle_to_matrix(np.array([0.0, degrees, -degrees]))
    axes = _axes(3)
    rotvecs = np.concatenate([np.zeros((1, 3)), axes * np.deg2rad(degrees), -axes * np.deg2rad(degrees)])
    return Rotation.from_rotvec(rotvecs).as_matrix()


def coarse_rotations(ndim: int, n: int | None = None, seed: int = 0) -> np.ndarray:
    """The coarse set: ``n`` rotations drawn uniformly over SO(3) from a fixed seed (3D),
    or 72 in-plane angles 5 degrees apart (2D); identity first."""
    from affvae.affinity.metrics import rotation_set

    return rotation_set(ndim, 72 if ndim == 2 else (n or COARSE), seed=seed)


def _prepared(metric, X: torch.Tensor):
    return metric.prepare(X)


def _rows(features, idx: np.ndarray):
    """The prepared features of some objects: rows of a tensor or of a ShellSpectra."""
    from dataclasses import replace

    from affvae.affinity.metrics import ShellSpectra

    idx = torch.as_tensor(idx)
    if isinstance(features, ShellSpectra):
        return replace(features, coeffs=features.coeffs[idx], power=features.power[idx])
    return features[idx]


def _coarse(metric, X: torch.Tensor, Y: torch.Tensor, rotations: np.ndarray, progress,
            chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Best similarity of x_i with R y_j over ``rotations`` and the index of that R, (Nx, Ny) each.

    Blocks of rotations are applied to all of Y as one batch of about ``chunk`` objects
    and compared with X as one matrix."""
    fx = _prepared(metric, X)
    ny, ndim = len(Y), Y.dim() - 1
    best = np.full((len(X), ny), -np.inf)
    arg = np.zeros((len(X), ny), dtype=np.int64)
    per = max(1, chunk // max(ny, 1))
    for start in range(0, len(rotations), per):
        R = rotations[start:start + per]
        moved = rotate(Y.float().repeat(len(R), *([1] * ndim)), np.repeat(R, ny, axis=0)).double()
        s = metric.aligned_compare(fx, _prepared(metric, moved)).numpy().reshape(len(X), len(R), ny)
        k = s.argmax(1)
        top = np.take_along_axis(s, k[:, None, :], 1)[:, 0]
        better = top > best
        best[better], arg[better] = top[better], (k + start)[better]
        if progress:
            progress(len(R))
    return best, arg


def _pair_values(metric, fx, Y: torch.Tensor, first: np.ndarray, second: np.ndarray, R: np.ndarray,
                 chunk: int = 256) -> np.ndarray:
    """metric(x_first[k], R[k] y_second[k]) for every k (``fx``: the prepared X), in chunks of
    ``chunk`` rotated objects."""
    out = []
    for s in range(0, len(first), chunk):
        moved = rotate(Y[second[s:s + chunk]].float(), R[s:s + chunk]).double()
        out.append(metric.aligned_pairs(_rows(fx, first[s:s + chunk]), _prepared(metric, moved)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _refine(metric, X: torch.Tensor, Y: torch.Tensor, pairs: np.ndarray, R: np.ndarray, best: np.ndarray,
            progress, steps=STEPS, rounds: int = ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Local search around the rotation of each pair (x_i, y_j); the improved rotations and values."""
    ndim = X.dim() - 1
    fx = _prepared(metric, X)
    for step in steps:
        deltas = _small_rotations(ndim, step)
        rep = np.repeat(np.arange(len(pairs)), len(deltas))
        for _ in range(rounds):
            cand = np.einsum("pab,kbc->pkac", R, deltas)  # the pair's rotation, then a small turn
            s = _pair_values(metric, fx, Y, pairs[rep, 0], pairs[rep, 1], cand.reshape(-1, ndim, ndim))
            s = s.reshape(len(pairs), len(deltas))
            k = s.argmax(1)
            gain = s[np.arange(len(pairs)), k] > best
            R = np.where(gain[:, None, None], cand[np.arange(len(pairs)), k], R)
            best = np.where(gain, s[np.arange(len(pairs)), k], best)
            if progress:
                progress(1)
    return R, best


def search_objects(X, metric: str, search_size: int = SEARCH_SIZE):
    """(metric, objects at full size, objects for the search) after checking they can be aligned."""
    from affvae.affinity.metrics import _as_tensor

    m = get_metric(metric)
    if m.aligned_pairs is None:
        raise AffinityError(f"metric {metric!r} has no aligned mode (it does not change when an object turns)")
    X = _as_tensor(X)
    if len(set(X.shape[1:])) != 1:
        raise AffinityError(f"alignment needs square images or cubic volumes, got {tuple(X.shape[1:])}")
    Xs = X if X.shape[1] <= search_size else resize_to_box(X.float(), search_size).double()
    return m, X, Xs


def coarse_best(X, metric: str, rotations: np.ndarray, search_size: int = SEARCH_SIZE,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 over some rotations: each pair's best similarity and the index of its rotation.

    The best over a union of rotation sets is the best of its parts, so blocks of the
    coarse set can be searched anywhere (Ray tasks) and merged with :func:`merge_coarse`.
    """
    m, _, Xs = search_objects(X, metric, search_size)
    return _coarse(m, Xs, Xs, rotations, progress)


def merge_coarse(parts: list[tuple[np.ndarray, np.ndarray]], sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The (best, index) of blocks of the coarse set given in order, ``sizes`` rotations each."""
    best, arg = parts[0][0].copy(), parts[0][1].copy()
    offset = sizes[0]
    for (b, k), size in zip(parts[1:], sizes[1:]):
        better = b > best
        best[better], arg[better] = b[better], k[better] + offset
        offset += size
    return best, arg


def _refined_pairs(m, X, Xs, Y, Ys, pairs, rotations, best, arg, progress, steps=STEPS,
                   rounds: int = ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Refine each pair's coarse rotation on the search objects, then measure it at full size."""
    R, _ = _refine(m, Xs, Ys, pairs, rotations[arg[pairs[:, 0], pairs[:, 1]]], best[pairs[:, 0], pairs[:, 1]],
                   progress, steps, rounds)
    return _pair_values(m, _prepared(m, X), Y, pairs[:, 0], pairs[:, 1], R), R


def refine_and_measure(X, metric: str, rotations: np.ndarray, best: np.ndarray, arg: np.ndarray,
                       search_size: int = SEARCH_SIZE,
                       progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2 and 3 from the coarse results: (values, rotations) as :func:`aligned_values`."""
    m, X, Xs = search_objects(X, metric, search_size)
    n, ndim = len(X), X.dim() - 1
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=np.int64).reshape(-1, 2)
    out_rot = np.tile(np.eye(ndim), (n, n, 1, 1))
    values = np.eye(n)
    if len(pairs):
        final, R = _refined_pairs(m, X, Xs, X, Xs, pairs, rotations, best, arg, progress)
        values[pairs[:, 0], pairs[:, 1]] = values[pairs[:, 1], pairs[:, 0]] = final
        out_rot[pairs[:, 0], pairs[:, 1]] = R
        out_rot[pairs[:, 1], pairs[:, 0]] = np.transpose(R, (0, 2, 1))
    return values, out_rot


def aligned_values(X, metric: str = "fsc", coarse: int | None = None, search_size: int = SEARCH_SIZE,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The aligned similarity matrix of objects ``X`` (N, ...) and each pair's rotation.

    Returns ``(values, rotations)``: ``values[i, j]`` is the metric of x_i and
    R_ij x_j at the best rotation R_ij found (symmetric, ones on the diagonal), and
    ``rotations`` (N, N, d, d) holds R_ij for i < j (R_ji is its transpose).
    """
    X = np.asarray(X)
    rots = coarse_rotations(X.ndim - 1, coarse)
    best, arg = coarse_best(X, metric, rots, search_size, progress)
    return refine_and_measure(X, metric, rots, best, arg, search_size, progress)


def aligned_cross(X, Y, metric: str = "fsc", coarse: int | None = None, search_size: int = SEARCH_SIZE,
                  progress: Callable[[int], None] | None = None, steps=STEPS, rounds: int = ROUNDS) -> np.ndarray:
    """The aligned similarity of every x_i with every y_j, (Nx, Ny): the metric of x_i and
    R y_j at the best rotation R found (e.g. decoded class centres against templates).
    ``coarse``, ``steps`` and ``rounds`` trade precision for time."""
    m, X, Xs = search_objects(X, metric, search_size)
    _, Y, Ys = search_objects(Y, metric, search_size)
    if X.shape[1:] != Y.shape[1:]:
        raise AffinityError(f"cannot align objects of {tuple(X.shape[1:])} with {tuple(Y.shape[1:])}")
    rots = coarse_rotations(X.dim() - 1, coarse)
    best, arg = _coarse(m, Xs, Ys, rots, progress)
    pairs = np.array([(i, j) for i in range(len(X)) for j in range(len(Y))], dtype=np.int64).reshape(-1, 2)
    values = np.zeros((len(X), len(Y)))
    if len(pairs):
        values[pairs[:, 0], pairs[:, 1]] = _refined_pairs(m, X, Xs, Y, Ys, pairs, rots, best, arg, progress,
                                                          steps, rounds)[0]
    return values


def progress_steps(n_objects: int, ndim: int, coarse: int | None = None) -> int:
    """How many progress steps :func:`aligned_values` reports (for a progress bar's total)."""
    n_coarse = 72 if ndim == 2 else (coarse or COARSE)
    return n_coarse + (len(STEPS) * ROUNDS if n_objects > 1 else 0)
