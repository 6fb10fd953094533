"""The affinity-VAE loss terms, as pure functions of tensors, and weight schedules.

    L = recon(x, y) + beta * KL(N(mu, sigma) || N(0, 1)) + gamma * S

The affinity term compares the class affinity of every pair in the batch with
the cosine similarity of their latent vectors.  All pairs come from one matrix
product of the row-normalised latents, never a loop over pairs.  Two scalings are
offered (see :mod:`affvae.config`): ``reference`` (the authors' implementation:
on mu, averaged over pairs i < j, per-voxel reconstruction, per-dimension KL) and
``formula`` (the paper's equation: on sampled z, summed over all ordered pairs and
divided by N, summed reconstruction and KL).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _SigmoidSquaredError(torch.autograd.Function):
    """``scale * sum((sigmoid(l) - x)^2)`` in three passes forward and three backward.

    Composed from separate ops (sigmoid, subtract, square, mean and their backwards)
    this is about ten passes over the batch, a fifth of a 64^3 training step on CPU.
    """

    @staticmethod
    def forward(ctx, logits, x, scale: float):
        y = torch.sigmoid(logits)
        d = torch.sub(y, x)
        ctx.save_for_backward(y, d)
        ctx.scale = scale
        flat = d.reshape(-1)
        return torch.dot(flat, flat) * scale

    @staticmethod
    def backward(ctx, g):
        y, d = ctx.saved_tensors
        # d/dl (s(l) - x)^2 = 2 (s - x) s (1 - s)
        grad = torch.addcmul(y, y, y, value=-1).mul_(d).mul_(g * (2.0 * ctx.scale))
        return grad, None, None


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, kind: str = "mse",
                        convention: str = "reference", from_logits: bool = False) -> torch.Tensor:
    """MSE (real-valued data) or BCE (binary data, ``y`` in (0, 1)).

    ``reference``: mean over voxels and batch; ``formula``: sum over voxels, mean over
    the batch (the squared norm of the paper's equation).  With ``from_logits`` ``y`` is
    the decoder's output before its sigmoid, and the sigmoid is fused into the loss
    (BCE with logits; the squared error of the sigmoid in one autograd function).
    """
    x = x.float()
    y = y.float()
    scale = 1.0 / x.numel() if convention == "reference" else 1.0 / max(x.shape[0], 1)
    if kind == "mse":
        if from_logits:
            return _SigmoidSquaredError.apply(y, x, scale)
        return F.mse_loss(y, x, reduction="sum") * scale
    if kind == "bce":
        if from_logits:
            return F.binary_cross_entropy_with_logits(y, x, reduction="sum") * scale
        return F.binary_cross_entropy(y.clamp(1e-6, 1 - 1e-6), x, reduction="sum") * scale
    raise ValueError(f"unknown reconstruction loss {kind!r}")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, convention: str = "reference") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)); mean over dims (reference) or summed (formula)."""
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    if convention == "reference":
        return kl.mean()
    return kl.sum(1).mean()


def class_anchors(affinity: torch.Tensor, dims: int) -> torch.Tensor:
    """One fixed unit vector per class whose cosines best realise ``affinity``.

    The symmetric part of A is factorised as V diag(l) V^T; negative eigenvalues are
    dropped (A need not be positive semi-definite) and, when there are more classes
    than latent dims, only the ``dims`` largest are kept.  Rows of V sqrt(l), padded
    with zeros to ``dims`` and normalised, are the anchors: (C, dims), their Gram
    matrix equal to A wherever A is a valid cosine matrix of rank <= dims.
    """
    a = affinity.double()
    a = (a + a.T) / 2
    evals, evecs = torch.linalg.eigh(a)
    order = torch.argsort(evals, descending=True)[:dims]
    p = evecs[:, order] * evals[order].clamp_min(0).sqrt()
    if p.shape[1] < dims:
        p = F.pad(p, (0, dims - p.shape[1]))
    return F.normalize(p, dim=1, eps=1e-12).to(affinity.dtype)


def affinity_loss(latent: torch.Tensor, class_idx: torch.Tensor, affinity: torch.Tensor,
                  convention: str = "reference", anchors: torch.Tensor | None = None,
                  anchor_weight: float = 0.0, pairs: str = "uniform") -> torch.Tensor:
    """S = sum |A[c_i, c_j] - cos(z_i, z_j)| over the pairs of a batch.

    ``latent`` (N, D), ``class_idx`` (N,) rows of ``affinity`` (C, C).  ``reference``:
    mean over the N(N-1)/2 pairs i < j; ``formula``: sum over all N^2 ordered pairs
    divided by N (the diagonal contributes |1 - 1| = 0).

    ``pairs="balanced"`` weighs the pairs of one class (whose target is 1) and the
    pairs of two classes as two halves, each half the mean over its pairs, instead of
    every pair alike ("uniform", the paper's S).  With C classes in a batch only
    about 1/C of the pairs share a class, so under uniform weights the few pulls
    that gather a class are outvoted by the many pushes between classes, which any
    scatter that keeps the classes' directions apart also satisfies.  Balanced
    weights have the same scale as the uniform mean (both average |A - cos|; the formula
    convention's sum over ordered pairs over N is that mean times N - 1).

    With ``anchors`` (C, D, see :func:`class_anchors`) and ``anchor_weight`` > 0 the
    pairs of each item with every class anchor are added, weighted by
    ``anchor_weight`` and scaled the same way (mean over the N*C pairs, or their sum
    divided by N): |A[c_i, c] - cos(z_i, a_c)|.  Item pairs alone carry no signal
    that separates two classes once the encoder maps both to one point (the gradient
    of the cosine vanishes there); the fixed anchors do.
    """
    n = latent.shape[0]
    unit = F.normalize(latent.float(), dim=1, eps=1e-8)
    s = latent.new_zeros((), dtype=torch.float32)
    if n >= 2:
        cos = unit @ unit.T
        target = affinity[class_idx][:, class_idx]
        diff = (target - cos).abs()
        if pairs == "balanced":  # scaled as the convention scales the plain mean
            s = _balanced_mean(diff, class_idx) * (1.0 if convention == "reference" else n - 1)
        elif convention == "reference":
            iu = torch.triu_indices(n, n, offset=1, device=latent.device)
            s = diff[iu[0], iu[1]].mean()
        else:
            s = diff.sum() / n
    if anchors is not None and anchor_weight > 0 and n >= 1:
        diff_a = (affinity[class_idx] - unit @ anchors.float().T).abs()
        if pairs == "balanced":  # the own anchor as one half, the other classes' as the other
            own = torch.zeros_like(diff_a, dtype=torch.bool)
            own[torch.arange(n, device=diff_a.device), class_idx] = True
            parts = [diff_a[m].mean() for m in (own, ~own) if m.any()]
            s = s + anchor_weight * torch.stack(parts).mean()
        else:
            s = s + anchor_weight * (diff_a.mean() if convention == "reference" else diff_a.sum() / n)
    return s


def _balanced_mean(diff: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    """Half the mean over same-class pairs i < j plus half the mean over the others."""
    n = diff.shape[0]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=diff.device), diagonal=1)
    same = (class_idx[:, None] == class_idx[None, :]) & upper
    other = upper & ~same
    parts = [diff[m].mean() for m in (same, other) if m.any()]
    return torch.stack(parts).mean()


