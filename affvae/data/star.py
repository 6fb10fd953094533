"""Real subtomograms listed in a RELION particle STAR file (RELION 3.1, 4 and 5).

A STAR file names one ``.mrc`` subtomogram per particle (``rlnImageName`` by
default) and a class per particle in a column the user picks (``rlnClassNumber``,
or any label column added by hand, e.g. ``rlnMicrographName`` for one class per
tomogram).  RELION 3.1+ files hold an ``optics`` and a ``particles`` block; older
files one unnamed block; both are read with the ``starfile`` package.

Relative paths are tried against the STAR file's folder and then its parents
(RELION writes paths relative to the project folder, a few levels above the job
folder holding the STAR file).  Every problem is one line naming the file, the
column or the row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from affvae.errors import DataError

IMAGE_COLUMNS = ("rlnImageName",)


def _particles(path: Path):
    import pandas as pd
    import starfile

    if not path.is_file():
        raise DataError(f"{path}: no such STAR file")
    try:
        data = starfile.read(path, always_dict=True)
    except Exception as e:  # noqa: BLE001 - a parse failure of any kind is the same user problem
        raise DataError(f"{path}: not a readable STAR file ({e.__class__.__name__})") from None
    blocks = {k: v for k, v in data.items() if isinstance(v, pd.DataFrame)}
    if "particles" in blocks:
        return blocks["particles"], "particles"
    loops = [k for k, v in blocks.items() if len(v) and k != "optics"]
    if len(loops) != 1:
        raise DataError(f"{path}: expected a 'particles' block (blocks: {', '.join(data) or 'none'})")
    return blocks[loops[0]], loops[0] or "data_"


def _locate(name: str, star: Path) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in [star.parent, *list(star.parent.parents)[:3]]:
        if (base / p).is_file():
            return base / p
    return None


def read_star(path: str | os.PathLike, class_column: str = "rlnClassNumber",
              image_column: str | None = None) -> tuple[list[Path], np.ndarray]:
    """(subtomogram files, class labels) of a particle STAR file, every file checked to exist."""
    path = Path(path)
    df, block = _particles(path)
    if class_column not in df.columns:
        raise DataError(f"{path}: no column {class_column!r} in block {block!r} "
                        f"(columns: {', '.join(map(str, df.columns))})")
    if image_column is None:
        found = [c for c in IMAGE_COLUMNS if c in df.columns]
        if not found:
            raise DataError(f"{path}: no image column ({' or '.join(IMAGE_COLUMNS)}) in block {block!r}")
        image_column = found[0]
    elif image_column not in df.columns:
        raise DataError(f"{path}: no column {image_column!r} in block {block!r}")
    if len(df) == 0:
        raise DataError(f"{path}: block {block!r} lists no particles")
    files = []
    for row, name in enumerate(df[image_column].astype(str), start=1):
        if "@" in name:
            raise DataError(f"{path}: row {row}: {name!r} is an image in a stack; expected one .mrc "
                            "subtomogram per particle")
        f = _locate(name, path)
        if f is None:
            raise DataError(f"{path}: row {row}: {image_column} {name!r} not found (relative to "
                            f"{path.parent} or its parents)")
        files.append(f)
    labels = df[class_column].astype(str).str.replace("_", "-").to_numpy()
    return files, labels


def load_star(path: str | os.PathLike, *, class_column: str = "rlnClassNumber",
              image_column: str | None = None, size: int | None = None,
              classes: Sequence[str] | None = None, progress: bool = False):
    """A :class:`~affvae.data.io.Dataset` of the particles of a STAR file."""
    from affvae.data.io import Dataset, read_items

    files, labels = read_star(path, class_column, image_column)
    star = Path(path)
    x = read_items(files, size=size, progress=progress, desc=f"reading {star.name}")
    present = list(dict.fromkeys(labels.tolist()))
    if classes is not None:
        missing = [c for c in classes if c not in present]
        if missing:
            raise DataError(f"{star}: class {missing[0]!r} has no particles (classes: {', '.join(present)})")
    paths = [os.path.relpath(f, star.parent) for f in files]
    return Dataset(root=star.parent, x=x, labels=labels, paths=paths,
                   classes=list(classes) if classes is not None else present)
