"""Pose samplers and counter-based random numbers.

Poses are degrees: one in-plane angle for 2D, intrinsic ZYZ Euler angles
``(rot, tilt, psi)`` for 3D (RELION's convention).  :func:`item_poses` is the one pose
sampler: :func:`poses_from_uniforms` of :func:`uniforms`, a pure function of (seed,
item id), as are each item's seed (:func:`item_seeds`) and noise
(:func:`item_normals`), so item ``i`` is the same wherever and whenever it is made:
in memory, in a dataset folder or in a stream, whatever the batch it falls in.
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit mixer (SplitMix64), vectorised over uint64 arrays."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, ids: np.ndarray, k: int) -> np.ndarray:
    """``(len(ids), k)`` uniform numbers in [0, 1), a pure function of (seed, id, j)."""
    ids = np.asarray(ids, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
        base = splitmix64(np.uint64(seed % 2**63) * np.uint64(0x632BE59BD9B4E019) + ids * np.uint64(k + 1))
        cols = [splitmix64(base + np.uint64(j)) >> np.uint64(11) for j in range(k)]
    return np.stack(cols, 1).astype(np.float64) / float(2**53)


def item_normals(seeds: np.ndarray, n: int) -> np.ndarray:
    """``(len(seeds), n)`` standard normals, row i a pure function of ``seeds[i]``.

    Counter-based (one SplitMix64 hash per pair of numbers, Box-Muller), so an
    item's noise is the same whatever batch it is rendered in and wherever.
    """
    seeds = np.asarray(seeds, dtype=np.int64).astype(np.uint64)
    half = (n + 1) // 2
    with np.errstate(over="ignore"):
        ctr = (seeds[:, None] * np.uint64(0xD1B54A32D192ED03)) + np.arange(half, dtype=np.uint64)[None]
        h = splitmix64(ctr)
    u1 = ((h >> np.uint64(40)).astype(np.float64) + 1.0) / float(2**24)  # (0, 1]
    u2 = (h & np.uint64(0xFFFFFF)).astype(np.float64) / float(2**24)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)
    return z[:, :n].astype(np.float32)


def poses_from_uniforms(u: np.ndarray, ndim: int, rotation: str = "uniform", max_angle: float = 45.0) -> np.ndarray:
    """Poses from uniforms: integer angles in (-max, max) for 2D; ZYZ Euler angles for 3D.

    3D ``uniform``: Shoemake's quaternion from three uniforms (uniform over SO(3));
    ``grid``: three multiples of 10 degrees about x, y, z; ``none``: identity.
    """
    from scipy.spatial.transform import Rotation

    n = len(u)
    if ndim == 2:
        if rotation == "none":
            return np.zeros(n)
        m = int(np.ceil(max_angle)) - 1
        return np.floor(u[:, 0] * (2 * m + 1)) - m
    if rotation == "none" or n == 0:
        return np.zeros((n, 3))
    if rotation == "grid":
        rot = Rotation.from_euler("xyz", np.floor(u[:, :3] * 36) * 10.0, degrees=True)
    else:
        u1, u2, u3 = u[:, 0], 2 * np.pi * u[:, 1], 2 * np.pi * u[:, 2]
        q = np.stack([np.sqrt(1 - u1) * np.sin(u2), np.sqrt(1 - u1) * np.cos(u2),
                      np.sqrt(u1) * np.sin(u3), np.sqrt(u1) * np.cos(u3)], 1)
        rot = Rotation.from_quat(q)
    return np.atleast_2d(rot.as_euler("ZYZ", degrees=True))


def item_seeds(seed: int, ids: np.ndarray) -> np.ndarray:
    """Each item's own seed (for its noise), a pure function of (seed, item id)."""
    ids = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return (splitmix64(ids ^ np.uint64((seed + 7) % 2**63)) >> np.uint64(33)).astype(np.int64)


def item_poses(seed: int, ids: np.ndarray, ndim: int, rotation: str = "uniform",
               max_angle: float = 45.0) -> np.ndarray:
    """The one pose sampler: item ``ids``' poses, a pure function of (seed, id).

    ``(N,)`` in-plane degrees for 2D, ``(N, 3)`` ZYZ Euler angles for 3D (see
    :func:`poses_from_uniforms`); the in-memory datasets, the dataset folders and the
    stream all draw their poses here, so item ``i`` has one pose wherever it is made.
    """
    pose = poses_from_uniforms(uniforms(seed, ids, 4), ndim, rotation, max_angle)
    return pose if ndim == 2 else pose.reshape(len(np.atleast_1d(ids)), 3)
