"""A faster, exactly equivalent stride-2 transposed convolution for CPUs.

On other devices the layer calls the native transposed convolution (cuDNN is fast
there, and autocast handles it); the phase form below runs on CPUs only.

``ConvTranspose{2,3}d(kernel_size=4, stride=2, padding=1)`` doubles the box.  Its
output splits into 2^d interleaved phases (even/odd index along each axis), and
each phase is an ordinary 2-tap-per-axis convolution of the input: along one
axis, output ``2m`` sums ``x[m-1] w[3] + x[m] w[1]`` and output ``2m+1`` sums
``x[m] w[2] + x[m+1] w[0]``.  Stacking the phases as output channels turns the
whole layer into one regular convolution (kernel 2, padding 1) plus an
interleave.  Same parameters, same initialisation, same numbers (to float
rounding), but it runs on oneDNN's fast convolution kernels: on a 2-core CPU the
32^3 decoder's last layer goes from about 12 ms to under 3 ms per batch of 32
because the native transposed path is slow for few output channels.

One layer is faster still by hand: the last layer of a 64^3 decoder, one output
channel drawn at full size, runs on the compiled kernels of :mod:`affvae.kernels`
where they can be built (:data:`DIRECT_MIN_SIDE`), and by phases elsewhere.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from affvae.kernels import stride2

#: per phase (0 even, 1 odd), which of the 4 kernel taps the 2 conv taps use
_TAPS = ((3, 1), (2, 0))
#: the same for the input gradient of a stride-2, 3-tap convolution (``k=3, p=1``): along
#: one axis ``gx[2m] = g[m] w[1]`` and ``gx[2m+1] = g[m] w[2] + g[m+1] w[0]``; tap 3 is a
#: zero appended to the kernel (the even phase has one tap only)
_GRAD_TAPS = ((1, 3), (2, 0))


def _phase_weight(w: torch.Tensor, nd: int, taps=_TAPS) -> torch.Tensor:
    """(A, B, K, ...) weights -> (P*B, A, 2, ...): per phase, its two taps along every axis.

    ``w`` is a transposed convolution's (Cin, Cout, 4, ...) weight, or (with
    ``_GRAD_TAPS``) an ordinary convolution's (Cout, Cin, 3, ...) weight, whose input
    gradient is a transposed convolution from Cout to Cin channels.
    """
    if w.shape[2] < 4:  # room for the zero tap
        w = F.pad(w, (0, 4 - w.shape[2]) * nd)
    blocks = []
    for phase in itertools.product((0, 1), repeat=nd):
        k = w
        for ax, r in enumerate(phase):
            k = k[(slice(None),) * (2 + ax) + (list(taps[r]),)]
        blocks.append(k.transpose(0, 1))
    return torch.cat(blocks, 0)


def _phase_views(t: torch.Tensor, nd: int, n):
    """Per phase, the strided view of a (N, C, 2n...) tensor holding that phase."""
    N, C = t.shape[:2]
    split = [N, C] + [v for s in n for v in (s, 2)]
    v = t.view(*split)
    for phase in itertools.product((0, 1), repeat=nd):
        idx = [slice(None), slice(None)]
        for r in phase:
            idx += [slice(None), r]
        yield phase, v[tuple(idx)]


def _weave(y: torch.Tensor, c: int, n, start) -> torch.Tensor:
    """Interleave the phase blocks of ``y`` (N, P*c, >= n+1, ...) into (N, c, 2n, ...):
    phase ``p``'s block of ``c`` channels, read from index ``start(phase)`` along each axis."""
    out = y.new_empty((y.shape[0], c, *(2 * s for s in n)))
    for p, (phase, view) in enumerate(_phase_views(out, len(n), n)):
        view.copy_(y[(slice(None), slice(p * c, (p + 1) * c))
                     + tuple(slice(r, r + s) for r, s in zip(start(phase), n))])
    return out


