"""Batched geometric and imaging transforms as torch tensor ops.

Everything here takes a whole batch, ``(N, H, W)`` for images or ``(N, D, H, W)`` for
volumes, and does one call into torch: no per-sample Python loops.  Arrays are
indexed ``[z, y, x]``; rotation matrices act on coordinate vectors ``(x, y, z)``.
Pose angles are degrees: one in-plane angle for 2D (counter-clockwise), and
intrinsic ZYZ Euler angles ``(rot, tilt, psi)`` for 3D, as in RELION.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from affvae.kernels import octahedral, planes


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
    or ``(N, 3, 3)`` (or one matrix for all).  Returns the same type as ``x``; outside
    the box is zero.  ``order``: "linear" (bi- or trilinear, one resampling), "nearest",
    or "planes": for volumes three bilinear resamplings of planes, one per angle of the
    rotation's ZYZ Euler decomposition (:func:`_rotate_planes`), several times faster on
    a CPU than one trilinear resampling, and as accurate as a trilinear resampling of a
    grid twice as fine for objects sharpened first by :func:`plane_prefilter`; for
    images the same as "linear".
    """
    t, was_numpy = _as_batch(x)
    nd = t.dim() - 1
    if nd not in (2, 3):
        raise ValueError(f"rotate expects (N,H,W) or (N,D,H,W), got shape {tuple(t.shape)}")
    if order not in ("linear", "nearest", "planes"):
        raise ValueError(f"rotate: order {order!r}: expected linear, nearest or planes")
    R = torch.as_tensor(np.asarray(matrices), dtype=t.dtype, device=t.device)
    if R.dim() == 2:
        R = R.expand(t.shape[0], nd, nd)
    if nd == 3 and order == "planes":
        out = _rotate_planes(t, R)
    else:
        # affine_grid maps output coordinates to input coordinates: the inverse rotation.
        theta = torch.cat([R.transpose(1, 2), R.new_zeros(R.shape[0], nd, 1)], dim=2)
        grid = F.affine_grid(theta, (t.shape[0], 1, *t.shape[1:]), align_corners=False)
        out = F.grid_sample(t.unsqueeze(1), grid, mode="nearest" if order == "nearest" else "bilinear",
                            padding_mode="zeros", align_corners=False).squeeze(1)
    return out.numpy() if was_numpy else out