def schedule_value(schedule, base: float, epoch: int, epochs: int) -> float:
    """The weight at ``epoch`` (0-based) of ``epochs`` under a :class:`~affvae.config.Schedule`.

    constant: ``base``; linear: from ``start`` to ``base`` over ``warmup_epochs``, then
    ``base``; cyclical (Fu et al. 2019): ``cycles`` cycles over the run, each rising
    linearly from ``start`` to ``base`` over the first ``ratio`` of the cycle, then flat.
    """
    kind = schedule.kind
    if kind == "constant" or base == 0:
        return float(base)
    start = min(schedule.start, base)
    if kind == "linear":
        t = min(1.0, (epoch + 1) / schedule.warmup_epochs)
    elif kind == "cyclical":
        period = max(1.0, epochs / schedule.cycles)
        phase = (epoch % period) / period
        t = min(1.0, phase / schedule.ratio)
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    value = start + (base - start) * t
    return float(value) if math.isfinite(value) else float(base)


def loss_terms(x, y, mu, logvar, z, class_idx, affinity, *, beta: float, gamma: float,
               recon: str = "mse", convention: str = "reference", anchors=None,
               anchor_weight: float = 0.0, pairs: str = "uniform", from_logits: bool = False):
    """All terms for one batch: returns ``(total, terms)`` with unweighted terms.

    ``y`` is the reconstruction, or with ``from_logits`` the decoder's output before its
    sigmoid (see :func:`reconstruction_loss`).

    The affinity term is skipped (zero) when ``gamma`` is 0 or there is no matrix,
    which is the plain beta-VAE of the paper's baseline.
    """
    r = reconstruction_loss(x, y, recon, convention, from_logits)
    k = kl_divergence(mu, logvar, convention)
    if gamma > 0 and affinity is not None:
        a = affinity_loss(mu if convention == "reference" else z, class_idx, affinity, convention,
                          anchors, anchor_weight, pairs)
    else:
        a = r.new_zeros(())
    total = r + beta * k + gamma * a
    return total, {"recon": r, "kl": k, "affinity": a, "total": total}
