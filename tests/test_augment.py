import numpy as np
import pytest
import torch

from affvae.transforms.augment import (
    OCTAHEDRAL,
    angle_to_matrix,
    euler_to_matrix,
    missing_wedge,
    random_octahedral,
    resize_to_box,
    rotate,
)


def test_rotate_moves_a_point_as_the_matrix_says():
    img = np.zeros((1, 9, 9), np.float32)
    img[0, 4, 6] = 1  # x = +2, y = 0 from the centre
    out = rotate(img, angle_to_matrix([90.0]))
    assert np.argwhere(out[0] > 0.5).tolist() == [[6, 4]]  # now y = +2
    vol = np.zeros((1, 9, 9, 9), np.float32)
    vol[0, 4, 4, 6] = 1
    out = rotate(vol, euler_to_matrix([[90.0, 0.0, 0.0]]))  # about z
    assert np.argwhere(out[0] > 0.5).tolist() == [[4, 6, 4]]


def test_rotation_by_planes_moves_points_as_the_matrix_says():
    # three plane rotations (ZYZ) put a point where the one-pass rotation puts it, for
    # poses with every Euler angle non-zero, and a smooth volume agrees with it closely
    from affvae.transforms.poses import item_poses

    vol = np.zeros((3, 17, 17, 17), np.float32)
    vol[:, 8, 8, 13] = 1  # x = +5 from the centre
    R = euler_to_matrix([[90.0, 90.0, 0.0], [0.0, 90.0, 90.0], [30.0, 50.0, 70.0]])
    planes, linear = rotate(vol, R, order="planes"), rotate(vol, R, order="linear")
    idx = np.indices((17, 17, 17)).reshape(3, -1)
    for c, lin, m in zip(planes, linear, R):
        want = (m @ [5.0, 0, 0])[::-1] + 8  # (x, y, z) -> [z, y, x]
        for v in (c, lin):
            w = v.clip(0).ravel()
            assert np.allclose(idx @ w / w.sum(), want, atol=0.3)
    z, y, x = np.mgrid[:24, :24, :24] - 11.5
    blob = np.exp(-((x - 4) ** 2 + (y + 2) ** 2 / 4 + z ** 2 / 9) / 8).astype(np.float32)[None].repeat(4, 0)
    R = euler_to_matrix(item_poses(3, np.arange(4), 3))
    a, b = rotate(blob, R, order="planes"), rotate(blob, R, order="linear")
    assert all(np.corrcoef(u.ravel(), v.ravel())[0, 1] > 0.999 for u, v in zip(a, b))
    assert np.allclose(rotate(blob, np.eye(3), order="planes"), blob, atol=1e-5)


def test_the_plane_prefilter_undoes_the_blur_of_rotating_by_planes():
    # a sharp-edged box turned by planes and back comes back closer to itself when
    # prefiltered (measured: mean |error| 0.0105 against 0.0143), and keeps its total
    from affvae.transforms.augment import plane_prefilter

    cube = np.zeros((2, 24, 24, 24), np.float32)
    cube[:, 8:16, 9:15, 7:17] = 1
    R = euler_to_matrix([[20.0, 35.0, 50.0], [70.0, 80.0, 10.0]])
    back = np.linalg.inv(R)

    def there_and_back(v):
        return rotate(rotate(v, R, order="planes"), back, order="planes")

    def err(v):
        return float(np.abs(v - cube).mean())

    sharp = plane_prefilter(cube)
    assert np.allclose(sharp.sum((1, 2, 3)), cube.sum((1, 2, 3)), rtol=1e-4)
    assert err(there_and_back(sharp)) < 0.8 * err(there_and_back(cube))


def test_rotation_is_batched_per_item():
    img = np.zeros((2, 9, 9), np.float32)
    img[:, 4, 6] = 1
    out = rotate(img, angle_to_matrix([0.0, 180.0]))
    assert np.argwhere(out[0] > 0.5).tolist() == [[4, 6]]
    assert np.argwhere(out[1] > 0.5).tolist() == [[4, 2]]


def test_resize_to_box_shape_and_mean():
    x = np.random.default_rng(0).random((3, 64, 64, 48)).astype(np.float32)
    y = resize_to_box(x, 32)
    assert y.shape == (3, 32, 32, 32)
    assert np.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.02)


def test_octahedral_group_is_the_24_proper_rotations():
    assert len(OCTAHEDRAL) == 24
    v = torch.rand(1, 5, 6, 7)[:, :5, :5, :5].contiguous()  # asymmetric content
    views = {random_octahedral(v, torch.Generator().manual_seed(s)).numpy().tobytes() for s in range(400)}
    assert len(views) == 24
    mirror = v.flip(-1)
    mirrored = {random_octahedral(mirror, torch.Generator().manual_seed(s)).numpy().tobytes() for s in range(400)}
    assert not views & mirrored  # never a mirror image: chirality is kept


