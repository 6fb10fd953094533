"""SOAP similarity between 2D glyph images (dscribe), normalised so that it says something.

Each image becomes a planar "molecule": every foreground pixel is an atom of one
species at ``(x, y, 0)``.  dscribe's SOAP power spectrum is averaged over the
atoms, giving one descriptor per image, and two images are compared with a
normalised kernel between their descriptors.  SOAP is invariant to rotations of
the point cloud (and, because the atoms are planar and the power spectrum is
invariant under O(3), to in-plane mirror images too: a mirror in the plane is a
3D rotation by 180 degrees about an in-plane axis).  So ``b``, ``d`` and ``p`` are
all but identical to SOAP; that is a property of the descriptor, not a bug.

Why the plain settings fail
---------------------------
With coordinates in pixels, ``r_cut=6, n_max=6, l_max=6, sigma=1,
average="inner"``, the raw cosine between two glyphs' descriptors is 0.989 to
1.000 (mean 0.998) over the 66 pairs of the 12 paper glyphs: every atom sees a
patch of a dense pixel lattice, and the descriptor is dominated by a few large
components (the radial l=0 terms) that all glyphs share.  Centring on the set
mean alone does not fix it: the centred descriptors are then dominated by the
descriptor's magnitude (it grows like the square of the number of neighbours, so
a few pixels of rasterisation change it a lot), and a rotated ``z`` or ``k`` ends
up less similar to itself than to other glyphs.

What is done here (the defaults, :data:`DEFAULT_PARAMS`)
-------------------------------------------------------
1. **Resolution-free coordinates.**  Pixel coordinates are scaled so that the
   image side (``max(H, W)``) is ``side = 16`` length units: 1 unit = 4 pixels at
   64x64.  A paper glyph (capital height 0.55 of the side) is about 9 units tall
   and strokes are about 1 unit wide.
2. **Atoms on a fixed grid.**  Images larger than ``grid = 64`` pixels are area
   pooled by ``floor(max(H, W) / 64)`` (block mean >= 0.5), so the atom spacing
   stays near 1/64 of the side (0.25 units) at any resolution and the cost does
   not grow with it.  Pooling matters: strided subsampling aliases thin strokes
   (at 128 px it made 21 of 216 rotated-copy checks fail), and pooling 64 px
   glyphs down to 32 px thins them away (half the checks failed).  All pixels are kept otherwise.
3. **The whole glyph in every environment.**  ``r_cut = 12`` units exceeds the
   diameter of any glyph, so every atom sees all others: nothing crosses the
   cutoff when the glyph rotates on the pixel grid, and the descriptor is a
   smooth function of the shape.  ``sigma = 1`` unit (about one stroke width, 4 px)
   makes the density smooth over the pixel lattice (whose 4-fold pattern is not
   rotated with the glyph) while keeping stroke-scale detail.
4. ``average="outer"`` (mean of the per-atom power spectra), ``n_max = 6``,
   ``l_max = 6``, ``periodic=False``.  "outer" keeps odd-l terms (endpoints,
   junctions): "inner" averages the expansion of the glyph's autocorrelation,
   which is centrosymmetric, so its odd-l half is exactly zero.  Both work at
   64 px; "outer" was more robust at 32 px (4 vs 13 failed checks out of 156).
   ``l_max = 8`` changed no value by more than 0.001; ``n_max = 8`` is
   slower and ill-conditioned in dscribe's GTO orthonormalisation.
5. **Normalised, centred kernel.**  Descriptors are scaled to unit length (the
   usual normalised SOAP kernel ``k(x, y) = (x.y / |x||y|) ** zeta``), centred in
   the kernel's feature space on the mean of a reference set, and renormalised:
   ``s(x, y) = kc(x, y) / sqrt(kc(x, x) kc(y, y))`` with
   ``kc(x, y) = k(x, y) - m(x) - m(y) + mbar``, ``m(x)`` the mean of ``k(x, r)``
   over the reference objects ``r`` and ``mbar`` that of ``k(r, r')``.  This is the
   cosine between the objects' deviations from the reference mean: in [-1, 1],
   1 on the diagonal, 0 for unrelated deviations, negative for opposite ones.
   ``zeta = 1`` (the kernel exponent): 2 and 4 (and a signed square root of the
   features) moved the spread and the margins by a few hundredths without
   removing the closest calls, so the simplest choice stayed.  Standardising each
   feature (z-scores) spread the values more but amplified rasterisation noise
   (up to 10 of 60 rotation checks failed).

The reference set
-----------------
Centring needs a reference, and centring on only two objects makes any pair -1.
The reference is the set of *distinct* objects compared (the union of X and Y,
duplicate descriptors counted once) when it has at least 3 members.  Otherwise
(one or two objects) it is a fixed set: the descriptors of the paper's 12 glyphs
(:data:`affvae.transforms.glyphs.PAPER_GLYPHS`) rendered unrotated
at the images' size, computed once per (size, parameters) and cached.  For
objects that are paper glyphs the two rules agree: a pair scores exactly what it
scores in the 12x12 matrix.  Values always depend on the reference (they are
similarities *relative to what is compared*); pass ``reference=`` to
:func:`soap_kernel` to pin it, e.g. when a matrix is computed in blocks.  An
object whose descriptor equals the reference mean has no direction; its
similarity to anything else is 0 and identical descriptors score 1.

Measured (12 paper glyphs, 64x64, defaults; reproduce with
``python benchmarks/soap_glyphs.py``)
----------------------------------------------------------------------------------
* plain settings (pixel units, r_cut 6, inner), raw cosine: off-diagonal
  min 0.989, max 1.000, mean 0.998;
* these settings, raw cosine of the descriptors (no centring): min 0.851,
  max 1.000, mean 0.959;
* normalised matrix: off-diagonal min -0.908, max 1.000, mean -0.073, std 0.61;
  b-d 0.997, b-p 1.000, b-x -0.875, a-e 0.974, i-j 0.93, z-x 0.77;
* rotated copies: for every glyph and 13 angles (12 random in [-180, 180) and
  30 degrees) the similarity to its own rotated copy beats that to every other
  glyph and every other rotated glyph (b, d, p exempted among themselves), in a
  24-object set: 156 of 156 at 64 px (smallest margin 0.008, a vs e) and at
  128 px (0.003), 152 of 156 at 32 px (a, e, k fail once or twice: strokes are
  1.7 px wide there).  At 30 degrees and 64 px the own-copy similarity is 0.991
  to 1.000 against at most 0.987 for any other glyph;
* 12x12 matrix: about 0.3 s on 2 cores (plus about 1 s to import dscribe).
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from affvae.errors import ConfigError, DataError

#: Atomic number given to every foreground pixel (any single species would do).
SPECIES = 6
#: Below this many images one process is used (worker start-up costs ~1 s).
PARALLEL_MIN_IMAGES = 64


@dataclass(frozen=True)
class SoapParams:
    """The SOAP-similarity parameters; see the module docstring for why these values."""

    #: length units per image side (max(H, W)); sets the scale of r_cut and sigma
    side: float = 16.0
    #: images larger than this are area-pooled by floor(max(H, W) / grid)
    grid: int = 64
    #: a pixel is foreground (an atom) when its value is >= threshold
    threshold: float = 0.5
    #: SOAP cutoff radius, in units (16 units = the image side)
    r_cut: float = 12.0
    #: width of the Gaussian on each atom, in units
    sigma: float = 1.0
    n_max: int = 6
    l_max: int = 6
    #: dscribe's averaging over atoms: "outer" (of power spectra) or "inner"
    average: str = "outer"
    #: exponent of the normalised kernel (x.y / |x||y|) ** zeta, a positive integer
    zeta: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict, for provenance records."""
        return asdict(self)


