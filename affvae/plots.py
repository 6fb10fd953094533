"""Matplotlib figures written as PNG (Agg backend, no display needed)."""

from __future__ import annotations

import os
import textwrap
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
                row_labels=None, colorbar_label: str = "", xlabel: str = "", ylabel: str = "") -> Path:
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
    if annotate:  # text colour by the luminance of the cell behind it
        rgb = im.cmap(im.norm(np.nan_to_num(values, nan=vmin)))[..., :3]
        dark = (rgb @ np.array([0.299, 0.587, 0.114])) < 0.5
        for i in range(n):
            for j in range(m):
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if dark[i, j] else "black")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    if title:  # above the colour bar too, which stands taller than a wide, short image
        top = max(ax.get_position().y1, cbar.ax.get_position().y1)
        fig.suptitle(textwrap.fill(title, max(30, int(fig.get_figwidth() * 9))), y=top + 0.02,
                     va="bottom", fontsize="large")
    return save_figure(fig, path)


def plot_affinity(matrix, path, title: str = "affinity") -> Path:
    return plot_matrix(matrix.values, matrix.classes, path, title=title, colorbar_label="similarity")


def class_colours(classes, unseen=()) -> dict[str, tuple]:
    """The RGBA colour of each class in every picture of an embedding (``""``, unknown, gets none).

    One palette (tab10, tab20 beyond ten classes) over the seen classes then the
    unseen ones, so no unseen class shares a seen class's colour.
    """
    plt = _pyplot()
    unseen = {str(c) for c in unseen}
    names = [str(c) for c in classes if str(c) != ""]
    ordered = [c for c in names if c not in unseen] + [c for c in names if c in unseen]
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(ordered)}


def _draw_embedding(plt, ax, xy, labels, unseen, legend: bool, annotate: bool = True) -> None:
    from affvae.labels import as_labels

    xy = np.asarray(xy, dtype=float)
    labels = as_labels(labels)
    unseen = {str(c) for c in unseen}
    classes = [c for c in np.unique(labels).tolist() if c != ""]
    seen_cls = [c for c in classes if c not in unseen]
    new_cls = [c for c in classes if c in unseen]
    colour = class_colours(classes, unseen)
    n = max(1, xy.shape[0])
    # markers a reader can see: about 9 points^2 per dot at a thousand items (a grid's small
    # panels too), larger when there are few; unseen classes as larger stars
    size = float(np.clip(9000.0 / n, 8.0, 40.0)) * (1.0 if legend else 0.7)
    star = size * 3 + 20 if legend else size * 2 + 6
    unknown = labels == ""
    if unknown.any():
        ax.scatter(xy[unknown, 0], xy[unknown, 1], s=size, c="0.7", lw=0, label="unknown")
    for c in seen_cls:
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=colour[c], lw=0, alpha=0.8, label=c)
    for c in new_cls:
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=star, marker="*", color=colour[c],
                   edgecolors="black", linewidths=0.6 if legend else 0.2, label=f"{c} (unseen)", zorder=3)
        if annotate:
            top = (np.median(xy[m, 0]), xy[m, 1].max())  # name just above the cluster
            ax.annotate(f"{c} (unseen)", top, xytext=(0, 8), textcoords="offset points", fontsize=9,
                        fontweight="bold", ha="center", va="bottom", zorder=4,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7})
    ax.set_xticks([])
    ax.set_yticks([])
    if legend and (classes or unknown.any()):
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=1.5,
                  frameon=False, ncol=1 if len(classes) <= 25 else 2)


