import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import affvae.kernels as kernels
from affvae.deconv import ConvTranspose2x, _direct_kernels


@pytest.fixture(scope="module")
def compiler():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the callers use their pure-torch paths")


@pytest.fixture(scope="module")
def ext(compiler):
    module = kernels.stride2()
    assert module is not None, "a C++ compiler is here, so the kernels must build"
    return module


def _rel_error(a, b):
    """The largest |a - b| over the largest |b| (float32 rounding gives about 1e-7)."""
    assert a.shape == b.shape, f"shape {tuple(a.shape)} against {tuple(b.shape)}"
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("B, cs, cb, n", [(3, 3, 1, 16), (2, 2, 3, 32), (1, 5, 2, 16)])
def test_up_is_the_transposed_convolution(ext, B, cs, cb, n):
    torch.manual_seed(0)
    x, w, b = torch.randn(B, cs, n, n, n), torch.randn(cs, cb, 4, 4, 4), torch.randn(cb)
    assert _rel_error(ext.up(x, w, b), F.conv_transpose3d(x, w, b, stride=2, padding=1)) <= 1e-5
    assert _rel_error(ext.up(x, w, None), F.conv_transpose3d(x, w, None, stride=2, padding=1)) <= 1e-5


@pytest.mark.parametrize("B, cs, cb, n", [(3, 3, 1, 16), (2, 2, 3, 32), (1, 5, 2, 16)])
def test_down_is_the_strided_convolution_and_the_weight_gradient(ext, B, cs, cb, n):
    torch.manual_seed(1)
    small, w, b = torch.randn(B, cs, n, n, n), torch.randn(cs, cb, 4, 4, 4), torch.randn(cs)
    big = torch.randn(B, cb, 2 * n, 2 * n, 2 * n)
    gw_ref = torch.ops.aten.convolution_backward(big, small, w, None, [2] * 3, [1] * 3, [1] * 3, True,
                                                 [0] * 3, 1, [False, True, False])[1]
    out, gw = ext.down(big, w, b, True, small)
    assert _rel_error(out, F.conv3d(big, w, b, stride=2, padding=1)) <= 1e-5
    assert _rel_error(gw, gw_ref) <= 1e-5
    out_only, none = ext.down(big, w, None, True, None)
    assert _rel_error(out_only, F.conv3d(big, w, None, stride=2, padding=1)) <= 1e-5
    assert none is None
    _, gw_only = ext.down(big, w, None, False, small)
    assert _rel_error(gw_only, gw_ref) <= 1e-5


def test_a_kernel_3_convolution_is_the_kernel_4_one_with_tap_3_zero(ext):
    torch.manual_seed(2)
    big, w3 = torch.randn(2, 1, 32, 32, 32), torch.randn(3, 1, 3, 3, 3)
    out, _ = ext.down(big, F.pad(w3, (0, 1, 0, 1, 0, 1)), None, True, None)
    assert _rel_error(out, F.conv3d(big, w3, None, stride=2, padding=1)) <= 1e-5


def test_the_decoder_layer_on_the_kernels_equals_the_native_layer(ext):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32, 32)
    assert _direct_kernels(x, 1) is ext
    fast, ref = ConvTranspose2x(3, 3, 1), nn.ConvTranspose3d(3, 1, 4, 2, 1)
    with torch.no_grad():
        ref.weight.copy_(fast.weight)
        ref.bias.copy_(fast.bias)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, yr = fast(xf), ref(xr)
    assert _rel_error(yf, yr) <= 1e-5
    g = torch.randn_like(yr)
    for a, b in zip(torch.autograd.grad(yf, [xf, fast.weight, fast.bias], g),
                    torch.autograd.grad(yr, [xr, ref.weight, ref.bias], g)):
        assert _rel_error(a, b) <= 1e-4  # the weight gradient sums 200,000 products in another order


@pytest.mark.parametrize("shape, cout, dtype", [((2, 3, 32, 32, 32), 2, torch.float32),  # 2 channels out
                                                ((2, 3, 16, 16, 16), 1, torch.float32),  # too small to pay
                                                ((2, 3, 32, 32, 24), 1, torch.float32),  # a side not of 16s
                                                ((2, 3, 32, 32, 32), 1, torch.float64)])
def test_layers_the_kernels_do_not_pay_for_keep_the_torch_path(shape, cout, dtype):
    assert _direct_kernels(torch.zeros(shape, dtype=dtype), cout) is None


