import pytest
import torch
import torch.nn as nn

from affvae.deconv import CHANNELS_LAST_CIN, PHASE_WEIGHT_GRAD_COUT, Conv2x, ConvTranspose2x


@pytest.mark.parametrize("nd, shape, cout", [(2, (3, 5, 8, 8), 2), (3, (2, 4, 6, 6, 6), 1), (2, (2, 3, 7, 9), 4),
                                            (3, (2, 5, 4, 6, 4), 6)])  # 6: the weight gradient by phases
def test_phase_deconv_equals_conv_transpose_forward_and_backward(nd, shape, cout):
    torch.manual_seed(0)
    fast = ConvTranspose2x(nd, shape[1], cout).double()
    ref = (nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d)(shape[1], cout, 4, 2, 1).double()
    y = _assert_same_layer(fast, ref, torch.randn(*shape, dtype=torch.double))
    assert y.shape == (shape[0], cout, *(2 * s for s in shape[2:]))


def _assert_same_layer(fast, ref, x):
    """``fast`` with ``ref``'s parameters gives ``ref``'s output and gradients on ``x``; returns the output."""
    with torch.no_grad():
        ref.weight.copy_(fast.weight)
        ref.bias.copy_(fast.bias)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, yr = fast(xf), ref(xr)
    assert yf.shape == yr.shape and torch.allclose(yf, yr, atol=1e-12)
    g = torch.randn_like(yr)
    gf = torch.autograd.grad(yf, [xf, fast.weight, fast.bias], g)
    gr = torch.autograd.grad(yr, [xr, ref.weight, ref.bias], g)
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, atol=1e-10)
    assert gf[0].abs().sum() > 0  # the input gradient was computed, not left zero
    return yf


def test_gradcheck():
    torch.manual_seed(1)
    m = ConvTranspose2x(3, 2, 1).double()
    x = torch.randn(1, 2, 3, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))


def test_backward_under_autocast_matches_the_native_layer():
    # mixed precision: the forward convolution runs in a lower precision than the float32
    # weights, so the gradient arriving in backward has another dtype than they have
    torch.manual_seed(2)
    fast = ConvTranspose2x(3, 4, 2)
    ref = nn.ConvTranspose3d(4, 2, 4, 2, 1)
    with torch.no_grad():
        ref.weight.copy_(fast.weight)
        ref.bias.copy_(fast.bias)
    x = torch.randn(2, 4, 5, 5, 5)
    grads = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xi.to(torch.bfloat16))
        (y.float() ** 2).sum().backward()
        assert xi.grad.dtype == torch.float32 and m.weight.grad.dtype == torch.float32
        grads.append((y.float(), xi.grad, m.weight.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0.05, atol=0.05 * float(b.abs().max()))


def test_the_phase_weight_gradient_covers_the_output_channels_it_is_used_for():
    assert 6 in PHASE_WEIGHT_GRAD_COUT and 1 not in PHASE_WEIGHT_GRAD_COUT and 16 not in PHASE_WEIGHT_GRAD_COUT


@pytest.mark.parametrize("nd, shape, cout", [
    (3, (3, 3, 8, 6, 4), 5),   # few input channels: the input gradient by phases
    (2, (2, 2, 10, 6), 3),
    (3, (2, 2, 5, 6, 4), 3),   # an odd side: the native input gradient
    (3, (2, 8, 4, 4, 4), 4),   # 6-15 input channels: the backward on channels-last copies
    (3, (2, 16, 4, 4, 4), 4),  # many input channels: the native layer
])
def test_phase_grad_conv_equals_the_strided_convolution(nd, shape, cout):
    torch.manual_seed(3)
    fast = Conv2x(nd, shape[1], cout).double()
    ref = (nn.Conv2d if nd == 2 else nn.Conv3d)(shape[1], cout, 3, 2, 1).double()
    _assert_same_layer(fast, ref, torch.randn(*shape, dtype=torch.double))


def test_the_channels_last_backward_gives_plain_gradients_in_float32():
    torch.manual_seed(5)
    fast, ref = Conv2x(3, 8, 16), nn.Conv3d(8, 16, 3, 2, 1)
    assert 8 in CHANNELS_LAST_CIN and 3 not in CHANNELS_LAST_CIN and 16 not in CHANNELS_LAST_CIN
    with torch.no_grad():
        ref.weight.copy_(fast.weight)
        ref.bias.copy_(fast.bias)
    x = torch.randn(3, 8, 8, 8, 8)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, yr = fast(xf), ref(xr)
    g = torch.randn_like(yr)
    yf.backward(g)
    yr.backward(g)
    assert xf.grad.is_contiguous() and fast.weight.grad.is_contiguous()  # not channels-last
    for a, b in [(yf, yr), (xf.grad, xr.grad), (fast.weight.grad, ref.weight.grad), (fast.bias.grad, ref.bias.grad)]:
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_phase_grad_conv_gradcheck():
    torch.manual_seed(4)
    m = Conv2x(3, 2, 3).double()
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))
