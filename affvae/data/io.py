"""Datasets on disk in the anchor layout: reading, validating and writing volumes.

The folder layout is the one the original affinity-vae implementation used, kept
unchanged so that its users can point affvae at their existing data::

    data/
      a_0001.mrc            one object per file: <class>_<anything>.mrc|.mrcs|.npy
      a_0002.mrc
      b_whatever.npy
      template_a.mrc        optional class template: template_<class>.<ext>
      classes.csv           optional: one comma-separated line, the classes to train on
      affinity.csv          optional: affinity*.csv, class-name header + square matrix
      test/                 optional: held-out data in the same layout

The class of a file is its name up to the first underscore, so ``pol_17_b.mrc``
is class ``pol``; a data file without an underscore is an error rather than a
guess, because the anchor required the prefix and a silent fallback would make
a typo look like a new class.  Each file holds one object: a 2D image ``(H, W)``
or a 3D volume ``(D, H, W)``; leading singleton axes are dropped, so a one-image
``.mrcs`` stack ``(1, H, W)`` is a 2D image.  Hidden files, sub-folders and files
of any other type (csv, json, png, ...) are ignored.

Files named ``template_<class>.<ext>`` are class templates (used to compute the
affinity matrix), never data items; a class called ``template`` therefore cannot
exist.  The ``test/`` sub-folder is never mixed into the training items: read it
with ``load_folder(root / "test")`` when :func:`has_test_folder` says it exists;
``load_folder(root, test_folder=True)`` also validates it (readable files of the
items' shape), as ``affvae check`` and ``affvae train`` do.  A data file name that is
a broken symbolic link is an error, not a file to skip: it is an item whose data
are missing (an unmounted disk, a moved folder).

``classes.csv`` restricts training to some classes.  Items of the other classes
are still read and returned, flagged by :attr:`Dataset.seen` being ``False``,
because later stages evaluate how the model places classes it never trained on.
A class it lists without files is dropped with a warning (the reference
implementation's test folders do this), not an error, unless none would be left.

The affinity CSV is read with :func:`affvae.affinity.matrix.read_affinity_csv`
(which checks it is square, within [-1, 1] with ones on the diagonal, and
symmetrises an asymmetric one with a warning unless ``strict``); it must contain
every class to train on and is reduced to those classes, in training order, so
row ``i`` of the matrix is class ``classes[i]``.

Listing (:func:`index_folder`) is separate from reading (:func:`load_folder`)
so that a streaming reader can plan work from the index without touching the
voxels.  Every problem a user can fix raises :class:`~affvae.errors.DataError`
(or :class:`~affvae.errors.AffinityError` for the affinity CSV) with a one-line
message naming the file, class or value and what was expected.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from affvae.affinity.matrix import AffinityMatrix, read_affinity_csv
from affvae.errors import AffinityError, DataError, reason, warn
from affvae.volumes import DATA_SUFFIXES, read_stack, read_volume, shape_str

__all__ = [
    "DATA_SUFFIXES",
    "Dataset",
    "check_test_folder",
    "FolderIndex",
    "has_test_folder",
    "index_folder",
    "load_folder",
]

TEMPLATE_PREFIX = "template_"
CLASSES_FILE = "classes.csv"
AFFINITY_GLOB = "affinity*.csv"
TEST_FOLDER = "test"
#: Items resized per call to ``resize_to_box`` (bounds the temporary memory).
_RESIZE_CHUNK = 512


# --------------------------------------------------------------------------- index


@dataclass(frozen=True, eq=False)
class FolderIndex:
    """What a dataset folder holds, listed without reading any voxels.

    ``paths`` are relative to ``root`` and sorted; ``labels[i]`` is the class of
    ``paths[i]``.  ``classes`` are the classes to train on (``classes.csv`` or the
    ``classes`` argument, else every label, sorted).  ``templates`` maps a class
    to its template path (relative to ``root``).  ``affinity`` is reduced to
    ``classes`` in that order, or ``None`` when there is no affinity CSV.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    templates: dict[str, str] = field(default_factory=dict)
    affinity: AffinityMatrix | None = None
    affinity_path: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def seen(self) -> np.ndarray:
        """Boolean mask of the items whose class is one to train on."""
        return np.isin(self.labels, np.asarray(self.classes, dtype=str))

    @property
    def unseen_classes(self) -> list[str]:
        """Classes that have files but are not trained on, sorted."""
        return sorted(set(self.labels.tolist()) - set(self.classes))