#: The defaults used by :func:`soap_descriptors` and :func:`soap_cross`.
DEFAULT_PARAMS = SoapParams()


def soap_params(params: SoapParams | None = None, **overrides) -> SoapParams:
    """Validated parameters: ``params`` (default :data:`DEFAULT_PARAMS`) with overrides."""
    base = DEFAULT_PARAMS if params is None else params
    known = {f.name for f in fields(SoapParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown SOAP parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(expected some of {', '.join(sorted(known))})"
        )
    p = replace(base, **overrides) if overrides else base
    checks = [
        (p.side > 0, "side", "a positive length"),
        (isinstance(p.grid, (int, np.integer)) and p.grid >= 1, "grid", "a positive integer"),
        (np.isfinite(p.threshold), "threshold", "a finite number"),
        (p.r_cut > 1, "r_cut", "a radius above 1 unit (dscribe's GTO basis needs it)"),
        (p.sigma > 0, "sigma", "a positive width"),
        (isinstance(p.n_max, (int, np.integer)) and p.n_max >= 1, "n_max", "a positive integer"),
        (isinstance(p.l_max, (int, np.integer)) and 0 <= p.l_max <= 20, "l_max", "an integer in 0..20"),
        (p.average in ("inner", "outer"), "average", "'inner' or 'outer'"),
        (isinstance(p.zeta, (int, np.integer)) and p.zeta >= 1, "zeta", "a positive integer"),
    ]
    for ok, name, expected in checks:
        if not ok:
            raise ConfigError(f"SOAP parameter {name}={getattr(p, name)!r}: expected {expected}")
    return p


@functools.lru_cache(maxsize=16)
def _soap(p: SoapParams):
    from dscribe.descriptors import SOAP

    try:
        return SOAP(species=[SPECIES], r_cut=float(p.r_cut), n_max=int(p.n_max), l_max=int(p.l_max),
                    sigma=float(p.sigma), average=p.average, periodic=False)
    except ValueError as e:
        raise ConfigError(f"SOAP parameters {p.as_dict()}: {e}") from None


def _check_images(images, name: str = "images") -> np.ndarray:
    try:
        X = np.asarray(images, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected a numeric array of 2D images (N, H, W)") from None
    if X.ndim == 4:
        raise DataError(
            f"{name}: got 3D volumes of shape {X.shape[1:]}; SOAP is for 2D images here "
            "(use fsc, ncc or mean-diff for volumes)"
        )
    if X.ndim == 2:
        raise DataError(
            f"{name}: got one image of shape {X.shape}; expected a batch (N, H, W), e.g. image[None]"
        )
    if X.ndim != 3:
        raise DataError(f"{name}: expected a batch of 2D images (N, H, W), got shape {X.shape}")
    if X.size and not np.isfinite(X).all():
        i = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise DataError(f"{name}: image {i} has non-finite values (NaN or inf)")
    return X


def _atoms(X: np.ndarray, p: SoapParams, name: str) -> list:
    """One ase.Atoms per image: foreground pixels (area-pooled above ``grid``) at z=0."""
    from ase import Atoms

    n, h, w = X.shape
    mask = X >= p.threshold
    counts = mask.reshape(n, -1).sum(1)
    if (counts == 0).any():
        i = int(np.flatnonzero(counts == 0)[0])
        raise DataError(
            f"{name}: image {i} has no foreground (no pixel >= {p.threshold:g}); SOAP needs at least one"
        )
    f = max(1, max(h, w) // int(p.grid))
    if f > 1:
        hh, ww = h // f * f, w // f * f
        mask = mask[:, :hh, :ww].reshape(n, hh // f, f, ww // f, f).mean(axis=(2, 4)) >= 0.5
        pooled = mask.reshape(n, -1).sum(1)
        if (pooled == 0).any():
            i = int(np.flatnonzero(pooled == 0)[0])
            raise DataError(
                f"{name}: image {i} has only {int(counts[i])} foreground pixels, too few to survive "
                f"pooling by {f}x{f}; SOAP needs a foreground of some extent"
            )
    step = p.side / max(h, w) * f
    img, ys, xs = np.nonzero(mask)
    pos = np.stack([(xs + 0.5) * step, (ys + 0.5) * step, np.zeros(len(xs))], axis=1)
    bounds = np.searchsorted(img, np.arange(n + 1))
    return [Atoms(numbers=np.full(b - a, SPECIES), positions=pos[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def soap_descriptors(images: np.ndarray, params: SoapParams | None = None) -> np.ndarray:
    """Atom-averaged SOAP descriptors ``(N, F)`` float64 of a batch of 2D images ``(N, H, W)``.

    Raw dscribe output (not normalised); :func:`soap_kernel` turns two blocks of
    them into similarities.  Raises :class:`DataError` for an image without
    foreground pixels (naming its index) and for anything but a batch of 2D images.
    """
    p = soap_params(params)
    X = _check_images(images)
    soap = _soap(p)
    if len(X) == 0:
        return np.zeros((0, soap.get_number_of_features()))
    systems = _atoms(X, p, "images")
    n_jobs = 1 if len(systems) < PARALLEL_MIN_IMAGES else max(1, min(os.cpu_count() or 1, 8))
    D = soap.create(systems, n_jobs=n_jobs)
    return np.asarray(D, dtype=np.float64).reshape(len(systems), -1)


@functools.lru_cache(maxsize=8)
def reference_descriptors(size: int = 64, params: SoapParams = DEFAULT_PARAMS) -> np.ndarray:
    """Descriptors of the paper's 12 glyphs rendered unrotated at ``size`` (cached, read-only).

    The fixed centring reference used when fewer than 3 distinct objects are compared.
    """
    from affvae.transforms.glyphs import PAPER_GLYPHS, render_glyphs

    D = soap_descriptors(render_glyphs(PAPER_GLYPHS, np.zeros(len(PAPER_GLYPHS)), max(int(size), 16)), params)
    D.setflags(write=False)
    return D


def _unit(D: np.ndarray, name: str) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2:
        raise DataError(f"{name}: expected SOAP descriptors (N, F), got shape {D.shape}")
    norm = np.linalg.norm(D, axis=1, keepdims=True)
    if (norm == 0).any() or not np.isfinite(norm).all():
        i = int(np.flatnonzero((norm[:, 0] == 0) | ~np.isfinite(norm[:, 0]))[0])
        raise DataError(f"{name}: descriptor {i} is zero or not finite")
    return D / norm


def centring_reference(D: np.ndarray) -> np.ndarray | None:
    """The distinct unit descriptors of a set, the reference to centre on; None below 3.

    The one rule for the default reference, so that a matrix computed in blocks
    (each block pair given the whole set's reference) equals the one computed at once.
    """
    R = np.unique(_unit(D, "descriptors"), axis=0)
    return R if len(R) >= 3 else None


def soap_kernel(DX: np.ndarray, DY: np.ndarray | None = None, *, reference: np.ndarray | None = None,
                params: SoapParams | None = None, size: int = 64) -> np.ndarray:
    """Similarities in [-1, 1] between two blocks of SOAP descriptors, ``(len(DX), len(DY))``.

    The normalised kernel ``(x.y/|x||y|) ** zeta``, centred on the mean of the
    reference in its feature space and renormalised (a cosine of deviations from
    the reference mean).  ``reference``: descriptors to centre on; by default the
    distinct rows of DX and DY together when there are at least 3 of them, else
    :func:`reference_descriptors` at ``size`` (the images' side in pixels).
    ``DY=None`` compares DX with itself: symmetric with an exact unit diagonal.
    """
    p = soap_params(params)
    UX = _unit(DX, "DX")
    UY = UX if DY is None else _unit(DY, "DY")
    if UY.shape[1] != UX.shape[1]:
        raise DataError(f"descriptor lengths differ: {UX.shape[1]} vs {UY.shape[1]} (other SOAP parameters?)")
    if reference is None:
        R = centring_reference(np.concatenate([UX, UY]))
        if R is None:
            R = _unit(reference_descriptors(int(size), p), "reference")
    else:
        R = _unit(reference, "reference")
        if len(R) == 0:
            raise DataError("reference: no descriptors to centre on")
    if R.shape[1] != UX.shape[1]:
        raise DataError(f"reference descriptors have {R.shape[1]} features, expected {UX.shape[1]}")
    z = int(p.zeta)
    K = np.clip(UX @ UY.T, -1.0, 1.0) ** z
    mx = (np.clip(UX @ R.T, -1.0, 1.0) ** z).mean(1)
    my = (np.clip(UY @ R.T, -1.0, 1.0) ** z).mean(1)
    mr = (np.clip(R @ R.T, -1.0, 1.0) ** z).mean()
    kc = K - mx[:, None] - my[None, :] + mr
    nx = np.sqrt(np.clip(1.0 - 2.0 * mx + mr, 0.0, None))  # k(x, x) = 1 for unit vectors
    ny = np.sqrt(np.clip(1.0 - 2.0 * my + mr, 0.0, None))
    den = np.outer(nx, ny)
    tol = 1e-12
    S = np.where(den > tol, kc / np.maximum(den, tol), 0.0)
    S = np.clip(S, -1.0, 1.0)
    S[2.0 - 2.0 * K <= tol] = 1.0  # identical descriptors (kernel distance 0)
    if DY is None:
        S = (S + S.T) / 2
        np.fill_diagonal(S, 1.0)
    return S


def soap_cross(X: np.ndarray, Y: np.ndarray | None = None, **params) -> np.ndarray:
    """SOAP similarities in [-1, 1] between 2D images X ``(N, H, W)`` and Y (default X).

    ``params`` override fields of :data:`DEFAULT_PARAMS` (unknown names raise
    ConfigError).  ``soap_cross(X)`` is symmetric with ones on the diagonal.
    Centred on the distinct objects of X and Y when there are at least 3, else on
    the paper glyphs at the images' size (see the module docstring).
    """
    p = soap_params(**params)
    X = _check_images(X, "X")
    Yc = None if Y is None else _check_images(Y, "Y")
    DX = soap_descriptors(X, p)
    DY = None if Yc is None else soap_descriptors(Yc, p)
    if len(DX) == 0 or (DY is not None and len(DY) == 0):
        return np.zeros((len(DX), len(DX) if DY is None else len(DY)))
    return soap_kernel(DX, DY, params=p, size=max(X.shape[1:]))