def plot_embedding(xy, labels, path, unseen=(), title: str = "") -> Path:
    """Scatter of a 2-D embedding coloured by class, unseen classes stand out.

    Seen classes are small coloured dots; each unseen class gets a large
    black-edged star in its own colour (none shared with a seen class) and its
    name written just above it, since those are the points the reader looks for.  Unknown labels
    ("") are drawn as small grey dots.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    _draw_embedding(plt, ax, xy, labels, unseen, legend=True)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_embedding_grid(cells: dict, row_labels, col_labels, path, row_name: str = "",
                        col_name: str = "", title: str = "") -> Path:
    """Embeddings of many trials on a grid (rows x columns of two searched values).

    ``cells[(row, col)] = (xy, labels, unseen)``; a missing cell is left blank
    (e.g. a failed trial).  One legend for the whole grid, from the first cell.
    """
    plt = _pyplot()
    rows, cols = list(row_labels), list(col_labels)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols) + 1.5, 2.4 * len(rows) + 0.6),
                             squeeze=False)
    legend_ax = None
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            cell = cells.get((r, c))
            if cell is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "no result", ha="center", va="center", color="0.5", transform=ax.transAxes)
            else:
                xy, labels, unseen = cell
                _draw_embedding(plt, ax, xy, labels, unseen, legend=False, annotate=False)
                legend_ax = legend_ax or ax
            if i == 0:
                ax.set_title(f"{col_name} = {c}" if col_name else str(c), fontsize=9)
            if j == 0 and row_name:
                ax.set_ylabel(f"{row_name} = {r}", fontsize=9)
    if legend_ax is not None:
        handles, names = legend_ax.get_legend_handles_labels()
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(matrix, row_labels, col_labels, path, title: str = "confusion") -> Path:
    """Confusion counts: colour = fraction of the row (true class), text = count.

    Colouring by row fraction keeps small classes readable next to big ones; the
    rows below the seen classes are the unseen classes.  (Drawn here rather than
    with :func:`plot_matrix`, whose text colour rule suits diverging colour maps:
    on a sequential one it writes white zeros on white cells.)
    """
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    rows, cols = list(row_labels), list(col_labels)
    totals = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n, m = counts.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * m + 2), max(3.5, 0.45 * n + 1.5)))
    cmap = plt.get_cmap("Blues")
    im = ax.imshow(frac, vmin=0.0, vmax=1.0, cmap=cmap)
    ax.set_xticks(range(m), cols, rotation=90 if cols and max(len(str(s)) for s in cols) > 2 else 0)
    ax.set_yticks(range(n), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if max(n, m) <= 30:
        rgb = cmap(frac)[..., :3]
        dark = (rgb @ np.array([0.299, 0.587, 0.114])) < 0.5
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if dark[i, j] else "black")
    n_seen = len(cols)
    if n > n_seen:  # separate the unseen rows
        ax.axhline(n_seen - 0.5, color="black", lw=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_proximity(prox, classes, path, title: str = "centre proximity") -> Path:
    """Distances between class centres on the 0-100 scale (0 = same place)."""
    return plot_matrix(prox, list(classes), path, title=title, vmin=0.0, vmax=100.0,
                       cmap="RdBu_r", fmt=".0f", colorbar_label="centre distance (0-100)")


def plot_parallel_coordinates(table, keys, metric: str, path, title: str = "") -> Path:
    """One line per trial across the searched keys, ending at ``metric``; coloured by it.

    ``table`` is a pandas DataFrame with a column per key and ``metric``.  Numeric
    keys get a log axis when their values span more than a factor of 20 (learning
    rates, betas), categorical ones an evenly spaced axis; trials without the
    metric (failed) are drawn grey and dashed.
    """
    import pandas as pd

    plt = _pyplot()
    axes_vals, ticks = [], []
    for key in keys:
        col = table[key]
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all() and len(num):
            v = num.to_numpy(float)
            logged = v.min() > 0 and v.max() / v.min() > 20
            v = np.log10(v) if logged else v
            uniq = sorted(set(num.tolist()))
            pos = np.log10(uniq) if logged else np.asarray(uniq, float)
            ticks.append((pos, [f"{u:g}" for u in uniq]))
        else:
            cats = list(dict.fromkeys(col.astype(str)))
            v = np.array([cats.index(s) for s in col.astype(str)], float)
            ticks.append((np.arange(len(cats), dtype=float), cats))
        axes_vals.append(v)
    score = pd.to_numeric(table[metric], errors="coerce").to_numpy(float)
    lo, hi = (np.nanmin(score), np.nanmax(score)) if np.isfinite(score).any() else (0.0, 1.0)
    norm = plt.Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(1.8 * (len(keys) + 1) + 2, 4.5))
    scaled = []
    for v, (pos, _) in zip(axes_vals, ticks):
        a, b = float(np.min(pos)), float(np.max(pos))
        scaled.append((v - a) / (b - a) if b > a else np.full_like(v, 0.5))
    last = (score - norm.vmin) / (norm.vmax - norm.vmin)
    xs = np.arange(len(keys) + 1)
    for i in np.argsort(np.nan_to_num(score, nan=-np.inf)):
        ys = [s[i] for s in scaled] + [last[i] if np.isfinite(score[i]) else 0.0]
        if np.isfinite(score[i]):
            ax.plot(xs, ys, color=cmap(norm(score[i])), lw=2, alpha=0.85)
        else:
            ax.plot(xs, ys, color="0.6", lw=1, ls="--")
    for x, (pos, labels) in enumerate(ticks):
        a, b = float(np.min(pos)), float(np.max(pos))
        for p, lab in zip(pos, labels):
            y = (p - a) / (b - a) if b > a else 0.5
            ax.annotate(lab, (x, y), xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                        fontsize=8)
    for p in np.linspace(0, 1, 5):
        ax.annotate(f"{norm.vmin + p * (norm.vmax - norm.vmin):.3g}", (len(keys), p), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=8)
    for x in xs:
        ax.axvline(x, color="black", lw=0.8)
    ax.set_xticks(xs, [k.split(".")[-1] for k in keys] + [metric])
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(keys) + 0.5)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, pad=0.08, label=metric)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_curves(curves: dict, path, ylabel: str = "validation accuracy", xlabel: str = "epoch",
                title: str = "", highlight: str | None = None) -> Path:
    """Lines of (x, y) per named run on one axis, e.g. validation accuracy per epoch of every trial.

    ``curves[name] = (x, y)``; ``highlight`` names one to draw thick and black (the best).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for i, (name, (x, y)) in enumerate(curves.items()):
        best = name == highlight
        ax.plot(x, y, color="black" if best else cmap(i % cmap.N), lw=2.6 if best else 1.2,
                alpha=1.0 if best else 0.8, label=f"{name} (best)" if best else name, zorder=3 if best else 2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) <= 30:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