def has_test_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` has a ``test/`` sub-folder (held-out data in the same layout)."""
    return (Path(root) / TEST_FOLDER).is_dir()


def _is_data_file(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in DATA_SUFFIXES and p.is_file()


def _refuse_broken_link(p: Path) -> None:
    """A data file name that is a dangling symbolic link is a missing item, not noise."""
    if p.name.startswith(".") or p.suffix.lower() not in DATA_SUFFIXES or not p.is_symlink() or p.exists():
        return
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    raise DataError(f"{p}: broken symbolic link (to {target}, which does not exist); restore its "
                    "target or remove the link")


def check_test_folder(root: str | os.PathLike, shape: Sequence[int]) -> FolderIndex | None:
    """Validate ``root/test`` like its parent: every file readable, all of ``shape``.

    Returns the test folder's index (``None`` when there is no ``test/``, or it has
    no data files, which is warned about).  Raises :class:`DataError` naming the
    first bad file.
    """
    test = Path(root) / TEST_FOLDER
    if not test.is_dir():
        return None
    if not any(p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(".") for p in test.iterdir()):
        warn(f"{test}: no data files; the test folder is ignored")
        return None
    index = index_folder(test, affinity=False)
    for rel in index.paths:
        arr = read_volume(test / rel)
        if arr.shape != tuple(shape):
            raise DataError(
                f"{test / rel}: shape {shape_str(arr.shape)} differs from {shape_str(shape)} of the "
                f"items in {Path(root)}, expected test items of the same shape"
            )
    return index


def _read_classes_csv(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read classes file ({reason(e)})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: empty, expected one comma-separated line of class names")
    if len(lines) > 1:
        raise DataError(
            f"{path}: {len(lines)} non-blank lines, expected one comma-separated line of "
            "class names (e.g. 'a,b,c')"
        )
    row = next(csv.reader(io.StringIO(lines[0])))
    return _check_class_list([c.strip() for c in row if c.strip()], str(path))


def _check_class_list(classes: Iterable[str] | str, source: str) -> list[str]:
    if isinstance(classes, str):  # "a,b,c" as typed on a command line
        classes = classes.split(",")
    classes = [str(c).strip() for c in classes]
    if not classes or any(c == "" for c in classes):
        raise DataError(f"{source}: expected a non-empty list of class names, got {classes!r}")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise DataError(f"{source}: duplicate class name(s) {', '.join(map(repr, dup))}")
    return classes


def _find_affinity_csv(root: Path) -> Path | None:
    found = sorted(p for p in root.glob(AFFINITY_GLOB) if p.is_file())
    if len(found) > 1:
        raise AffinityError(
            f"{root}: several affinity CSVs ({', '.join(p.name for p in found)}); pick one with "
            "the explicit affinity argument"
        )
    return found[0] if found else None


def index_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    affinity: str | os.PathLike | AffinityMatrix | bool | None = None,
    strict: bool = False,
) -> FolderIndex:
    """List a dataset folder in the anchor layout, without reading voxels.

    ``classes`` overrides ``classes.csv``; ``affinity`` (a CSV path or a matrix)
    overrides the ``affinity*.csv`` found in ``root``; ``affinity=False`` ignores
    any affinity CSV (for computing a new one).  Checks that every data
    file name has a ``<class>_`` prefix, that every class to train on has files,
    that templates are unambiguous and that the affinity matrix covers the
    training classes; raises :class:`DataError` / :class:`AffinityError` if not.

    Two things only warn (one line each, see :func:`affvae.errors.warn`): classes
    in ``classes.csv`` without files are dropped from the classes to train on (an
    error if none is left, or if they were given as the ``classes`` argument), and
    an asymmetric affinity matrix is replaced by its symmetric part (A + A^T)/2,
    which ``strict`` refuses instead.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset folder, found a file")
    paths, labels, templates = _list_files(root)
    train = _classes_to_train(root, classes, set(labels))
    matrix, aff_path = _affinity_of(root, affinity, train, strict)
    return FolderIndex(root=root, paths=paths, labels=np.asarray(labels, dtype=str), classes=train,
                       templates=templates, affinity=matrix, affinity_path=aff_path)


def _list_files(root: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """The data files (names and classes, in name order) and the templates of a folder."""
    paths: list[str] = []
    labels: list[str] = []
    templates: dict[str, str] = {}
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        if not _is_data_file(p):
            _refuse_broken_link(p)
            continue
        name = p.name
        if name.startswith(TEMPLATE_PREFIX):
            cls = p.stem[len(TEMPLATE_PREFIX):]
            if not cls:
                raise DataError(f"{p}: template file without a class, expected template_<class>{p.suffix}")
            if cls in templates:
                raise DataError(
                    f"{p}: second template for class {cls!r} (also {templates[cls]}), expected one"
                )
            templates[cls] = name
            continue
        cls, sep, _ = name.partition("_")
        if not sep or not cls:
            raise DataError(
                f"{p}: file name has no class prefix, expected <class>_<anything>{p.suffix} "
                "(the class is the name up to the first underscore)"
            )
        paths.append(name)
        labels.append(cls)
    if not paths:
        raise DataError(
            f"{root}: no data files, expected <class>_<anything> files ending in "
            f"{', '.join(DATA_SUFFIXES)}"
        )
    return paths, labels, templates


def _classes_to_train(root: Path, classes, present: set[str]) -> list[str]:
    """The ``classes`` argument, else classes.csv, else every class; a class of classes.csv
    without files is dropped with a warning, one of the argument refused."""
    if classes is not None:
        train = _check_class_list(classes, "classes argument")
        source = "classes argument"
    elif (root / CLASSES_FILE).is_file():
        train = _read_classes_csv(root / CLASSES_FILE)
        source = str(root / CLASSES_FILE)
    else:
        return sorted(present)
    missing = [c for c in train if c not in present]
    if not missing:
        return train
    what = (f"class{'es' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} listed to train on but "
            f"{root} has no <class>_*.mrc|.mrcs|.npy file for {'them' if len(missing) > 1 else 'it'}")
    if classes is None and len(missing) < len(train):
        # the reference implementation's own test folders list classes they hold no files
        # of; the user asked for nothing by hand here, so train on the classes that exist
        train = [c for c in train if c in present]
        warn(f"{source}: {what}; training on the other {len(train)} ({', '.join(train)})")
        return train
    raise DataError(f"{source}: {what} (found {', '.join(sorted(present))})")


def _affinity_of(root: Path, affinity, train: list[str], strict: bool):
    """(matrix over ``train``, its CSV path): the argument's, the folder's affinity*.csv, or none."""
    if affinity is False:
        return None, None
    if isinstance(affinity, AffinityMatrix):
        return affinity.validate("affinity argument", strict=strict).subset(train, "affinity argument"), None
    aff_path = Path(affinity) if affinity is not None else _find_affinity_csv(root)
    if aff_path is None:
        return None, None
    if not aff_path.is_file():
        raise AffinityError(f"{aff_path}: affinity CSV does not exist")
    return read_affinity_csv(aff_path, strict=strict).subset(train, str(aff_path)), aff_path


# --------------------------------------------------------------------------- dataset


@dataclass(eq=False)
class Dataset:
    """All objects of a folder in memory.

    ``x`` is ``(N, H, W)`` or ``(N, D, H, W)`` float32; ``labels`` and ``paths``
    (relative to ``root``) align with it.  ``classes`` are the training classes
    (see the module docstring); items of other classes are kept and have
    ``seen == False``.  ``templates`` maps class to a float32 array of the item
    shape; ``affinity`` rows follow ``classes``.
    """

    root: Path
    x: np.ndarray
    labels: np.ndarray
    paths: list[str]
    classes: list[str]
    templates: dict[str, np.ndarray] = field(default_factory=dict)
    affinity: AffinityMatrix | None = None
    #: per-item pose when known (simulated data): (N,) degrees for 2D, (N, 3) ZYZ for 3D
    poses: np.ndarray | None = None
    #: per-item seeds of simulated items (their noise); folder items get theirs from their index
    seeds: np.ndarray | None = None
    #: the shape of one item in its file, before any resizing to a box (folder data)
    file_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def ndim(self) -> int:
        """2 for images, 3 for volumes."""
        return self.x.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one item."""
        return tuple(self.x.shape[1:])

    @property
    def seen(self) -> np.ndarray:
        """Boolean mask of the items whose class is one to train on."""
        return np.isin(self.labels, np.asarray(self.classes, dtype=str))


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    from affvae.transforms.augment import resize_to_box

    nd = x.ndim - 1
    out = np.empty((x.shape[0],) + (size,) * nd, dtype=np.float32)
    for s in range(0, x.shape[0], _RESIZE_CHUNK):
        out[s:s + _RESIZE_CHUNK] = resize_to_box(x[s:s + _RESIZE_CHUNK], size)
    return out


def read_items(files: Sequence[str | os.PathLike], size: int | None = None, progress: bool = False,
               desc: str = "reading") -> np.ndarray:
    """Read same-shaped volumes (or images) into one float32 array, optionally resized."""
    x = read_stack(files, progress=progress, desc=desc)
    return _resize(x, int(size)) if size is not None else x


def load_folder(
    root: str | os.PathLike,
    *,
    size: int | None = None,
    classes: Sequence[str] | None = None,
    affinity: str | os.PathLike | AffinityMatrix | None = None,
    progress: bool = False,
    test_folder: bool = False,
    strict: bool = False,
    lazy: bool = False,
) -> Dataset:
    """Read every object (and template) of a folder in the anchor layout.

    Lists the folder with :func:`index_folder` (same ``classes``/``affinity``/``strict``
    arguments and checks), reads each file with :func:`read_volume`, checks all
    items and templates share one shape, and with ``size`` resizes them (in
    batches) to a square/cubic box of that side.  ``progress`` shows a tqdm bar.
    ``test_folder`` also validates a ``test/`` sub-folder (:func:`check_test_folder`:
    readable files of the items' shape), without keeping its items.  ``lazy`` reads
    only the first item (for the shape) and the templates: ``x`` is then a
    :class:`~affvae.data.lazy.LazyItems` that reads files when indexed (a folder
    larger than memory); a file of another shape is an error when it is read.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or size < 2):
        raise DataError(f"size={size!r}: expected an integer box side of at least 2")
    index = index_folder(root, classes=classes, affinity=affinity, strict=strict)
    root = index.root

    files = [root / rel for rel in index.paths]
    x = read_items(files[:1] if lazy else files, progress=progress, desc=f"reading {root.name}")
    first = index.paths[0]

    templates: dict[str, np.ndarray] = {}
    for cls, rel in index.templates.items():
        t = read_volume(root / rel)
        if t.shape != x.shape[1:]:
            raise DataError(
                f"{root / rel}: template shape {shape_str(t.shape)} differs from the item shape "
                f"{shape_str(x.shape[1:])} (e.g. {first})"
            )
        templates[cls] = t
    if test_folder:
        check_test_folder(root, x.shape[1:])
    file_shape = tuple(int(n) for n in x.shape[1:])

    if lazy:
        from affvae.data.lazy import LazyItems

        x = LazyItems(files, (int(size),) * len(file_shape) if size is not None else file_shape,
                      size=int(size) if size is not None else None, file_shape=file_shape)
    elif size is not None:
        x = _resize(x, int(size))
    if size is not None:
        if templates:
            names = list(templates)
            stacked = _resize(np.stack([templates[c] for c in names]), int(size))
            templates = dict(zip(names, stacked, strict=True))

    return Dataset(
        root=root,
        x=x,
        labels=index.labels,
        paths=list(index.paths),
        classes=list(index.classes),
        templates=templates,
        affinity=index.affinity,
        file_shape=file_shape,
    )
