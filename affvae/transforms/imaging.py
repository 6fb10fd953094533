"""Per-item normalisation and the imaging effects, applied in one documented order.

A simulated or read object becomes a training item through, in this order:

1. its pose (rendered by the simulator, or a rotation of a folder item);
2. a contrast transfer function (``ctf_defocus``, needs the voxel size);
3. the missing wedge of a ±``wedge`` degree tilt series (3D only);
4. additive Gaussian noise at a signal-to-noise variance ratio ``snr``;
5. per-item intensity normalisation (``minmax``, ``standard`` or ``none``).

:func:`apply_effects` does 2-4 and :func:`normalise` does 5, batched.
"""

from __future__ import annotations

import numpy as np

from affvae.errors import ConfigError

NORMALISATIONS = ("minmax", "standard", "none")


def normalise(x: np.ndarray, how: str) -> np.ndarray:
    """Per item: minmax to [0, 1], standard (zero mean, unit sd) or none."""
    if how == "none" or len(x) == 0:
        return x.astype(np.float32, copy=False)
    if how not in NORMALISATIONS:
        raise ConfigError(f"normalisation {how!r}: expected one of {', '.join(NORMALISATIONS)}")
    flat = x.reshape(len(x), -1)
    if how == "minmax":
        lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
        out = (flat - lo) / np.where(hi > lo, hi - lo, 1.0)
    else:
        mean, sd = flat.mean(1, keepdims=True), flat.std(1, keepdims=True)
        out = (flat - mean) / np.where(sd > 0, sd, 1.0)
    return out.reshape(x.shape).astype(np.float32)


def apply_effects(x: np.ndarray, d, seed: int, chunk: int = 256) -> np.ndarray:
    """CTF, then the missing wedge, then noise at an SNR, as the data config ``d`` says.

    Batched in chunks; the noise is drawn from one generator seeded by ``seed``, so
    the same items get the same noise.
    """
    if d.wedge is None and d.snr is None and d.ctf_defocus is None:
        return x
    import torch

    from affvae.transforms.augment import add_noise, apply_ctf, missing_wedge

    voxel = d.voxel_size or d.resolution / 3  # proteins: the simulator's default voxel size

    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for s in range(0, len(x), chunk):
        t = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk], dtype=np.float32))
        if d.ctf_defocus is not None:
            t = apply_ctf(t, voxel, d.ctf_defocus)
        if d.wedge is not None:
            if t.dim() != 4:
                raise ConfigError("data.wedge: a missing wedge applies to 3D volumes only")
            t = missing_wedge(t, d.wedge)
        if d.snr is not None:
            t = add_noise(t, d.snr, g)
        out.append(t.numpy())
    return np.concatenate(out) if out else x
