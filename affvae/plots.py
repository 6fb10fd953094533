"""Matplotlib figures written as PNG (Agg backend, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from affvae.provenance import atomic_save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save atomically and close the figure."""
    plt = _pyplot()
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def plot_matrix(values: np.ndarray, labels, path, title: str = "", vmin=-1.0, vmax=1.0,
                cmap: str = "RdBu_r", annotate: bool | None = None, fmt: str = ".2f",
                row_labels=None, colorbar_label: str = "") -> Path:
    """A labelled heatmap (affinity, confusion, proximity matrices)."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    rows = list(row_labels) if row_labels is not None else list(labels)
    n, m = values.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * m + 2), max(3.5, 0.45 * n + 1.5)))
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(m), list(labels), rotation=90 if max(len(str(s)) for s in labels) > 2 else 0)
    ax.set_yticks(range(n), rows)
    if annotate is None:
        annotate = max(n, m) <= 16
    if annotate:
        mid = (vmin + vmax) / 2
        for i in range(n):
            for j in range(m):
                v = values[i, j]
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                        color="white" if abs(v - mid) > 0.35 * (vmax - vmin) else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_affinity(matrix, path, title: str = "affinity") -> Path:
    return plot_matrix(matrix.values, matrix.classes, path, title=title, colorbar_label="similarity")
