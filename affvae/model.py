"""The affinity-VAE network for 2D images and 3D volumes.

Encoder: blocks of a stride-2 3x3(x3) convolution, ReLU and (optionally) batch
norm, each halving the box; then three linear heads from the flattened features:
mu and log-variance of the latent, and the pose (not regularised by KL or the
affinity loss, so it is free to absorb orientation).  Decoder: a linear layer from
[z, pose] to the bottom feature map, then stride-2 4x4(x4) transposed
convolutions back to the input size, the last one with a sigmoid for data in
[0, 1] (or linear).  ``pose_dims = 0`` removes the pose head altogether.  This is
the architecture of the paper's reference implementation, so throughput and
results compare like for like.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from affvae.deconv import Conv2x, ConvTranspose2x
from affvae.errors import ConfigError


def _layers(ndim: int):
    if ndim == 2:
        return nn.ConvTranspose2d, nn.BatchNorm2d
    if ndim == 3:
        return nn.ConvTranspose3d, nn.BatchNorm3d
    raise ConfigError(f"input must be 2D or 3D, got {ndim}D")


class AffinityVAE(nn.Module):
    def __init__(self, shape: Sequence[int], filters: Sequence[int] = (8, 16, 32),
                 latent_dims: int = 8, pose_dims: int = 1, batch_norm: bool = True,
                 output: str = "sigmoid", fast_deconv: bool = True):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        ndim = len(shape)
        depth = len(filters)
        if any(s % 2**depth for s in shape):
            raise ConfigError(
                f"model.filters: {depth} blocks halve the box {depth} times, so every side of "
                f"{'x'.join(map(str, shape))} must be divisible by {2**depth}"
            )
        tconv, bnorm = _layers(ndim)
        self.shape, self.ndim = shape, ndim
        self.latent_dims, self.pose_dims = latent_dims, pose_dims
        self.filters = list(filters)
        self.output = output

        enc: list[nn.Module] = []
        cin = 1
        for f in filters:
            enc += [Conv2x(ndim, cin, f), nn.ReLU(inplace=True)]  # Conv{ndim}d(cin, f, 3, stride 2, padding 1)
            if batch_norm:
                enc.append(bnorm(f))
            cin = f
        enc.append(nn.Flatten())
        self.encoder = nn.Sequential(*enc)
        self.bottom = (filters[-1], *(s // 2**depth for s in shape))
        flat = 1
        for b in self.bottom:
            flat *= b
        self.fc_mu = nn.Linear(flat, latent_dims)
        self.fc_logvar = nn.Linear(flat, latent_dims)
        self.fc_pose = nn.Linear(flat, pose_dims) if pose_dims > 0 else None

        self.fc_dec = nn.Linear(latent_dims + pose_dims, flat)
        dec: list[nn.Module] = []
        chans = list(filters[::-1]) + [1]
        for i in range(depth):
            side_in = shape[0] // 2 ** (depth - i)
            # the phase form wins once the input box is 8 or more (measured on a 2-core CPU)
            if fast_deconv and (ndim == 2 or side_in >= 8):
                dec.append(ConvTranspose2x(ndim, chans[i], chans[i + 1]))
            else:
                dec.append(tconv(chans[i], chans[i + 1], kernel_size=4, stride=2, padding=1))
            if i < depth - 1:
                dec.append(nn.ReLU(inplace=True))
                if batch_norm:
                    dec.append(bnorm(chans[i + 1]))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor):
        """``x`` (N, *shape) or (N, 1, *shape) -> (mu, logvar, pose); pose is (N, 0) if off."""
        if x.dim() == self.ndim + 1:
            x = x.unsqueeze(1)
        h = self.encoder(x)
        pose = self.fc_pose(h) if self.fc_pose is not None else h.new_zeros(h.shape[0], 0)
        return self.fc_mu(h), self.fc_logvar(h), pose

    def decode(self, z: torch.Tensor, pose: torch.Tensor | None = None, logits: bool = False) -> torch.Tensor:
        """(z, pose) -> reconstruction (N, *shape); with ``logits`` the last layer's output
        before the sigmoid (for a loss that fuses it, :func:`affvae.losses.reconstruction_loss`)."""
        if self.pose_dims:
            if pose is None:
                pose = z.new_zeros(z.shape[0], self.pose_dims)
            z = torch.cat([z, pose], dim=1)
        h = self.fc_dec(z).view(z.shape[0], *self.bottom)
        y = self.decoder(h).squeeze(1)
        return torch.sigmoid(y) if self.output == "sigmoid" and not logits else y

    def forward(self, x: torch.Tensor, sample: bool = True, eps: torch.Tensor | None = None,
                logits: bool = False):
        """Encode, sample z = mu + eps * sigma (``eps`` standard normal, drawn if not
        given) and decode; with ``sample=False`` z = mu; ``logits`` as in :meth:`decode`."""
        mu, logvar, pose = self.encode(x)
        if sample:
            eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z, pose, logits), mu, logvar, pose, z


def build_model(cfg, shape: Sequence[int]) -> AffinityVAE:
    m = cfg.model
    output = m.output
    if output == "auto":
        output = "sigmoid" if cfg.data.normalise == "minmax" or cfg.loss.recon == "bce" else "linear"
    if cfg.loss.recon == "bce" and output != "sigmoid":
        raise ConfigError("loss.recon: bce needs model.output sigmoid (data in [0, 1])")
    return AffinityVAE(shape, m.filters, m.latent_dims, m.pose_dims, m.batch_norm, output)


def encode_all(model: AffinityVAE, x: torch.Tensor, device, batch_size: int = 256):
    """mu, logvar and pose (numpy) of every item of ``x``, batched, in eval mode, without autograd.

    ``x``: a tensor, an array, or items read from their files per batch
    (:class:`~affvae.data.lazy.LazyItems`)."""
    model.eval()
    mus, lvs, poses = [], [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.as_tensor(x[start:start + batch_size], dtype=torch.float32)
            mu, lv, pose = model.encode(batch.to(device, non_blocking=True))
            mus.append(mu.float().cpu())
            lvs.append(lv.float().cpu())
            poses.append(pose.float().cpu())
    cat = (lambda t: torch.cat(t).numpy()) if mus else (lambda t: np.zeros((0, model.latent_dims)))
    return cat(mus), cat(lvs), (torch.cat(poses).numpy() if poses else np.zeros((0, model.pose_dims)))
