"""Train / validation / test splits of a dataset's seen classes; unseen classes apart.

The split is a pure function of the labels, the seen classes, the two fractions and
the seed, so the training loop, its Ray Train workers and the evaluation of a
checkpoint all find the same items in each split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affvae.errors import DataError

SPLITS = ("train", "val", "test", "unseen")


@dataclass
class Splits:
    """Indices into the dataset: seen classes split three ways, unseen classes apart."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unseen: np.ndarray

    def name_of(self, n: int) -> np.ndarray:
        """The split of each of ``n`` items by name (``""`` for none)."""
        out = np.full(n, "", dtype=object)
        for name in SPLITS:
            out[getattr(self, name)] = name
        return out.astype(str)


def split_indices(labels: np.ndarray, seen: list[str], val: float, test: float, seed: int) -> Splits:
    """Stratified split of the seen items; every seen class keeps at least one training item."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in seen:
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_test = int(round(n * test))
        n_val = int(round(n * val))
        if n - n_test - n_val < 1:
            raise DataError(f"class {c!r} has {n} items: too few to split into train/val/test")
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    cat = {k: np.sort(np.concatenate(v)) if v else np.zeros(0, int) for k, v in parts.items()}
    unseen = np.flatnonzero(~np.isin(labels, np.asarray(seen, dtype=str)))
    return Splits(cat["train"], cat["val"], cat["test"], unseen)


def splits_of(cfg, data) -> Splits:
    """The splits a config gives a dataset (``data.val_fraction``, ``data.test_fraction``, ``seed``)."""
    return split_indices(data.labels, list(data.classes), cfg.data.val_fraction, cfg.data.test_fraction,
                         cfg.seed)