def test_bad_input_is_refused_with_what_was_expected(ext):
    x, w = torch.randn(1, 3, 16, 16, 16), torch.randn(3, 1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):
        ext.up(x.double(), w.double(), None)
    with pytest.raises(RuntimeError, match="contiguous float32 CPU tensor"):
        ext.up(x.transpose(2, 4), w, None)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        ext.up(torch.randn(1, 3, 12, 12, 12), w, None)


def test_the_noise_kernel_makes_the_numbers_of_the_torch_path(compiler):
    from affvae.transforms.poses import item_normals_torch

    ext = kernels.normals()
    assert ext is not None
    seeds = np.array([0, 5, 2**40 + 17, -3])
    for n in (0, 1, 1023, 1025, 64**3):
        got = ext.item_normals(torch.as_tensor(seeds), n)
        want = item_normals_torch(seeds, n)
        assert got.shape == want.shape == (4, n) and got.dtype == torch.float32
        if n:
            assert (got - want).abs().max().item() < 5e-6
    with pytest.raises(RuntimeError, match="contiguous int64 vector"):
        ext.item_normals(torch.zeros(3, dtype=torch.int32), 10)


@pytest.mark.parametrize("shape", [(3, 20, 24, 28), (2, 16, 32, 64)])  # 28: a block of 16 pixels cut short
@pytest.mark.parametrize("about", ["z", "y"])
def test_the_plane_kernel_samples_as_grid_sample(compiler, monkeypatch, shape, about):
    import affvae.transforms.augment as augment

    ext = kernels.planes()
    assert ext is not None
    torch.manual_seed(4)
    v, angle = torch.rand(shape), torch.rand(shape[0]) * 6.2 - 3.1
    got = ext.rotate_slices(v, torch.cos(angle), torch.sin(angle), about == "y")
    monkeypatch.setattr(augment, "planes", lambda: None)  # the grid_sample path
    want = augment._rotate_slices(v, angle, about)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5
    assert (want.abs() > 0.1).float().mean() > 0.3  # a rotated volume, not an empty one
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ext.rotate_slices(v.transpose(1, 2), torch.cos(angle), torch.sin(angle), False)
    with pytest.raises(RuntimeError, match="one float32 cosine and sine per volume"):
        ext.rotate_slices(v, torch.cos(angle)[:1], torch.sin(angle), False)


@pytest.mark.parametrize("shape", [(7, 12, 12, 12), (5, 1, 16, 16, 16)])
def test_the_cube_symmetry_kernel_turns_as_permute_and_flip(compiler, monkeypatch, shape):
    import affvae.transforms.augment as augment

    assert kernels.octahedral() is not None
    x = torch.rand(shape)
    got = augment.random_octahedral(x, torch.Generator().manual_seed(9))
    monkeypatch.setattr(augment, "octahedral", lambda: None)  # the permute and flip path
    want = augment.random_octahedral(x, torch.Generator().manual_seed(9))
    assert torch.equal(got, want) and not torch.equal(got, x)
    ext = kernels.octahedral()
    with pytest.raises(RuntimeError, match="not a permutation"):
        ext.octahedral(x.reshape(-1, *shape[-3:]), torch.zeros(len(x), 3, dtype=torch.long),
                       torch.zeros(len(x), 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="cubes"):
        ext.octahedral(torch.rand(2, 4, 4, 6), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))


def test_switched_off_or_unbuildable_kernels_fall_back_to_torch(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("AFFVAE_CPU_KERNELS", "0")
    assert kernels.stride2() is None and not kernels.enabled()
    # a cache that cannot be a folder: the build fails, with a warning naming why
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("AFFVAE_CPU_KERNELS", "1")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AFFVAE_KERNEL_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="CPU kernels not built"):
        assert kernels.stride2() is None
    with pytest.warns(UserWarning, match="normals uses its pure-torch path"):
        assert kernels.normals() is None
    with pytest.warns(UserWarning, match="planes uses its pure-torch path"):
        assert kernels.planes() is None
    with pytest.warns(UserWarning, match="octahedral uses its pure-torch path"):
        assert kernels.octahedral() is None
    layer = ConvTranspose2x(3, 3, 1)
    x = torch.randn(1, 3, 32, 32, 32)
    assert _rel_error(layer(x), F.conv_transpose3d(x, layer.weight, layer.bias, stride=2, padding=1)) <= 1e-5


def test_the_build_name_follows_the_source_and_the_cpu(monkeypatch):
    name = kernels.build_name()
    assert name.startswith("affvae_stride2_") and name.isidentifier()
    assert kernels.build_name("normals").startswith("affvae_normals_")
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: "another cpu")
    assert kernels.build_name() != name