def test_octahedral_keeps_contents_and_is_reproducible():
    x = torch.rand(16, 1, 6, 6, 6)
    a = random_octahedral(x, torch.Generator().manual_seed(3))
    b = random_octahedral(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum((1, 2, 3, 4)), x.sum((1, 2, 3, 4)))
    assert torch.equal(a.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_ctf_has_its_first_zero_where_the_formula_says_and_acts_on_a_batch():
    import numpy as np
    import torch

    from affvae.transforms.augment import apply_ctf, ctf_radial, electron_wavelength

    lam = electron_wavelength(300.0)
    assert abs(lam - 0.01969) < 1e-4  # 300 kV electrons: 0.0197 Å
    k = np.linspace(1e-4, 0.1, 20001)
    c = ctf_radial(k, defocus_um=3.0, amplitude_contrast=0.0, cs_mm=0.0)
    first_zero = k[np.argmax(np.sign(c[1:]) != np.sign(c[:-1]))]
    assert abs(first_zero - 1 / np.sqrt(lam * 3e4)) < 1e-4  # chi = pi: k = 1/sqrt(lambda dz)
    x = torch.randn(3, 16, 16, 16)
    y = apply_ctf(x, voxel_size=5.0, defocus_um=2.0)
    assert y.shape == x.shape and not torch.allclose(x, y)
    assert torch.allclose(apply_ctf(x[1:2], 5.0, 2.0), y[1:2], atol=1e-5)  # per item, batch-independent


@pytest.mark.parametrize("axis", ["y", "x"])
def test_missing_wedge_removes_the_coefficients_outside_the_tilt_range(axis):
    torch.manual_seed(4)
    n, tilt = 12, 60.0
    x = torch.randn(3, n, n, n, dtype=torch.float64)
    # the wedge written directly in 3D: coefficient (kz, ky, kx) measured when
    # |kz| <= tan(tilt) |k normal to z and to the tilt axis|
    kz, ky, kx = torch.meshgrid(torch.fft.fftfreq(n), torch.fft.fftfreq(n), torch.fft.fftfreq(n), indexing="ij")
    other = kx if axis == "y" else ky
    measured = kz.abs() <= np.tan(np.radians(tilt)) * other.abs() + 1e-9
    want = torch.fft.ifftn(torch.fft.fftn(x, dim=(1, 2, 3)) * measured, dim=(1, 2, 3)).real
    got = missing_wedge(x, tilt, axis)
    assert got.dtype == x.dtype and torch.allclose(got, want, atol=1e-12)
    assert 0.2 < float((want - x).square().sum() / x.square().sum()) < 0.6  # a wedge removed
    assert torch.allclose(missing_wedge(got, tilt, axis), got, atol=1e-12)  # a projection


@pytest.mark.parametrize("n_items, shape", [(6, (12, 12, 12)), (5, (11, 12, 13)), (3, (10, 9)), (1, (8, 8, 8))])
def test_fourier_filter_in_item_pairs_equals_one_real_fft_per_item(n_items, shape):
    from affvae.transforms.augment import (
        _even_full_transfer,
        _real_fft_filter,
        ctf_transfer,
        fourier_filter,
    )

    torch.manual_seed(1)
    x = torch.randn(n_items, *shape)
    even = ctf_transfer(shape, 4.0, 2.0)
    assert _even_full_transfer(even, shape) is not None  # the paired path runs
    got = fourier_filter(x, even)
    assert torch.allclose(got, _real_fft_filter(x, even), atol=2e-6)
    # one item at a time, so neither a partner item nor the odd one out leaks into another
    alone = torch.cat([fourier_filter(x[i:i + 1], even) for i in range(n_items)])
    assert torch.allclose(got, alone, atol=2e-6)
    # a transfer that is not even (T(k) != T(-k)) takes the real FFT path, and still agrees
    odd = torch.rand(even.shape)
    assert _even_full_transfer(odd, shape) is None
    assert torch.equal(fourier_filter(x, odd), _real_fft_filter(x, odd))


def test_fourier_filter_keeps_float64_and_matches_a_full_complex_filter():
    from affvae.transforms.augment import _even_full_transfer, wedge_transfer

    torch.manual_seed(2)
    x = torch.randn(5, 10, 10, 10, dtype=torch.float64)
    half = wedge_transfer((10, 10, 10), 50.0)
    full = _even_full_transfer(half, (10, 10, 10))
    assert full.shape == (10, 10, 10) and torch.equal(full[..., :6], half.float())
    want = torch.fft.ifftn(torch.fft.fftn(x, dim=(1, 2, 3)) * full, dim=(1, 2, 3)).real
    got = missing_wedge(x, 50.0)
    assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-12)


def test_row_variance_is_exact_near_zero_and_far_from_it():
    from affvae.transforms.augment import row_var_mean

    torch.manual_seed(0)
    rows = torch.randn(5, 40_000) * torch.tensor([[1.0], [3.0], [0.01], [2.0], [5.0]])
    rows += torch.tensor([[0.0], [1.0], [4.0], [1e4], [-300.0]])  # the last three far from zero
    var, mean = row_var_mean(rows)
    want = rows.double().var(1, unbiased=False)
    assert torch.allclose(mean.double(), rows.double().mean(1), rtol=1e-6)
    assert torch.allclose(var.double(), want, rtol=1e-4), (var, want)
    assert float(row_var_mean(torch.full((1, 10), 7.0))[0]) == 0.0  # a constant row: 0, not below


def test_noise_is_added_in_place_when_asked_at_the_signal_to_noise_ratio():
    from affvae.transforms.augment import add_noise

    torch.manual_seed(1)
    x, noise = torch.randn(3, 8, 8, 8) * 2, torch.randn(3, 8, 8, 8)
    new = add_noise(x, 4.0, noise=noise)
    assert not torch.equal(new, x)
    # noise sd = signal sd / sqrt(snr), per item
    sd = x.flatten(1).var(1, unbiased=False).div(4.0).sqrt()
    assert torch.allclose((new - x).flatten(1).std(1) / noise.flatten(1).std(1), sd, rtol=1e-4)
    same = add_noise(x, 4.0, noise=noise, inplace=True)
    assert same is x and torch.allclose(same, new, atol=1e-6)
