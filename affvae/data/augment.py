"""Batched geometric and imaging transforms as torch tensor ops.

Everything here takes a whole batch, ``(N, H, W)`` for images or ``(N, D, H, W)`` for
volumes, and does one call into torch: no per-sample Python loops.  Arrays are
indexed ``[z, y, x]``; rotation matrices act on coordinate vectors ``(x, y, z)``.
Pose angles are degrees: one in-plane angle for 2D (counter-clockwise), and
intrinsic ZYZ Euler angles ``(rot, tilt, psi)`` for 3D, as in RELION.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation


def euler_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Intrinsic ZYZ Euler angles in degrees ``(N, 3)`` to rotation matrices ``(N, 3, 3)``."""
    a = np.atleast_2d(np.asarray(angles_deg, dtype=np.float64))
    return Rotation.from_euler("ZYZ", a, degrees=True).as_matrix()


def angle_to_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """In-plane angles in degrees ``(N,)`` to 2x2 rotation matrices ``(N, 2, 2)``."""
    t = np.deg2rad(np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)))
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def pose_to_matrix(pose: np.ndarray, ndim: int) -> np.ndarray:
    """Pose angles (``(N,)`` for 2D, ``(N, 3)`` for 3D) to rotation matrices."""
    return angle_to_matrix(pose) if ndim == 2 else euler_to_matrix(pose)


def _as_batch(x) -> tuple[torch.Tensor, bool]:
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if was_numpy else x
    return t, was_numpy


def rotate(x, matrices, order: str = "linear"):
    """Rotate each object of a batch about the centre of its box.

    ``x``: ``(N, H, W)`` or ``(N, D, H, W)`` (numpy or torch); ``matrices``: ``(N, 2, 2)``
    or ``(N, 3, 3)`` (or one matrix for all).  Returns the same type as ``x``.
    Sampling is trilinear (``order="linear"``) or nearest; outside the box is zero.
    """
    t, was_numpy = _as_batch(x)
    nd = t.dim() - 1
    if nd not in (2, 3):
        raise ValueError(f"rotate expects (N,H,W) or (N,D,H,W), got shape {tuple(t.shape)}")
    R = torch.as_tensor(np.asarray(matrices), dtype=t.dtype, device=t.device)
    if R.dim() == 2:
        R = R.expand(t.shape[0], nd, nd)
    # affine_grid maps output coordinates to input coordinates: the inverse rotation.
    theta = torch.cat([R.transpose(1, 2), R.new_zeros(R.shape[0], nd, 1)], dim=2)
    grid = F.affine_grid(theta, (t.shape[0], 1, *t.shape[1:]), align_corners=False)
    mode = "bilinear" if order == "linear" else "nearest"
    out = F.grid_sample(t.unsqueeze(1), grid, mode=mode, padding_mode="zeros",
                        align_corners=False).squeeze(1)
    return out.numpy() if was_numpy else out


def resize_to_box(x, size: int):
    """Resize a batch to a square/cubic box of side ``size`` (linear interpolation).

    Non-square inputs are stretched to the box, as the anchor implementation did when
    it resized subtomograms to 32^3 or 64^3.  Downsampling by more than 2x first
    area-averages, so fine structure aliases less.
    """
    t, was_numpy = _as_batch(x)
    nd = t.dim() - 1
    if tuple(t.shape[1:]) == (size,) * nd:
        return x
    t = t.unsqueeze(1)
    factor = min(s // size for s in t.shape[2:])
    if factor >= 2:
        pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
        t = pool(t, kernel_size=factor)
    mode = "bilinear" if nd == 2 else "trilinear"
    out = F.interpolate(t, size=(size,) * nd, mode=mode, align_corners=False).squeeze(1)
    return out.numpy() if was_numpy else out
