"""Reading and writing one object per file: ``.mrc``, ``.mrcs`` (MRC2014, via mrcfile) or ``.npy``.

A file holds one 2D image ``(H, W)`` or one 3D volume ``(D, H, W)``; leading
singleton axes are dropped on reading, so a one-image ``.mrcs`` stack is a 2D
image.  Reading checks what training needs (a real number type, 2 or 3 axes,
finite values) and raises :class:`~affvae.errors.DataError` naming the file;
writing is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import mrcfile
import numpy as np

from affvae.errors import DataError, reason
from affvae.provenance import atomic_save

#: File suffixes that hold objects (compared case-insensitively).
DATA_SUFFIXES = (".mrc", ".mrcs", ".npy")
_MRC_SUFFIXES = (".mrc", ".mrcs")


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def read_volume(path: str | os.PathLike) -> np.ndarray:
    """Read one object from ``.mrc``, ``.mrcs`` or ``.npy`` as a float32 array.

    Leading singleton axes are dropped; the result is 2D ``(H, W)`` or 3D
    ``(D, H, W)`` with finite values.  A missing, truncated or corrupt file, a
    complex or non-numeric type, another dimensionality or NaN/Inf voxels raise
    :class:`DataError` naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _MRC_SUFFIXES:
        try:
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                data = mrc.data
                if data is None:
                    raise DataError(f"{path}: MRC file has no data block")
                raw_dtype = data.dtype
                arr = np.array(data, copy=True) if raw_dtype.kind in "iuf" else None
        except DataError:
            raise
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read MRC file ({reason(e)})") from None
    elif suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read .npy file ({reason(e)})") from None
        raw_dtype = data.dtype
        arr = data if raw_dtype.kind in "iuf" else None
    else:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}, expected one of "
            f"{', '.join(DATA_SUFFIXES)}"
        )
    if arr is None:
        raise DataError(f"{path}: data type {raw_dtype} is not a real number type")
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3) or min(arr.shape) < 2:
        raise DataError(
            f"{path}: shape {shape_str(shape) or '()'} is not a 2D image (H,W) or 3D volume "
            "(D,H,W) with every side at least 2"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    _check_finite(arr, path)
    return arr


def read_stack(files: Sequence[str | os.PathLike], shape: Sequence[int] | None = None,
               reference: str | os.PathLike | None = None, progress: bool = False,
               desc: str = "reading") -> np.ndarray:
    """Read same-shaped volumes (or images) into one float32 array ``(len(files), *shape)``.

    ``shape``: the shape every file must have (default: the first file's) and
    ``reference`` the file it is the shape of, named with the first file of another
    shape in the error.
    """
    from tqdm import tqdm

    x: np.ndarray | None = None if shape is None else np.empty((len(files), *shape), np.float32)
    first = None if reference is None else str(reference)
    for i, f in enumerate(tqdm(files, desc=desc, unit="file", disable=None if progress else True)):
        arr = read_volume(f)
        if x is None:
            x = np.empty((len(files),) + arr.shape, dtype=np.float32)
        first = first or str(f)
        if arr.shape != x.shape[1:]:
            shown = Path(first).name if Path(first).parent == Path(f).parent else first
            raise DataError(
                f"{f}: shape {shape_str(arr.shape)} differs from "
                f"{shape_str(x.shape[1:])} of {shown}, expected all items the same shape"
            )
        x[i] = arr
    if x is None:
        raise DataError("no files to read")
    return x


def _check_finite(arr: np.ndarray, path) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(finite.size - finite.sum()) - n_nan
        raise DataError(
            f"{path}: {n_nan + n_inf} non-finite voxel(s) ({n_nan} NaN, {n_inf} Inf) out of "
            f"{arr.size}, expected finite values"
        )


def write_volume(path: str | os.PathLike, array, voxel_size: float = 1.0) -> Path:
    """Write one 2D or 3D object as ``.mrc``/``.mrcs`` (float32) or ``.npy`` (float32).

    The write is atomic: the data go to a hidden temporary file beside ``path``
    that is renamed over it only when complete, so a failure never leaves a
    truncated file in place of a good one.  A 2D array written as ``.mrcs`` is
    stored as a one-image stack ``(1, H, W)``.  ``voxel_size`` (Angstrom) is
    recorded in MRC headers and ignored for ``.npy``.  Returns ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}, expected one of "
            f"{', '.join(DATA_SUFFIXES)}"
        )
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise DataError(
            f"{path}: cannot write shape {shape_str(arr.shape) or '()'}, expected a 2D image "
            "(H,W) or a 3D volume (D,H,W)"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    _check_finite(arr, path)

    if suffix == ".npy":
        def writer(tmp):
            np.save(tmp, arr, allow_pickle=False)
    else:
        def writer(tmp):
            stack = suffix == ".mrcs"
            data = arr[None] if (stack and arr.ndim == 2) else arr
            with mrcfile.new(tmp, overwrite=True) as mrc:
                mrc.set_data(data)
                if stack:
                    mrc.set_image_stack()
                mrc.voxel_size = voxel_size
    atomic_save(path, writer)
    return path