def _unweave(g: torch.Tensor, c: int, n, start) -> torch.Tensor:
    """The adjoint of :func:`_weave`: (N, c, 2n, ...) -> (N, P*c, n+1, ...), each phase's
    values at ``start(phase)`` on in its block of channels, zeros elsewhere."""
    out = g.new_zeros((g.shape[0], 2 ** len(n) * c, *(s + 1 for s in n)))
    for p, (phase, view) in enumerate(_phase_views(g, len(n), n)):
        out[(slice(None), slice(p * c, (p + 1) * c))
            + tuple(slice(r, r + s) for r, s in zip(start(phase), n))].copy_(view)
    return out


def _phase_weight_grad(gwp: torch.Tensor, w: torch.Tensor, nd: int) -> torch.Tensor:
    """The gradient of ``w`` from that of ``_phase_weight(w, nd)``: every tap of a
    (Cin, Cout, 4, ...) kernel lands in exactly one phase, so it is a permutation back."""
    where = _phase_weight(torch.arange(w.numel(), device=w.device).view(w.shape), nd)
    gw = gwp.new_empty(w.numel())
    gw[where.reshape(-1)] = gwp.reshape(-1)
    return gw.view(w.shape)


#: output channels for which the decoder's weight gradient is computed by phases (3D):
#: oneDNN's transposed-convolution weight gradient is slow for 4-15 of them, measured on
#: 2 cores (native against phases, ms): 16 -> 8 at 16^3, batch 32: 35.3 / 17.6; 16 -> 8
#: at 8^3: 5.0 / 2.3; 12 -> 6 at 16^3: 27.7 / 17.8; 12 -> 6 at 8^3: 3.3 / 2.3; but
#: 32 -> 16 at 8^3: 4.2 / 6.5; 64 -> 32: 17.1 / 20.5; 6 -> 3 at 16^3: 2.7 / 6.0; 8 -> 1: 1.3 / 5.9
PHASE_WEIGHT_GRAD_COUT = range(4, 16)


