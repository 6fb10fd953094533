"""Similarity metrics between objects, by name; each gives values in [-1, 1].

Every metric is split in two steps so that a matrix over N objects costs N
transforms and one batched comparison, never N^2 separate pair computations:

``prepare(X)``
    per-object features (Fourier coefficients sorted by shell, standardised voxels,
    SOAP descriptors), computed once per object;
``compare(FX, FY)``
    the (len(X), len(Y)) similarity matrix from two prepared blocks.

The same split lets a cluster shard the matrix into blocks of rows and columns
(and lets the rotationally aligned mode prepare each rotated copy once).

Metrics
-------
``fsc``
    Fourier shell (3D) or ring (2D) correlation, averaged over shells from the zero
    frequency up to Nyquist with each shell weighted by its number of Fourier
    coefficients (Brown et al. 2015, Acta Cryst D71:136).  Invariant to intensity
    scale; FSC(x, x) = 1, FSC(x, -x) = -1; independent noise gives about 0.
``mean-diff``
    The paper's real-space, unweighted mean difference (its eq. 5) between objects
    standardised to zero mean and unit variance: d = mean |x - y|.  Mapped to a
    similarity as ``s = 1 - d``.  Since mean|x - y| <= rms(x - y) = sqrt(2 - 2 r) <= 2
    for standardised objects (r their correlation), d lies in [0, 2] and s in
    [-1, 1], with s = 1 only for identical objects.
``ncc``
    Normalised cross-correlation (Pearson r of the voxels) at zero shift; the cheap
    baseline.
``soap``
    SOAP descriptors (dscribe) of 2D glyphs with foreground pixels as atoms; see
    :mod:`affvae.affinity.soap` for the parameters and the normalisation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from affvae.errors import AffinityError, DataError


@dataclass(frozen=True)
class Metric:
    name: str
    prepare: Callable[[torch.Tensor], Any]
    compare: Callable[[Any, Any], torch.Tensor]
    ndims: tuple[int, ...] = (2, 3)
    #: whether the metric changes when one object is rotated (else alignment is moot)
    rotation_sensitive: bool = True
    #: for metrics whose values depend on the whole set compared (SOAP centres on it):
    #: the set's context from the prepared features of all objects, passed to
    #: ``compare(fa, fb, context)`` when a matrix is computed in blocks
    context: Callable[[Any], Any] | None = None
    #: rotational alignment (:mod:`affvae.affinity.align`): the similarity matrix and the
    #: row-wise similarity of given pairs as the aligned mode measures them
    aligned_compare: Callable[[Any, Any], torch.Tensor] | None = None
    aligned_pairs: Callable[[Any, Any], torch.Tensor] | None = None


def _as_tensor(X) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if t.dim() not in (3, 4):
        raise DataError(
            f"expected a batch of 2D images (N,H,W) or 3D volumes (N,D,H,W), got shape {tuple(t.shape)}"
        )
    # A NaN or Inf voxel makes its object's sum non-finite: one cheap pass, and the
    # full elementwise check only to name the offending object.
    if not torch.isfinite(t.flatten(1).sum(1, dtype=torch.float64)).all():
        bad = int((~torch.isfinite(t)).flatten(1).any(1).nonzero()[0, 0])
        raise DataError(f"object {bad} has NaN or Inf values")
    return t.to(torch.float64)


# ---------------------------------------------------------------------------- FSC


@dataclass
class ShellSpectra:
    """Fourier coefficients grouped by shell, as real ``[Re, Im]`` rows per object."""

    coeffs: torch.Tensor  # (N, 2K): shell by shell, interleaved (Re, Im) of each coefficient
    bounds: list[tuple[int, int]]  # per shell, (start, stop) of its block in ``coeffs``
    power: torch.Tensor  # (N, S) summed |F|^2 per shell (full-spectrum counts)
    counts: torch.Tensor  # (S,) coefficients per shell in the full spectrum
    shape: tuple[int, ...]

    @functools.cached_property
    def signal(self) -> torch.Tensor:
        """(N,) the highest shell of each object whose power per coefficient is at least
        :data:`SIGNAL_FLOOR` of its strongest shell beyond the origin: the band it holds
        signal in (a map at 18 Å in 6 Å voxels ends near 2/3 of Nyquist; noise and sharp
        edges reach Nyquist)."""
        per = self.power[:, 1:] / self.counts[1:].clamp_min(1)
        rel = per / per.max(1, keepdim=True).values.clamp_min(1e-300)
        above = (rel >= SIGNAL_FLOOR).double() * torch.arange(1, per.shape[1] + 1, dtype=torch.float64)
        return above.max(1).values.long().clamp_min(1)


#: Relative power per coefficient below which a shell holds no signal (see ShellSpectra.signal).
SIGNAL_FLOOR = 1e-3


@torch.no_grad()
def shell_index(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell number and full-spectrum multiplicity of each ``rfftn`` coefficient."""
    axes = [torch.fft.fftfreq(n, 1.0 / n) for n in shape[:-1]]
    axes.append(torch.fft.rfftfreq(shape[-1], 1.0 / shape[-1]))
    grids = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(sum(g.double() ** 2 for g in grids))
    shell = torch.round(r).long()
    # rfftn stores half the spectrum: every coefficient off the kx = 0 (and, for even
    # sizes, kx = Nyquist) planes stands for itself and its conjugate mirror.
    n = shape[-1]
    kx = torch.arange(n // 2 + 1)
    mult_x = torch.where((kx == 0) | ((n % 2 == 0) & (kx == n // 2)), 1.0, 2.0).double()
    mult = mult_x.expand_as(r).clone()
    return shell, mult


@functools.lru_cache(maxsize=16)
def _shell_layout(shape: tuple[int, ...]):
    """For ``rfftn`` coefficients of objects of ``shape``, computed once per shape: the order
    that groups the kept ones (up to Nyquist) by shell, the sqrt of their multiplicities
    (interleaved Re, Im), each shell's coefficient count and its (start, stop) in the
    interleaved rows."""
    shell, mult = shell_index(shape)
    nyq = shape[0] // 2
    shell_f = shell.flatten()
    keep = (shell_f <= nyq).nonzero().squeeze(1)
    order = keep[torch.argsort(shell_f[keep], stable=True)]
    shell_sorted = shell_f[order]
    w = mult.flatten()[order]
    counts = torch.bincount(shell_sorted, weights=w, minlength=nyq + 1)
    edges = torch.searchsorted(shell_sorted, torch.arange(nyq + 2)).tolist()
    bounds = [(2 * edges[s], 2 * edges[s + 1]) for s in range(nyq + 1)]
    return order.numpy(), torch.sqrt(w).repeat_interleave(2), counts, bounds


@torch.no_grad()
def fsc_prepare(X) -> ShellSpectra:
    X = _as_tensor(X)
    shape = tuple(X.shape[1:])
    if len(set(shape)) != 1:
        raise DataError(f"FSC needs square images or cubic volumes, got {'x'.join(map(str, shape))}")
    dims = tuple(range(1, X.dim()))
    F = torch.fft.rfftn(X, dim=dims)
    order, root_w, counts, bounds = _shell_layout(shape)
    # One gather of the kept coefficients in shell order (numpy's take is the fastest
    # gather here), viewed as interleaved (Re, Im) pairs: the real part of a
    # cross-spectrum, sum Re_a Re_b + Im_a Im_b, is then a plain dot product over a
    # shell's slice, one matrix product per shell.
    n_obj = F.shape[0]
    gathered = np.take(F.reshape(n_obj, -1).numpy(), order, axis=1)
    coeffs = torch.from_numpy(gathered.view(np.float64))
    coeffs.mul_(root_w)
    starts = np.array([a for a, _ in bounds])
    power = torch.from_numpy(np.add.reduceat((coeffs * coeffs).numpy(), starts, axis=1))
    return ShellSpectra(coeffs, bounds, power, counts, shape)


@torch.no_grad()
def fsc_compare(A: ShellSpectra, B: ShellSpectra, per_shell: bool = False, band: bool = False) -> torch.Tensor:
    """Shell-weighted mean FSC between every object of A and every object of B.

    Per shell s: FSC_s = Re sum F_a conj(F_b) / sqrt(P_a P_b), the numerator a single
    real matrix product of ``[Re, Im]`` blocks.  With ``per_shell`` returns (S, Na, Nb).
    ``band`` averages each pair over the shells up to the lower of the two objects'
    signal bands (:attr:`ShellSpectra.signal`) instead of up to Nyquist: the aligned
    mode's choice, since the rotated copy is interpolated and interpolation error is
    all a shell without signal holds.
    """
    if A.shape != B.shape:
        raise DataError(f"FSC between shapes {A.shape} and {B.shape}: shapes must match")
    out = []
    for s, (a, b) in enumerate(A.bounds):
        cross = A.coeffs[:, a:b] @ B.coeffs[:, a:b].T
        denom = torch.sqrt(A.power[:, s, None] * B.power[None, :, s])
        out.append(torch.where(denom > 0, cross / denom.clamp_min(1e-300), 0.0))
    fsc = torch.stack(out)  # (S, Na, Nb)
    if per_shell:
        return fsc
    if not band:
        w = A.counts / A.counts.sum()
        return torch.einsum("s,sij->ij", w, fsc).clamp(-1.0, 1.0)
    top = torch.minimum(A.signal[:, None], B.signal[None, :])  # (Na, Nb)
    shells = torch.arange(len(A.bounds))[:, None, None]
    w = A.counts[:, None, None] * (shells <= top[None]).double()
    return ((w * fsc).sum(0) / w.sum(0)).clamp(-1.0, 1.0)


@torch.no_grad()
def fsc_pairs(A: ShellSpectra, B: ShellSpectra, band: bool = False) -> torch.Tensor:
    """The FSC of object i of A with object i of B, (N,): the diagonal of :func:`fsc_compare`
    without the other pairs (the refinement of an alignment compares given pairs)."""
    if A.shape != B.shape or A.coeffs.shape[0] != B.coeffs.shape[0]:
        raise DataError(f"FSC pairs need as many objects of one shape ({A.shape}, {B.shape})")
    out = []
    for s, (a, b) in enumerate(A.bounds):
        cross = (A.coeffs[:, a:b] * B.coeffs[:, a:b]).sum(1)
        denom = torch.sqrt(A.power[:, s] * B.power[:, s])
        out.append(torch.where(denom > 0, cross / denom.clamp_min(1e-300), 0.0))
    fsc = torch.stack(out)  # (S, N)
    w = A.counts[:, None].expand_as(fsc)
    if band:
        top = torch.minimum(A.signal, B.signal)
        w = w * (torch.arange(len(A.bounds))[:, None] <= top[None]).double()
    return ((w * fsc).sum(0) / w.sum(0)).clamp(-1.0, 1.0)


# --------------------------------------------------------------- real-space metrics


class ConstantObject(DataError):
    """An object with every value equal, which a correlation cannot compare; ``index`` says which."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


@torch.no_grad()
def standardise(X) -> torch.Tensor:
    """Each object flattened, to zero mean and unit (population) variance."""
    X = _as_tensor(X).flatten(1)
    X = X - X.mean(1, keepdim=True)
    sd = X.pow(2).mean(1, keepdim=True).sqrt()
    if (sd == 0).any():
        bad = int((sd.squeeze(1) == 0).nonzero()[0, 0])
        raise ConstantObject(bad, f"object {bad} is constant: a similarity needs some contrast")
    return X / sd


@torch.no_grad()
def ncc_compare(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    return (A @ B.T / A.shape[1]).clamp(-1.0, 1.0)


@torch.no_grad()
def ncc_pairs(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    return ((A * B).sum(1) / A.shape[1]).clamp(-1.0, 1.0)


@torch.no_grad()
def mean_diff_compare(A: torch.Tensor, B: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    rows = [1.0 - torch.cdist(A[i:i + chunk], B, p=1) / A.shape[1] for i in range(0, len(A), chunk)]
    return torch.cat(rows).clamp(-1.0, 1.0)


@torch.no_grad()
def mean_diff_pairs(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    return (1.0 - (A - B).abs().mean(1)).clamp(-1.0, 1.0)


def _soap_prepare(X):
    from affvae.affinity.soap import soap_descriptors

    X = _as_tensor(X)
    if X.dim() != 3:
        raise DataError("the soap metric is defined for 2D images here; use fsc, ncc or mean-diff for volumes")
    return torch.as_tensor(soap_descriptors(X.numpy()))


def _soap_compare(A, B, context=None):
    from affvae.affinity.soap import soap_kernel

    return torch.as_tensor(soap_kernel(A.numpy(), B.numpy(), reference=context))


def _soap_context(D):
    from affvae.affinity.soap import centring_reference

    return centring_reference(D.numpy())


METRICS: dict[str, Metric] = {
    "fsc": Metric("fsc", fsc_prepare, fsc_compare, aligned_compare=lambda a, b: fsc_compare(a, b, band=True),
                  aligned_pairs=lambda a, b: fsc_pairs(a, b, band=True)),
    "mean-diff": Metric("mean-diff", standardise, mean_diff_compare, aligned_compare=mean_diff_compare,
                        aligned_pairs=mean_diff_pairs),
    "ncc": Metric("ncc", standardise, ncc_compare, aligned_compare=ncc_compare, aligned_pairs=ncc_pairs),
    "soap": Metric("soap", _soap_prepare, _soap_compare, ndims=(2,), rotation_sensitive=False,
                   context=_soap_context),
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise AffinityError(f"unknown metric {name!r}: expected one of {', '.join(METRICS)}") from None


def similarity_matrix(X, Y=None, metric: str = "fsc") -> np.ndarray:
    """Similarities between every object of X and every object of Y (default X)."""
    m = get_metric(metric)
    X = _as_tensor(X)
    if X.dim() - 1 not in m.ndims:
        raise DataError(f"metric {metric!r} does not support {X.dim() - 1}D objects")
    fx = m.prepare(X)
    fy = fx if Y is None else m.prepare(Y)
    out = m.compare(fx, fy).numpy()
    if Y is None:
        out = (out + out.T) / 2
        np.fill_diagonal(out, 1.0)
    return out


def similarity(a, b, metric: str = "fsc") -> float:
    """The similarity of two single objects."""
    return float(similarity_matrix(np.asarray(a)[None], np.asarray(b)[None], metric)[0, 0])


# ------------------------------------------------------------- rotational alignment


def rotation_set(ndim: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rotations for the aligned mode, identity first.

    2D: ``n`` in-plane angles evenly spaced over 360 degrees.  3D: the identity
    followed by ``n - 1`` rotations drawn uniformly over SO(3) from a fixed seed, so
    the set (and the matrix) is reproducible.
    """
    from scipy.spatial.transform import Rotation

    from affvae.transforms.augment import angle_to_matrix

    if n < 1:
        raise AffinityError(f"rotation count {n}: expected at least 1")
    if ndim == 2:
        return angle_to_matrix(np.arange(n) * 360.0 / n)
    rest = Rotation.random(n - 1, random_state=seed).as_matrix() if n > 1 else np.zeros((0, 3, 3))
    return np.concatenate([np.eye(3)[None], rest.reshape(-1, 3, 3)])


def aligned_best(X, rotations: np.ndarray, metric: str = "fsc", Y=None,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Best similarity of each x with each y over ``rotations`` of y, not symmetrised.

    For every rotation the whole of Y (default X) is rotated as one batch and
    prepared once; the running maximum over rotations is kept.  The maximum over a
    union of rotation sets is the maximum of the parts, so blocks of rotations can
    be computed anywhere (:func:`affvae.affinity.matrix.compute_matrix` with Ray).
    """
    from affvae.transforms.augment import rotate

    m = get_metric(metric)
    X = _as_tensor(X)
    Yt = X if Y is None else _as_tensor(Y)
    fx = m.prepare(X)
    best = None
    for k, R in enumerate(np.asarray(rotations)):
        Yr = Yt if np.allclose(R, np.eye(R.shape[0])) else rotate(Yt.float(), R).double()
        s = m.compare(fx, m.prepare(Yr))
        best = s if best is None else torch.maximum(best, s)
        if progress:
            progress(k + 1)
    return best.numpy()


def symmetrise_aligned(best: np.ndarray) -> np.ndarray:
    """max(A, A^T) with ones on the diagonal: sim(x, R y) = sim(R^T x, y) holds only
    for a rotation set closed under inversion, so the two directions may differ."""
    out = np.maximum(best, best.T)
    np.fill_diagonal(out, 1.0)
    return out


def aligned_matrix(X, rotations: np.ndarray, metric: str = "fsc", Y=None,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Best similarity over a set of rotations of the second object (X vs X symmetrised)."""
    best = aligned_best(X, rotations, metric, Y, progress)
    return symmetrise_aligned(best) if Y is None else best
