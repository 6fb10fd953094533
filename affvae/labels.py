"""Class labels as string arrays: ``""`` means unknown, positions looked up vectorised."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def as_labels(labels) -> np.ndarray:
    """Class labels as a 1-D array of ``str``; missing values (None, NaN) become ``""``.

    ``""`` means "label unknown" throughout (as in ``predictions.csv``); a label
    read back by pandas from an empty CSV field arrives as NaN, hence the mapping.
    """
    arr = np.asarray(labels, dtype=object).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=str)
    import pandas as pd

    return np.where(pd.isna(arr), "", arr).astype(str)


def index_of(values, classes: Sequence[str]) -> np.ndarray:
    """Position of every value in ``classes`` (``-1`` where absent), vectorised."""
    values = as_labels(values)
    classes = np.asarray(list(classes), dtype=str)
    if classes.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    order = np.argsort(classes, kind="stable")
    ordered = classes[order]
    pos = np.clip(np.searchsorted(ordered, values), 0, ordered.size - 1)
    return np.where(ordered[pos] == values, order[pos], -1).astype(np.int64)