class _PhaseDeconv(torch.autograd.Function):
    """Forward by phases (one fast convolution); backward by the standard kernels.

    The gradients of a transposed convolution are an ordinary strided convolution
    (for the input) and the transposed convolution's own weight gradient, both of
    which already run on fast kernels, so only the forward pass is rewritten.
    """

    @staticmethod
    def forward(ctx, x, w, b):
        nd = x.dim() - 2
        n = x.shape[2:]
        cout = w.shape[1]
        # the bias is added by the convolution, every phase's block of channels getting it
        wp = _phase_weight(w, nd)
        y = (F.conv2d if nd == 2 else F.conv3d)(x, wp, b.repeat(2**nd), padding=1)
        ctx.save_for_backward(x, w, wp)
        return _weave(y, cout, n, lambda phase: phase)

    @staticmethod
    def backward(ctx, gout):
        x, w, wp = ctx.saved_tensors
        nd = x.dim() - 2
        # under autocast the forward's convolution ran in lower precision, so the
        # incoming gradient may not have the weight's dtype: compute in gout's dtype,
        # return each gradient in its input's dtype
        gout = gout.contiguous()
        wc, xc = w.to(gout.dtype), x.to(gout.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (F.conv2d if nd == 2 else F.conv3d)(gout, wc, stride=2, padding=1).to(x.dtype)
        if ctx.needs_input_grad[1] and nd == 3 and w.shape[1] in PHASE_WEIGHT_GRAD_COUT:
            gy = _unweave(gout, w.shape[1], x.shape[2:], lambda phase: phase)
            gwp = torch.ops.aten.convolution_backward(
                gy, xc, wp.to(gout.dtype), None, [1] * nd, [1] * nd, [1] * nd, False, [0] * nd, 1,
                [False, True, False])[1]
            gw = _phase_weight_grad(gwp, w, nd).to(w.dtype)
        elif ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(
                gout, xc, wc, None, [2] * nd, [1] * nd, [1] * nd, True, [0] * nd, 1,
                [False, True, False])[1].to(w.dtype)
        if ctx.needs_input_grad[2]:
            gb = gout.sum([0] + list(range(2, gout.dim()))).to(w.dtype)
        return gx, gw, gb


class _DirectDeconv(torch.autograd.Function):
    """The transposed convolution by the hand-written kernels of :mod:`affvae.kernels`:
    forward ``up``; backward ``down``, which gives the input gradient (the strided
    convolution of the output gradient) and the weight gradient in one pass over it."""

    @staticmethod
    def forward(ctx, x, w, b, ext):
        ctx.save_for_backward(x, w)
        ctx.ext = ext
        return ext.up(x, w.contiguous(), b)

    @staticmethod
    def backward(ctx, gout):
        x, w = ctx.saved_tensors
        gout = gout.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw = ctx.ext.down(gout, w.contiguous(), None, need_x, x if need_w else None)
        gb = gout.sum((0, 2, 3, 4)) if need_b else None
        return (gx if need_x else None), (gw if need_w else None), gb, None


#: the decoder layers drawn by the direct kernel: one output channel, input sides a
#: multiple of 16 and at least this (measured on 2 cores, forward and backward, by phases
#: against the kernel, ms: 3 -> 1 at 32^3, batch 25: 37.2 / 14.2; 8 -> 1 at 32^3, batch 32:
#: 55.3 / 38.1; but 8 -> 1 at 16^3: 5.7 / 6.0, 6 -> 3 at 16^3: 8.3 / 9.9, 16 -> 8: 45 / 122)
DIRECT_MIN_SIDE = 32


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _direct_kernels(x: torch.Tensor, cout: int):
    """The compiled kernels if this call of a 3D transposed convolution should use them."""
    if (cout != 1 or x.dim() != 5 or x.dtype != torch.float32 or x.device.type != "cpu"
            or _cpu_autocast()
            or any(s % 16 or s < DIRECT_MIN_SIDE for s in x.shape[2:])):
        return None
    return stride2()


class _Stride2Layer(nn.Module):
    """A stride-2, padding-1 layer with the parameters (names, shapes, initialisation) of
    the native layer it replaces, ``native[nd - 2](cin, cout, kernel, 2, 1)``."""

    native: tuple
    kernel: int
    how: str

    def __init__(self, nd: int, cin: int, cout: int):
        super().__init__()
        ref = self.native[nd - 2](cin, cout, self.kernel, 2, 1)
        self.nd, self.cin, self.cout = nd, cin, cout
        self.weight = ref.weight
        self.bias = ref.bias

    def extra_repr(self) -> str:
        return f"{self.cin}, {self.cout}, kernel_size={self.kernel}, stride=2, padding=1 ({self.how})"


class ConvTranspose2x(_Stride2Layer):
    """Drop-in for ``ConvTranspose{nd}d(cin, cout, kernel_size=4, stride=2, padding=1)``."""

    native, kernel, how = (nn.ConvTranspose2d, nn.ConvTranspose3d), 4, "phase-decomposed"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # GPUs' own transposed convolutions are fast (and autocast-aware)
            conv_t = F.conv_transpose2d if self.nd == 2 else F.conv_transpose3d
            return conv_t(x, self.weight, self.bias, stride=2, padding=1)
        ext = _direct_kernels(x, self.cout)
        if ext is not None:
            return _DirectDeconv.apply(x.contiguous(), self.weight, self.bias, ext)
        return _PhaseDeconv.apply(x.contiguous(), self.weight, self.bias)


class _PhaseGradConv(torch.autograd.Function):
    """A stride-2 ``k=3, p=1`` convolution whose input gradient is computed by phases.

    That gradient is a transposed convolution (slow on oneDNN for few channels, like the
    decoder's forward above): here it is one stride-1 convolution of the output gradient
    (kernel 2, :data:`_GRAD_TAPS`) and an interleave.  Forward and weight gradient are the
    native kernels.
    """

    @staticmethod
    def forward(ctx, x, w, b):
        nd = x.dim() - 2
        ctx.save_for_backward(x, w)
        return (F.conv2d if nd == 2 else F.conv3d)(x, w, b, stride=2, padding=1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        nd = x.dim() - 2
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if any(s % 2 for s in x.shape[2:]):  # odd sides: the phases would not tile the input
                gx = torch.ops.aten.convolution_backward(
                    g, x, w, None, [2] * nd, [1] * nd, [1] * nd, False, [0] * nd, 1, [True, False, False])[0]
            else:
                y = (F.conv2d if nd == 2 else F.conv3d)(g, _phase_weight(w, nd, _GRAD_TAPS), padding=1)
                gx = _weave(y, x.shape[1], g.shape[2:], lambda phase: (1,) * nd)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, gw, gb = torch.ops.aten.convolution_backward(
                g, x, w, [w.shape[0]], [2] * nd, [1] * nd, [1] * nd, False, [0] * nd, 1,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return gx, gw, gb


#: the encoder layers whose input gradient is computed by phases: fewer input channels than this
PHASE_GRAD_MAX_CIN = 8

#: input channels for which a 3D stride-2 convolution's backward runs on channels-last
#: copies (:class:`_ChannelsLastGradConv`)
CHANNELS_LAST_CIN = range(6, 16)


class _ChannelsLastGradConv(torch.autograd.Function):
    """A 3D stride-2 ``k=3, p=1`` convolution whose backward runs on channels-last copies.

    oneDNN's forward is fast on the plain layout and its backward slow for few channels;
    channels-last copies of the output gradient, input and weight (a few MiB each) cost
    less than the difference.  Gradients come back in the plain layout (a channels-last
    one would send the batch norm before it down a slow path).
    """

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.conv3d(x, w, b, stride=2, padding=1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        cl = torch.channels_last_3d
        need = list(ctx.needs_input_grad[:2]) + [ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g.contiguous(memory_format=cl), x.contiguous(memory_format=cl), w.contiguous(memory_format=cl),
            [w.shape[0]] if need[2] else None, [2] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1, need)
        return (gx.contiguous() if need[0] else None), (gw.contiguous() if need[1] else None), \
            (gb if need[2] else None)


class Conv2x(_Stride2Layer):
    """Drop-in for ``Conv{nd}d(cin, cout, kernel_size=3, stride=2, padding=1)`` whose
    backward on CPUs runs on channels-last copies (3D, :data:`CHANNELS_LAST_CIN` input
    channels) or computes the input gradient by phases (fewer channels); same parameters
    and numbers."""

    native, kernel = (nn.Conv2d, nn.Conv3d), 3

    @property
    def how(self) -> str:
        if self.nd == 3 and self.cin in CHANNELS_LAST_CIN:
            return "backward on channels-last copies"
        return "input gradient by phases" if self.cin < PHASE_GRAD_MAX_CIN else "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.nd == 3 and self.cin in CHANNELS_LAST_CIN and x.requires_grad:
            return _ChannelsLastGradConv.apply(x, self.weight, self.bias)
        # the phase form pays for few input channels only (measured on 2 cores, 25-32 items:
        # 3 -> 6 at 32^3 10.8 -> 6.8 ms forward and backward, 6 -> 12 at 16^3 4.1 -> 3.7,
        # 8 -> 16 at 16^3 even, 16 -> 32 at 8^3 1.6 -> 2.9)
        if x.device.type != "cpu" or not x.requires_grad or self.cin >= PHASE_GRAD_MAX_CIN:
            conv = F.conv2d if self.nd == 2 else F.conv3d
            return conv(x, self.weight, self.bias, stride=2, padding=1)
        return _PhaseGradConv.apply(x.contiguous(), self.weight, self.bias)
