"""Items of a folder read from their files when they are indexed, never all at once.

A :class:`LazyItems` stands where a dataset's ``x`` array stands (``len``, ``shape``,
``ndim``, indexing) for folders too large for memory: ``items[idx]`` reads the files
of ``idx`` (an integer, a slice or an index array), resizes them to the box and
images them with the one pipeline (:func:`affvae.transforms.imaging.image`, with
each item's own seed, as the in-memory dataset does), and returns a float32 array.
``items.take(idx)`` is a lazy subset (a split, say) that reads nothing.  Whoever
consumes one reads it in batches (:func:`batched`), so peak memory is a batch, not
the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from affvae.transforms.imaging import Imaging
from affvae.volumes import read_stack


class LazyItems:
    """Files of one shape, read (resized and imaged) per index; picklable and small."""

    dtype = np.dtype(np.float32)

    def __init__(self, files: Sequence[str | Path], item_shape: Sequence[int], size: int | None = None,
                 imaging: Imaging | None = None, seeds: np.ndarray | None = None,
                 file_shape: Sequence[int] | None = None):
        self.files = [str(f) for f in files]
        self.item_shape = tuple(int(s) for s in item_shape)
        self.file_shape = tuple(int(s) for s in (file_shape or item_shape))
        self.size = size
        self.imaging = imaging
        self.seeds = None if seeds is None else np.asarray(seeds, dtype=np.int64)

    # -- array-like ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._read(np.array([int(key)]))[0]
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._read(idx.astype(np.int64))

    def __array__(self, dtype=None, copy=None):
        raise TypeError("LazyItems are read from their files in batches (affvae.data.lazy.batched), "
                        "not converted to one array")

    # -- views ---------------------------------------------------------------------
    def take(self, idx) -> "LazyItems":
        """The items ``idx`` as another lazy set (nothing is read)."""
        idx = np.asarray(idx, dtype=np.int64)
        return LazyItems([self.files[i] for i in idx], self.item_shape, self.size, self.imaging,
                         None if self.seeds is None else self.seeds[idx], self.file_shape)

    def imaged(self, imaging: Imaging, seeds: np.ndarray | None = None) -> "LazyItems":
        """The same files, imaged with ``imaging`` and each item's seed (needed for noise) when read."""
        return LazyItems(self.files, self.item_shape, self.size, imaging, seeds, self.file_shape)

    # -- reading -------------------------------------------------------------------
    def _read(self, idx: np.ndarray) -> np.ndarray:
        from affvae.transforms.augment import resize_to_box
        from affvae.transforms.imaging import image

        if len(idx) == 0:
            return np.zeros((0, *self.item_shape), np.float32)
        x = read_stack([self.files[i] for i in idx], self.file_shape, reference=self.files[0])
        if self.size is not None:
            x = np.asarray(resize_to_box(x, self.size), dtype=np.float32)
        if self.imaging is not None:
            x = image(x, self.imaging, None if self.seeds is None else self.seeds[idx])
        return x


def batched(x, batch_size: int = 256) -> Iterator[np.ndarray]:
    """``x`` (an array, a tensor or :class:`LazyItems`) in consecutive batches."""
    for s in range(0, len(x), batch_size):
        yield x[s:s + batch_size]


def is_lazy(x) -> bool:
    return isinstance(x, LazyItems)


def subset(x, idx):
    """Rows ``idx`` of ``x``: a lazy view of lazy items, else the indexed array."""
    return x.take(idx) if is_lazy(x) else x[idx]