def _rotate_planes(v: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Volumes ``(N, D, H, W)`` rotated by ``R`` ``(N, 3, 3)`` as three batched 2D rotations.

    R = Rz(a) Ry(b) Rz(c) (ZYZ Euler angles), so the volume turns by c about z (every
    z slice rotated in its (x, y) plane), then by b about y (every y slice in its (z, x)
    plane), then by a about z.  Each step is one bilinear ``grid_sample`` over the
    batch with the slices as channels, sharing one sampling grid per item: 2D kernels,
    which are vectorised on CPUs where the 3D one is not.  The y step samples a
    transposed view of its input and gives one back, with no copies (``grid_sample``
    reads strided slices as fast as contiguous ones: 55 against 70 ms for 32 volumes
    of 64^3 with the two transposing copies, alternated).
    """
    with warnings.catch_warnings():  # at tilt 0 or 180 only a + c is defined, which suffices
        warnings.simplefilter("ignore", UserWarning)
        angles = Rotation.from_matrix(R.detach().cpu().double().numpy()).as_euler("ZYZ")
    a, b, c = torch.as_tensor(angles, dtype=v.dtype, device=v.device).unbind(1)
    v = _rotate_slices(v, c, about="z")
    v = _rotate_slices(v, b, about="y")
    return _rotate_slices(v, a, about="z")


def _rotate_slices(v: torch.Tensor, angle: torch.Tensor, about: str) -> torch.Tensor:
    """Turn ``(N, D, H, W)`` volumes by ``angle`` (N,) radians about the z or y axis.

    On a CPU, by the compiled kernel of :func:`affvae.kernels.planes` where it builds
    (the same sampling, to float rounding), else by ``grid_sample``.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    if v.device.type == "cpu" and v.dtype == torch.float32 and not v.requires_grad:
        ext = planes()
        if ext is not None:
            return ext.rotate_slices(v.contiguous(), cos.contiguous(), sin.contiguous(), about == "y")
    theta = v.new_zeros(len(v), 2, 3)
    # output (x, y) -> input R^T (x, y) in each z slice; output (x, z) -> input in each y slice
    s = sin if about == "z" else -sin
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, s, -s, cos
    u = v if about == "z" else v.transpose(1, 2)  # the slices as channels (a view)
    grid = F.affine_grid(theta, (len(v), 1, u.shape[2], u.shape[3]), align_corners=False)
    out = F.grid_sample(u, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out if about == "z" else out.transpose(1, 2)


def plane_prefilter(x, interpolations: float = 2.0, max_gain: float = 3.0):
    """Sharpen ``(N, D, H, W)`` volumes so that rotating them by planes does not blur them.

    A linear interpolation at a random offset t attenuates frequency w (radians per
    voxel) on average by G(w) = E_t[((1 - t) + t e^{iw}) e^{-iwt}]; the three plane
    rotations of :func:`rotate` interpolate each axis ``interpolations`` times on
    average (x three times, y twice, z once).  Dividing each object's spectrum by
    that attenuation along each axis (at most ``max_gain``) undoes the blur in the
    mean: rotated, a prefiltered template correlates with the exact rendering at
    0.99 and above (tested), where the plain one falls to 0.985.
    """
    t, was_numpy = _as_batch(x)
    if t.dim() != 4:
        raise ValueError(f"plane_prefilter expects volumes (N, D, H, W), got shape {tuple(t.shape)}")
    offsets = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
    gains = []
    for n in t.shape[1:]:
        w = 2 * np.pi * torch.fft.fftfreq(n, dtype=torch.float64)
        g = ((1 - offsets[:, None]) + offsets[:, None] * torch.exp(1j * w[None])) * torch.exp(-1j * w[None] * offsets[:, None])
        gains.append(g.real.mean(0) ** interpolations)
    g3 = gains[0][:, None, None] * gains[1][None, :, None] * gains[2][None, None, :]
    boost = (1 / g3.clamp_min(1e-6)).clamp_max(max_gain).to(t.device)
    boost = boost.to(t.dtype)
    out = torch.fft.ifftn(torch.fft.fftn(t, dim=(1, 2, 3)) * boost, dim=(1, 2, 3)).real
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


def _octahedral_ops() -> list[tuple[tuple[int, int, int], tuple[int, ...]]]:
    """The 24 proper rotations of a cube (scipy's octahedral group) as (axis permutation, flipped axes).

    Each rotation of the group is a signed permutation matrix M, row i holding
    ``sign_i`` in column ``perm_i``: applying it to a volume is a permutation of
    its axes and a flip of some of them, exact and free.  They are listed by
    (permutation, signs) in lexicographic order, so the symmetry an index names
    never changes.
    """
    from scipy.spatial.transform import Rotation

    ops = []
    for m in np.rint(Rotation.create_group("O").as_matrix()).astype(int):
        perm = tuple(int(k) for k in np.abs(m).argmax(1))
        signs = tuple(int(m[i, p]) for i, p in enumerate(perm))
        ops.append((perm, tuple(s < 0 for s in signs)))
    ops.sort()
    return [(perm, tuple(i for i, neg in enumerate(flips) if neg)) for perm, flips in ops]


OCTAHEDRAL = _octahedral_ops()
#: the same as tables: row k the axis permutation and the flipped axes of symmetry k
_OCTAHEDRAL_PERMS = torch.tensor([perm for perm, _ in OCTAHEDRAL], dtype=torch.long)
_OCTAHEDRAL_FLIPS = torch.tensor([[i in flips for i in range(3)] for _, flips in OCTAHEDRAL], dtype=torch.bool)


def octahedral_augment(augment: str, ndim: int) -> bool:
    """Whether ``data.augment`` rotates ``ndim``-D training items by random cube symmetries.

    "octahedral" always (it is refused for 2D items before training starts), "auto"
    for 3D volumes and never for 2D images, so that one config serves folders of
    either kind, "none" never.
    """
    return augment == "octahedral" or (augment == "auto" and ndim == 3)


def random_octahedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each volume of ``(N, D, H, W)`` or ``(N, 1, D, H, W)`` by a random cube symmetry.

    Exact (a permutation of voxels, no interpolation) and distribution-preserving for
    data whose orientations are uniform over SO(3) or on a 90-degree-compatible grid,
    so it multiplies the distinct training views by up to 24 at almost no cost.
    Mirror images are never produced, so chiral shapes keep their hand.  Cubes of one
    channel on a CPU in float32 go through :func:`affvae.kernels.octahedral` in one pass
    where it builds; otherwise one permute/flip per symmetry present in the batch.
    """
    lead = x.dim() - 3
    choice = torch.randint(0, len(OCTAHEDRAL), (x.shape[0],), generator=generator)
    one_pass = (x.device.type == "cpu" and x.dtype == torch.float32 and len(set(x.shape[-3:])) == 1
                and x.shape[1:lead].numel() == 1)
    if one_pass and (ext := octahedral()) is not None:
        # every item in one pass (32 x 32^3: 0.3 against 1.3 ms; 25 x 64^3: 2.7 against 7.2)
        return ext.octahedral(x.reshape(-1, *x.shape[-3:]).contiguous(), _OCTAHEDRAL_PERMS[choice],
                              _OCTAHEDRAL_FLIPS[choice]).view(x.shape)
    out = torch.empty_like(x)
    for k in choice.unique().tolist():
        idx = (choice == k).nonzero().squeeze(1)
        perm, flips = OCTAHEDRAL[k]
        v = x.index_select(0, idx).permute(*range(lead), *(lead + p for p in perm))
        if flips:
            v = v.flip([lead + f for f in flips])
        out.index_copy_(0, idx, v)
    return out


def row_var_mean(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row population variance and mean of a (N, V) tensor.

    Two reductions that read the rows in place, mean and sum of squares, with var =
    E[x^2] - mean^2: 1.7 against 4.5 ms for 32 rows of 64^3 by the centred two-pass
    form, whose temporary costs more than its arithmetic (``torch.var_mean`` takes
    30 ms).  The shortcut loses about 2e-6 x E[x^2] / var of the variance in float32,
    so rows whose mean is large beside their spread (E[x^2] > 30 var) are redone
    centred, to about 1e-6 whatever the offset.  On a GPU, where a batch-sized
    temporary is cheap and finding those rows would wait for the device, every row is
    computed centred.
    """
    n = flat.shape[1]
    mean = flat.mean(1)
    if flat.device.type != "cpu":  # the centred form without the rows' check, which would sync the host
        return torch.linalg.vector_norm(flat - mean[:, None], dim=1).square_().div_(n), mean
    square = torch.linalg.vector_norm(flat, dim=1).square_().div_(n)
    var = square - mean * mean
    far = (square > 30 * var).nonzero().squeeze(1)
    if len(far):
        centred = flat.index_select(0, far) - mean[far, None]
        var[far] = torch.linalg.vector_norm(centred, dim=1).square_().div_(n)
    return var.clamp_min_(0.0), mean


def add_noise(x: torch.Tensor, snr: float, generator: torch.Generator | None = None,
              noise: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
    """Add white Gaussian noise at a signal-to-noise ratio (variance ratio) per item.

    The noise variance of each item is its own signal variance divided by ``snr``, as
    in cryo-ET simulation studies: SNR 1 means noise as strong as the signal.
    ``noise`` (standard normal, the shape of ``x``) is drawn from ``generator`` if
    not given.  ``inplace`` adds it to ``x`` itself (no new batch-sized tensor).
    """
    if snr <= 0:
        raise ValueError(f"snr {snr}: expected a positive ratio")
    var = row_var_mean(x.reshape(len(x), -1))[0].clamp_min(1e-12)
    shape = (-1,) + (1,) * (x.dim() - 1)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    scale = (var / snr).sqrt().view(shape)
    return x.addcmul_(noise, scale) if inplace else torch.addcmul(x, noise, scale)


def wedge_mask(size: int, tilt_max: float = 60.0, axis: str = "y") -> torch.Tensor:
    """Boolean rfft mask (size, size, size//2+1) of the Fourier coefficients a tilt series measures.

    A single-axis tilt series from -tilt_max to +tilt_max about ``axis`` (y by default)
    samples the central planes within tilt_max of the beam (z) direction; the
    missing wedge is the rest, around the z axis of Fourier space in the plane
    normal to the tilt axis.  Arrays are indexed [z, y, x].
    """
    fz = torch.fft.fftfreq(size)
    fy = torch.fft.fftfreq(size)
    fx = torch.fft.rfftfreq(size)
    kz, ky, kx = torch.meshgrid(fz, fy, fx, indexing="ij")
    other = kx if axis == "y" else ky
    # a coefficient is measured when its angle from the kx (or ky) axis in the
    # plane normal to the tilt axis is at most tilt_max: |kz| <= tan(tilt) |k_other|
    measured = kz.abs() <= torch.tan(torch.deg2rad(torch.tensor(tilt_max))) * other.abs() + 1e-9
    measured[0, :, 0] = True  # keep the tilt axis line (and the mean)
    return measured


def wedge_transfer(shape: tuple[int, ...], tilt_max: float = 60.0, axis: str = "y") -> torch.Tensor:
    """:func:`wedge_mask` for items of ``shape``, which must be cubic volumes."""
    if len(shape) != 3:
        raise ValueError(f"a missing wedge needs volumes (N, D, H, W), got items of shape {tuple(shape)}")
    if len(set(shape)) != 1:
        raise ValueError(f"a missing wedge needs cubic volumes, got {tuple(shape)}")
    return wedge_mask(shape[-1], tilt_max, axis)


def missing_wedge(x: torch.Tensor, tilt_max: float = 60.0, axis: str = "y") -> torch.Tensor:
    """Remove the Fourier coefficients a +-tilt_max tilt series does not measure (batched FFT)."""
    return fourier_filter(x, wedge_transfer(tuple(x.shape[1:]), tilt_max, axis))


def fourier_filter(x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Multiply each item's spectrum by ``transfer`` (on the rfft grid of one item): one
    batched FFT there and back, so linear effects applied together (a CTF and a wedge,
    as their product) cost one pair of transforms.

    A real transfer that is even (T(k) = T(-k): a CTF, a missing wedge) filters two
    real items at once: item a + i item b through one complex FFT pair, whose real and
    imaginary parts are then the two filtered items.  On a CPU, whose complex-to-real
    transform is the slow one, 32 items of 64^3 take 16-19 against 22-25 ms (a whole
    stream batch of proteins 90 against 95 ms, alternated).  Any other transfer takes
    the real FFT pair.
    """
    dims = tuple(range(1, x.dim()))
    full = None if x.is_complex() else _even_full_transfer(transfer, tuple(x.shape[1:]), x.device)
    if full is None:
        return _real_fft_filter(x, transfer)
    n, m = len(x), len(x) - len(x) % 2
    out = torch.empty_like(x)
    if m:
        z = torch.complex(x[0:m:2], x[1:m:2])
        torch.fft.fftn(z, dim=dims, out=z)  # in place: 16 against 19 ms out of place, 32 items of 64^3
        torch.fft.ifftn(z.mul_(full), dim=dims, out=z)
        parts = torch.view_as_real(z)
        out[0:m:2], out[1:m:2] = parts[..., 0], parts[..., 1]
    if m < n:  # an odd item out
        out[m:] = _real_fft_filter(x[m:], transfer)
    return out


def _real_fft_filter(x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """The general path: a real FFT of each item, the product, and the inverse."""
    dims = tuple(range(1, x.dim()))
    spectrum = torch.fft.rfftn(x, dim=dims)
    spectrum.mul_(transfer.to(device=x.device, dtype=torch.float32))
    return torch.fft.irfftn(spectrum, s=x.shape[1:], dim=dims).to(x.dtype)


#: full-grid forms of the last few even transfers (a wedge and a CTF are made again for every batch)
_FULL_TRANSFERS: dict = {}


def _even_full_transfer(transfer: torch.Tensor, shape: tuple[int, ...],
                        device: torch.device | None = None) -> torch.Tensor | None:
    """``transfer`` on the full FFT grid of items of ``shape`` (on ``device``) if it is real
    and even, else None."""
    if transfer.is_complex() or tuple(transfer.shape) != shape[:-1] + (shape[-1] // 2 + 1,):
        return None
    t = transfer.to(torch.float32)
    device = torch.device(device) if device is not None else t.device
    key = (shape, str(device), t.cpu().numpy().tobytes())
    if key not in _FULL_TRANSFERS:
        if len(_FULL_TRANSFERS) >= 8:
            _FULL_TRANSFERS.pop(next(iter(_FULL_TRANSFERS)))
        _FULL_TRANSFERS[key] = _mirror_full(t.to(device), shape)
    return _FULL_TRANSFERS[key]


def _mirror_full(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The rfft-grid ``t`` extended to the full grid by T(k) = T(-k); None where ``t`` is not even."""
    flip = [(-torch.arange(m, device=t.device)) % m for m in shape]  # index of -k on each axis
    neg = t[..., flip[-1][t.shape[-1]:]]  # the last axis's negative frequencies at -k of the others
    for d in range(t.dim() - 1):
        neg = neg.index_select(d, flip[d])
    full = torch.cat([t, neg], -1)
    mirrored = full
    for d, f in enumerate(flip):
        mirrored = mirrored.index_select(d, f)
    return full if torch.equal(full, mirrored) else None


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å at an accelerating voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643 / np.sqrt(v * (1 + 0.978466e-6 * v))


def ctf_radial(k: np.ndarray | torch.Tensor, defocus_um: float, voltage_kv: float = 300.0,
               cs_mm: float = 2.7, amplitude_contrast: float = 0.07):
    """The contrast transfer function at spatial frequencies ``k`` (1/Å), no envelope.

    ``defocus_um`` > 0 is underfocus.  CTF = -(sqrt(1 - A^2) sin chi + A cos chi) with
    chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4.
    """
    lam = electron_wavelength(voltage_kv)
    dz = defocus_um * 1e4
    cs = cs_mm * 1e7
    k2 = k * k
    chi = np.pi * lam * dz * k2 - 0.5 * np.pi * cs * lam ** 3 * k2 * k2
    a = amplitude_contrast
    sin, cos = (torch.sin, torch.cos) if isinstance(k, torch.Tensor) else (np.sin, np.cos)
    return -(np.sqrt(1 - a * a) * sin(chi) + a * cos(chi))


@functools.lru_cache(maxsize=8)
def ctf_transfer(shape: tuple[int, ...], voxel_size: float, defocus_um: float, voltage_kv: float = 300.0,
                 cs_mm: float = 2.7, amplitude_contrast: float = 0.07) -> torch.Tensor:
    """The isotropic CTF on the rfft grid of one item of ``shape`` (float32).

    Cached (7 ms to build at 64^3, and every batch of a dataset uses the same one): the
    tensor is shared, so callers multiply by it and never modify it."""
    freqs = [torch.fft.fftfreq(n, d=voxel_size, dtype=torch.float64) for n in shape[:-1]]
    freqs.append(torch.fft.rfftfreq(shape[-1], d=voxel_size, dtype=torch.float64))
    mesh = torch.meshgrid(*freqs, indexing="ij")
    k = torch.sqrt(sum(m * m for m in mesh))
    return ctf_radial(k, defocus_um, voltage_kv, cs_mm, amplitude_contrast).to(torch.float32)


def apply_ctf(x: torch.Tensor, voxel_size: float, defocus_um: float, voltage_kv: float = 300.0,
              cs_mm: float = 2.7, amplitude_contrast: float = 0.07) -> torch.Tensor:
    """Multiply each volume's (or image's) Fourier transform by the isotropic CTF (batched FFT)."""
    if x.dim() - 1 not in (2, 3):
        raise ValueError(f"apply_ctf expects (N,H,W) or (N,D,H,W), got shape {tuple(x.shape)}")
    return fourier_filter(x, ctf_transfer(tuple(x.shape[1:]), voxel_size, defocus_um, voltage_kv,
                                          cs_mm, amplitude_contrast))
