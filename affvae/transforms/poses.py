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


def _u64(v: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _srl(z, k: int, out):
    """Logical right shift of an int64 tensor into ``out`` (``>>`` is arithmetic for signed integers)."""
    import torch

    torch.bitwise_right_shift(z, k, out=out)
    return out.bitwise_and_((1 << (64 - k)) - 1)


#: hashes per tile of :func:`item_normals`: its first half of 32-bit words gives u1, the rest u2
_TILE = 512


def item_normals(seeds: np.ndarray, n: int):
    """``(len(seeds), n)`` float32 standard normals (a torch tensor), row i a pure function of ``seeds[i]``.

    The numbers of :func:`item_normals_torch`, made by the compiled kernel of
    :func:`affvae.kernels.normals` where it builds (32 items of 64^3: about 10 against
    30 ms; the two agree to a few float ulps: their log, cos and sin differ), else by it.
    """
    import torch

    from affvae.kernels import normals

    ext = normals()
    if ext is None:
        return item_normals_torch(seeds, n)
    return ext.item_normals(torch.as_tensor(np.asarray(seeds, dtype=np.int64)).contiguous(), int(n))


def item_normals_torch(seeds: np.ndarray, n: int, block: int = 1 << 17):
    """:func:`item_normals` in torch operations.

    Counter-based: one SplitMix64 hash per pair of numbers (as :func:`splitmix64`, in
    torch's wrapping int64 arithmetic, which has uint64's bits), then Box-Muller.  So an
    item's noise is the same whatever batch it is imaged in and wherever.  Each tile of
    512 hashes is read as 1,024 32-bit words, whose low 23 bits become floats in [1, 2)
    by setting the exponent (no integer-to-float conversion): the first 512 give u1 in
    (0, 1], the other 512 u2 in [0, 1), and pair j of the tile gives normal j of the
    item's first half (r cos) and of its second half (r sin).  The hash runs in place
    over ``block`` counters in all, shared among the items, at a time (cache-sized
    passes): 32 items of 64^3 in 36-42 ms against 44-47 with integer-to-float
    conversions (alternated in one process), and 95-99 with a pass of 2^16 counters per
    item; ``torch.randn`` takes about 47.
    """
    import torch

    s = torch.as_tensor(np.asarray(seeds, dtype=np.int64))[:, None] * _u64(0xD1B54A32D192ED03)
    pairs = -(-((n + 1) // 2) // _TILE) * _TILE
    out = torch.empty(len(s), 2 * pairs)  # [r cos | r sin]
    counters = torch.arange(pairs) + _u64(0x9E3779B97F4A7C15)
    block = max(1, block // max(len(s), 1) // _TILE) * _TILE  # counters of each item per pass
    for b in range(0, pairs, block):
        z = s + counters[None, b:b + block]
        tmp = torch.empty_like(z)
        z.bitwise_xor_(_srl(z, 30, tmp)).mul_(_u64(0xBF58476D1CE4E5B9))
        z.bitwise_xor_(_srl(z, 27, tmp)).mul_(_u64(0x94D049BB133111EB))
        z.bitwise_xor_(_srl(z, 31, tmp))
        w = z.shape[1]
        words = z.view(torch.int32).bitwise_and_(0x007FFFFF).bitwise_or_(0x3F800000)
        f = words.view(torch.float32).view(len(s), w // _TILE, 2 * _TILE)  # in [1, 2)
        r = f[..., :_TILE].neg_().add_(2.0).log_().mul_(-2.0).sqrt_()  # u1 = 2 - f in (0, 1]
        angle = f[..., _TILE:].sub_(1.0).mul_(2 * np.pi)
        torch.mul(r, torch.cos(angle), out=out[:, b:b + w].view(len(s), w // _TILE, _TILE))
        torch.mul(r, angle.sin_(), out=out[:, pairs + b:pairs + b + w].view(len(s), w // _TILE, _TILE))
    return out[:, :n]


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
