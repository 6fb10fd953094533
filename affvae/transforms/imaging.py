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

:func:`image` does 2-5 on a batch: the CTF and the wedge, both linear, as one product
filter in one pair of batched FFTs; one noise draw per chunk.
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


def normalise(x, how: str):
    """Per item: minmax to [0, 1], standard (zero mean, unit sd) or none; float32 out.

    ``x`` a numpy array (returned as a new array) or a torch tensor (normalised in place).
    """
    if how not in NORMALISATIONS:
        raise ConfigError(f"normalisation {how!r}: expected one of {', '.join(NORMALISATIONS)}")
    if isinstance(x, np.ndarray):
        if how == "none" or len(x) == 0:
            return x.astype(np.float32, copy=False)
        import torch

        return normalise(torch.from_numpy(np.array(x, dtype=np.float32)), how).numpy()
    if how == "none" or len(x) == 0:
        return x
    flat = x.view(len(x), -1)
    if how == "minmax":
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        flat.sub_(lo).div_((hi - lo).where(hi > lo, 1.0))
    else:
        from affvae.transforms.augment import row_var_mean

        var, mean = (t.unsqueeze(1) for t in row_var_mean(flat))
        flat.sub_(mean).div_(var.sqrt().where(var > 0, 1.0))
    return x


def image(x, imaging: Imaging, seeds: np.ndarray | None = None, chunk: int = 256):
    """Steps 2-5 of the pipeline on a batch ``x`` (N, H, W) or (N, D, H, W); float32 out.

    ``x`` a numpy array (a new array is returned) or a float32 torch tensor (imaged in
    place where it can be; on its device).  ``seeds`` (N,) are the items' own seeds,
    needed when ``imaging.snr`` is set.
    """
    import torch

    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.array(x, dtype=np.float32)) if was_numpy else x.float().contiguous()
    if imaging.effects and len(t):
        t = _effects(t, imaging, seeds, chunk)
    t = normalise(t, imaging.normalise)
    return t.numpy() if was_numpy else t


def _effects(x, im: Imaging, seeds, chunk: int):
    """CTF, wedge and noise on a float32 tensor batch, ``chunk`` items at a time."""
    if im.wedge is not None and x.ndim != 4:
        raise ConfigError("data.wedge: a missing wedge applies to 3D volumes only")
    if im.ctf_defocus is not None and not im.voxel_size:
        raise ConfigError("data.ctf_defocus needs data.voxel_size (Å per voxel)")
    if im.snr is not None and (seeds is None or len(seeds) != len(x)):
        raise ValueError("image: noise needs one seed per item")
    seeds = None if seeds is None else np.asarray(seeds)
    if len(x) <= chunk:  # one batch: no copy back
        return _effects_chunk(x, im, seeds)
    for s in range(0, len(x), chunk):
        x[s:s + chunk] = _effects_chunk(x[s:s + chunk], im, None if seeds is None else seeds[s:s + chunk])
    return x


def _effects_chunk(t, im: Imaging, seeds):
    from affvae.transforms.augment import add_noise, ctf_transfer, fourier_filter, wedge_transfer
    from affvae.transforms.poses import item_normals

    shape = tuple(t.shape[1:])
    transfer = None  # CTF and wedge are both linear: their product, in one pair of FFTs
    if im.ctf_defocus is not None:
        transfer = ctf_transfer(shape, im.voxel_size, im.ctf_defocus)
    if im.wedge is not None:
        wedge = wedge_transfer(shape, im.wedge)
        transfer = wedge if transfer is None else transfer * wedge
    if transfer is not None:
        t = fourier_filter(t, transfer)
    if im.snr is not None:
        noise = item_normals(seeds, int(np.prod(t.shape[1:]))).to(t.device)
        t = add_noise(t, im.snr, noise=noise.view(t.shape), inplace=True)
    return t
