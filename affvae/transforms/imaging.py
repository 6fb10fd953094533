"""The one imaging pipeline: what turns a rendered or read object into a training item.

In this order, documented once and applied by the in-memory datasets, the dataset
folders ``affvae simulate`` writes, the stream and the evaluation alike:

1. its **pose**: the simulator renders the object in it, or a folder item is
   rotated (done before :func:`image`, by whoever makes the object);
2. a **contrast transfer function** (``ctf_defocus``, µm underfocus; needs the voxel size);
3. the **missing wedge** of a ±``wedge`` degree single-axis tilt series (3D only);
4. additive Gaussian **noise** at the signal-to-noise variance ratio ``snr``, each
   item's noise drawn from its own seed (:func:`~affvae.transforms.poses.item_normals`),
   so an item gets the same noise in whatever batch and process it is imaged;
5. per-item intensity **normalisation** (``minmax`` to [0, 1], ``standard`` z-scores, ``none``).

:func:`image` does 2-5 on a batch (batched FFTs, one noise draw per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affvae.errors import ConfigError

NORMALISATIONS = ("minmax", "standard", "none")


@dataclass(frozen=True)
class Imaging:
    """The imaging effects and normalisation of a dataset (small and picklable)."""

    ctf_defocus: float | None = None
    voxel_size: float | None = None
    wedge: float | None = None
    snr: float | None = None
    normalise: str = "none"

    @classmethod
    def of(cls, d, normalise: bool = True) -> "Imaging":
        """The imaging of a data config; ``normalise=False`` leaves the values as imaged (for
        writing dataset files, which training normalises when it reads them)."""
        voxel = d.voxel_size or (d.resolution / 3 if d.source == "proteins" else None)
        return cls(d.ctf_defocus, voxel, d.wedge, d.snr, d.normalise if normalise else "none")

    @property
    def effects(self) -> bool:
        return self.ctf_defocus is not None or self.wedge is not None or self.snr is not None


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


def image(x: np.ndarray, imaging: Imaging, seeds: np.ndarray | None = None, chunk: int = 256) -> np.ndarray:
    """Steps 2-5 of the pipeline on a batch ``x`` (N, H, W) or (N, D, H, W); float32 out.

    ``seeds`` (N,) are the items' own seeds, needed when ``imaging.snr`` is set.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if imaging.effects and len(x):
        x = _effects(x, imaging, seeds, chunk)
    return normalise(x, imaging.normalise)


def _effects(x: np.ndarray, im: Imaging, seeds, chunk: int) -> np.ndarray:
    import torch

    from affvae.transforms.augment import add_noise, apply_ctf, missing_wedge
    from affvae.transforms.poses import item_normals

    if im.wedge is not None and x.ndim != 4:
        raise ConfigError("data.wedge: a missing wedge applies to 3D volumes only")
    if im.ctf_defocus is not None and not im.voxel_size:
        raise ConfigError("data.ctf_defocus needs data.voxel_size (Å per voxel)")
    if im.snr is not None and (seeds is None or len(seeds) != len(x)):
        raise ValueError("image: noise needs one seed per item")
    out = np.empty_like(x)
    for s in range(0, len(x), chunk):
        t = torch.from_numpy(x[s:s + chunk])
        if im.ctf_defocus is not None:
            t = apply_ctf(t, im.voxel_size, im.ctf_defocus)
        if im.wedge is not None:
            t = missing_wedge(t, im.wedge)
        if im.snr is not None:
            noise = item_normals(np.asarray(seeds[s:s + chunk]), int(np.prod(t.shape[1:])))
            t = add_noise(t, im.snr, noise=torch.from_numpy(noise).reshape(t.shape))
        out[s:s + chunk] = t.numpy()
    return out
