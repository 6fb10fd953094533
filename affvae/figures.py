"""Decoded figures: latent traversals, interpolations and pose sweeps.

Each figure is a grid of decoded objects.  2D objects are shown as images; 3D
objects as their projection along z (sum of densities), which shows the whole
shape at once.  Every 3D grid is also written as one .mrc volume with the objects
tiled in y and x, so a viewer (ChimeraX, napari, IMOD) shows the same grid in 3D.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from affvae.plots import _pyplot, save_figure


@torch.inference_mode()
def decode(model, z: np.ndarray, pose: np.ndarray | None = None, batch: int = 128) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(z), batch):
        zt = torch.as_tensor(z[s:s + batch], dtype=torch.float32, device=device)
        pt = None if pose is None or model.pose_dims == 0 else \
            torch.as_tensor(pose[s:s + batch], dtype=torch.float32, device=device)
        out.append(model.decode(zt, pt).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *model.shape), np.float32)


def _view(obj: np.ndarray) -> np.ndarray:
    return obj if obj.ndim == 2 else obj.sum(0)


def grid_figure(objs: np.ndarray, rows: int, cols: int, path, title: str = "",
                row_labels=None, col_labels=None, mrc: bool = True) -> Path:
    """Draw ``rows x cols`` decoded objects (row-major) and save PNG (+ .mrc for 3D)."""
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 0.6, 1.1 * rows + 0.5), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < len(objs):
            ax.imshow(_view(objs[k]), cmap="gray")
        r, c = divmod(k, cols)
        if c == 0 and row_labels is not None:
            ax.set_ylabel(str(row_labels[r]), rotation=0, ha="right", va="center")
        if r == rows - 1 and col_labels is not None:
            ax.set_xlabel(str(col_labels[c]), fontsize=7)
    if title:
        fig.suptitle(title)
    path = save_figure(fig, path)
    if mrc and objs.ndim == 4:
        write_mrc_grid(objs, rows, cols, Path(path).with_suffix(".mrc"))
    return path


def write_mrc_grid(objs: np.ndarray, rows: int, cols: int, path: str | os.PathLike) -> Path:
    """Tile volumes (N, D, H, W) into one (D, rows*H, cols*W) map."""
    from affvae.volumes import write_volume

    n, d, h, w = objs.shape
    full = np.zeros((rows * cols, d, h, w), np.float32)
    full[:n] = objs
    tiled = full.reshape(rows, cols, d, h, w).transpose(2, 0, 3, 1, 4).reshape(d, rows * h, cols * w)
    return write_volume(path, tiled)


def traversal(model, mu: np.ndarray, pose: np.ndarray, path, steps: int = 9, span: float = 2.5) -> Path:
    """Each latent dim swept over mean +- span sd, the others at their mean (the paper's Fig. 7, left)."""
    centre, sd = mu.mean(0), mu.std(0) + 1e-6
    offsets = np.linspace(-span, span, steps)
    D = mu.shape[1]
    z = np.repeat(centre[None], D * steps, 0)
    for d in range(D):
        z[d * steps:(d + 1) * steps, d] = centre[d] + offsets * sd[d]
    p = np.repeat(pose.mean(0, keepdims=True), len(z), 0) if pose.shape[1] else None
    objs = decode(model, z, p)
    return grid_figure(objs, D, steps, path, "latent traversal", row_labels=[f"z{d}" for d in range(D)],
                       col_labels=[f"{o:+.1f}sd" for o in offsets])


def interpolation(model, corners: np.ndarray, names, pose: np.ndarray, path, steps: int = 7) -> Path:
    """Bilinear interpolation between four encoded objects at the corners (Fig. 7, right)."""
    a, b, c, d = corners
    t = np.linspace(0, 1, steps)
    z = np.array([(1 - v) * ((1 - u) * a + u * b) + v * ((1 - u) * c + u * d) for v in t for u in t])
    p = np.repeat(pose.mean(0, keepdims=True), len(z), 0) if pose.shape[1] else None
    objs = decode(model, z, p)
    title = f"interpolation: {names[0]} (top left), {names[1]} (top right), {names[2]}, {names[3]} (bottom)"
    return grid_figure(objs, steps, steps, path, title)


def pose_sweep(model, centres: np.ndarray, names, pose: np.ndarray, labels, path, steps: int = 9) -> Path | None:
    """Each class centre decoded along its own members' main pose axis (Fig. 6).

    The pose head is free of any prior, so every class keeps its own range and direction
    of pose: a sweep over the pooled range would leave most classes outside theirs.  Row
    ``c`` runs from the 2nd to the 98th percentile of class ``c``'s poses (``pose`` of the
    items ``labels``) along their first principal axis, through their mean; a class with
    fewer than 3 items uses all items' poses.
    """
    if pose.shape[1] == 0:
        return None
    labels = np.asarray(labels)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    rows = []
    for c in names:
        own = pose[labels == c] if (labels == c).sum() >= 3 else pose
        mean = own.mean(0)
        axis = np.linalg.svd(own - mean, full_matrices=False)[2][0]
        lo, hi = np.percentile((own - mean) @ axis, [2, 98])
        rows.append(mean + (lo + t * (hi - lo)) * axis)
    objs = decode(model, np.repeat(centres, steps, 0), np.concatenate(rows))
    return grid_figure(objs, len(centres), steps, path, "pose sweep: each class along its own main pose axis",
                       row_labels=list(names), col_labels=["2nd pct"] + [""] * (steps - 2) + ["98th pct"])
