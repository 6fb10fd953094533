"""The class-affinity matrix A: computation over class templates, CSV io, cache.

The CSV format is the anchor implementation's, so existing affinity files keep
working: a header row of class names and then the square matrix, one row per
class in header order, no index column::

    a,b,c
    1.0,0.3,-0.2
    0.3,1.0,0.1
    -0.2,0.1,1.0

Values are similarities in [-1, 1], the matrix is symmetric with ones on the
diagonal (1 means "same class", -1 "as different as it gets").  An asymmetric
file (the reference implementation writes them) is read as its symmetric part
(A + A^T)/2, with a warning; ``strict=True`` refuses it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from affvae.errors import AffinityError, warn
from affvae.provenance import atomic_write

#: Tolerance for symmetry and range checks of matrices read from disk.
TOL = 1e-4


@dataclass(frozen=True)
class AffinityMatrix:
    """A labelled square similarity matrix."""

    classes: tuple[str, ...]
    values: np.ndarray  # (n, n) float64

    def __post_init__(self):
        v = np.asarray(self.values, dtype=np.float64)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, cls: str) -> int:
        try:
            return self.classes.index(cls)
        except ValueError:
            raise AffinityError(
                f"class {cls!r} is not in the affinity matrix (it has {', '.join(self.classes)})"
            ) from None

    def subset(self, classes: Sequence[str], source: str = "affinity matrix") -> "AffinityMatrix":
        """The rows and columns of ``classes``, in that order."""
        missing = [c for c in classes if c not in self.classes]
        if missing:
            raise AffinityError(
                f"{source}: missing class{'es' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} (it has {', '.join(self.classes)})"
            )
        idx = [self.classes.index(c) for c in classes]
        return AffinityMatrix(tuple(classes), self.values[np.ix_(idx, idx)])

    def validate(self, source: str = "affinity matrix", strict: bool = True) -> "AffinityMatrix":
        """Check the matrix; return it, or its symmetric part when ``strict`` is off.

        Refused (:class:`AffinityError`, one line naming ``source``): a matrix that is not
        square, duplicate class names, non-finite values, values outside [-1, 1] and a
        diagonal that is not 1.  An asymmetric matrix (beyond :data:`TOL`) is refused
        when ``strict``; otherwise it is replaced by (A + A^T)/2 with one warning naming
        ``source``, the largest |A - A^T| and the pair where it is.  The reference
        implementation's own matrices are not symmetric (FSC of templates aligned one
        way only), and its users' files must keep working.
        """
        v = self.values
        n = len(self.classes)
        if v.ndim != 2 or v.shape != (n, n):
            raise AffinityError(
                f"{source}: not square: {len(self.classes)} class names but values of shape "
                f"{'x'.join(map(str, v.shape))}"
            )
        if len(set(self.classes)) != n:
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise AffinityError(f"{source}: duplicate class names {', '.join(dup)}")
        if not np.all(np.isfinite(v)):
            i, j = np.argwhere(~np.isfinite(v))[0]
            raise AffinityError(
                f"{source}: value at ({self.classes[i]}, {self.classes[j]}) is {v[i, j]}, "
                "expected a number in [-1, 1]"
            )
        bad = np.abs(v) > 1 + TOL
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise AffinityError(
                f"{source}: value {v[i, j]:g} at ({self.classes[i]}, {self.classes[j]}) is "
                "outside [-1, 1]"
            )
        diag = np.abs(np.diag(v) - 1.0) > TOL
        if diag.any():
            i = int(np.flatnonzero(diag)[0])
            raise AffinityError(
                f"{source}: diagonal value {v[i, i]:g} at ({self.classes[i]}, {self.classes[i]}), "
                "expected 1 (every class is identical to itself)"
            )
        gap = np.abs(v - v.T)
        if not (gap > TOL).any():
            return self
        i, j = sorted(np.unravel_index(int(np.argmax(gap)), gap.shape))  # the upper triangle's copy
        pair = (f"({self.classes[i]}, {self.classes[j]}) = {v[i, j]:g} but "
                f"({self.classes[j]}, {self.classes[i]}) = {v[j, i]:g}")
        if strict:
            raise AffinityError(f"{source}: not symmetric: {pair} (largest |A - A^T| {gap[i, j]:.3g})")
        warn(f"{source}: not symmetric, largest |A - A^T| is {gap[i, j]:.3g} at {pair}; "
             "using (A + A^T)/2 (data.affinity_strict: true or affvae check --strict refuses it)")
        return AffinityMatrix(self.classes, (v + v.T) / 2)

    def stretched(self, lo: float, hi: float) -> "AffinityMatrix":
        """The off-diagonal mapped linearly onto [lo, hi] (its least similar pair to ``lo``, its
        most similar to ``hi``), the diagonal kept at 1: the same order of similarity, spread
        over the cosines a latent space can hold apart."""
        v = self.values.copy()
        n = len(self.classes)
        if n < 3:
            return self
        off = ~np.eye(n, dtype=bool)
        a, b = v[off].min(), v[off].max()
        v[off] = lo + (hi - lo) * (v[off] - a) / (b - a) if b > a else (lo + hi) / 2
        return AffinityMatrix(self.classes, v)

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.classes)
        for row in self.values:
            w.writerow([repr(float(x)) for x in row])
        return buf.getvalue()


def read_affinity_csv(path: str | os.PathLike, strict: bool = False) -> AffinityMatrix:
    """Read and validate an affinity CSV in the anchor format.

    An asymmetric matrix is symmetrised with a warning unless ``strict`` (then it is
    refused); see :meth:`AffinityMatrix.validate` for what is always refused.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AffinityError(f"{path}: cannot read affinity CSV ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is not a class name
    except UnicodeDecodeError as e:
        utf16 = " (it looks like UTF-16: save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise AffinityError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}){utf16}; expected a "
            "CSV of class names and numbers"
        ) from None
    if "\x00" in text:
        raise AffinityError(f"{path}: holds NUL bytes, so it is not a text CSV; expected class names "
                            "and numbers")
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if not rows:
        raise AffinityError(f"{path}: empty affinity CSV, expected a header row of class names")
    header = [c.strip() for c in rows[0]]
    # Tolerate a leading index column (pandas' to_csv default): an empty first header
    # cell followed by rows whose first cell is the class name.
    body = rows[1:]
    if header and header[0] == "" and all(r and r[0].strip() in header[1:] for r in body):
        header = header[1:]
        body = [r[1:] for r in body]
    n = len(header)
    if len(body) != n or any(len(r) != n for r in body):
        shape = f"{len(body)} rows of {sorted({len(r) for r in body}) or [0]} values"
        raise AffinityError(
            f"{path}: not square: header names {n} classes but the body has {shape}"
        )
    try:
        values = np.array([[float(c) for c in r] for r in body], dtype=np.float64)
    except ValueError:
        for i, r in enumerate(body):
            for j, c in enumerate(r):
                try:
                    float(c)
                except ValueError:
                    raise AffinityError(
                        f"{path}: row {i + 2}, column {j + 1} ({header[j]}): {c!r} is not a number"
                    ) from None
        raise
    return AffinityMatrix(tuple(header), values).validate(str(path), strict=strict)


def write_affinity_csv(matrix: AffinityMatrix, path: str | os.PathLike) -> Path:
    """Write atomically: an interrupted write never replaces a good file."""
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(matrix.to_csv_text())
    return path


# ----------------------------------------------------------------------- computation

#: Bump when a metric's numbers change, so cached matrices are recomputed.
CACHE_VERSION = 2


def cache_dir() -> Path:
    """``$AFFVAE_CACHE_DIR`` or ``~/.cache/affvae``; affinity matrices live in ``affinity/``."""
    root = os.environ.get("AFFVAE_CACHE_DIR") or Path.home() / ".cache" / "affvae"
    return Path(root) / "affinity"


def content_hash(classes: Sequence[str], objects: np.ndarray, metric: str, align: int,
                 how: str = "local") -> str:
    """A key for the matrix: the class names, the objects' bytes, the metric, the alignment and
    how it was computed (``local`` or ``ray``), so no path ever reads another's result."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{metric}|{align}|{how}|{','.join(classes)}|".encode())
    arr = np.ascontiguousarray(objects, dtype=np.float32)
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def medoid_index(stack: np.ndarray, metric: str = "fsc") -> int:
    """Index of the object with the highest summed similarity to the others."""
    from affvae.affinity.metrics import similarity_matrix

    if len(stack) <= 2:
        return 0
    return int(np.argmax(similarity_matrix(stack, metric=metric).sum(1)))


def constant_error(where, cls: str, metric: str) -> AffinityError:
    """The error for a constant object (``where``: its file, or a description) of class ``cls``."""
    return AffinityError(f"{where}: every voxel has the same value (class {cls!r}), so the {metric} "
                         "similarity is undefined; replace or remove it")


def _prepare_task(X, rows: tuple[int, int], metric: str):
    from affvae.affinity.metrics import get_metric

    return get_metric(metric).prepare(X[rows[0]:rows[1]])


def _compare_task(fa, fb, metric: str, context) -> np.ndarray:
    from affvae.affinity.metrics import get_metric

    m = get_metric(metric)
    return (m.compare(fa, fb, context) if m.context is not None else m.compare(fa, fb)).numpy()


def _block_task(X, rows: tuple[int, int], cols: tuple[int, int], metric: str) -> np.ndarray:
    from affvae.affinity.metrics import get_metric

    m = get_metric(metric)
    fa = m.prepare(X[rows[0]:rows[1]])
    fb = fa if rows == cols else m.prepare(X[cols[0]:cols[1]])
    return m.compare(fa, fb).numpy()


def _rotation_task(X, rotations: np.ndarray, metric: str) -> np.ndarray:
    from affvae.affinity.metrics import aligned_best

    return aligned_best(X, rotations, metric)


def _gather(refs: list, desc: str, progress: bool) -> list:
    """The results of Ray tasks in the order of ``refs``, with a progress bar as they end."""
    import ray
    from tqdm import tqdm

    results: dict = {}
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", disable=None if progress else True) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[done[0]] = ray.get(done[0])
            bar.update(1)
    return [results[r] for r in refs]


def _block_pairs(n: int, shards: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    edges = np.linspace(0, n, min(shards, n) + 1).astype(int)
    blocks = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return [(r, c) for i, r in enumerate(blocks) for c in blocks[i:]]


def sharded_values(objects: np.ndarray, metric: str = "fsc", align: int = 0,
                   shards: int | None = None, progress: bool = False) -> np.ndarray:
    """The matrix values computed by Ray tasks: blocks of pairs, or blocks of rotations.

    Plain mode: the objects are cut into row blocks and one task computes each block
    pair (i <= j); the lower triangle is the transpose.  A metric whose values depend
    on the whole set (SOAP's centring) first prepares its blocks in tasks, and every
    block pair is then compared with the context of all of them, so the matrix is the
    one computed at once.  Aligned mode: one task per block of rotations computes the
    best similarity over its rotations; the driver takes the maximum.  The objects
    travel once through Ray's object store.  Same values as the local path to
    rounding (1e-12).
    """
    import ray
    import torch

    from affvae.affinity.metrics import get_metric, rotation_set, symmetrise_aligned
    from affvae.raysession import ensure_ray

    ensure_ray()
    m = get_metric(metric)
    n = len(objects)
    shards = shards or max(2, int(ray.cluster_resources().get("CPU", 2)))
    X = ray.put(np.ascontiguousarray(objects))
    desc = f"{metric} on Ray"
    if align and m.rotation_sensitive:
        rots = rotation_set(objects.ndim - 1, align)
        parts = [p for p in np.array_split(np.arange(len(rots)), min(shards, len(rots))) if len(p)]
        task = ray.remote(_rotation_task)
        best = np.maximum.reduce(_gather([task.remote(X, rots[p], metric) for p in parts], desc, progress))
        return symmetrise_aligned(best)
    pairs = _block_pairs(n, shards)
    if m.context is None:
        task = ray.remote(_block_task)
        blocks = _gather([task.remote(X, r, c, metric) for r, c in pairs], desc, progress)
    else:
        rows = sorted({r for r, _ in pairs})
        prep = ray.remote(_prepare_task)
        feats = dict(zip(rows, _gather([prep.remote(X, r, metric) for r in rows], desc, progress)))
        context = ray.put(m.context(torch.cat([feats[r] for r in rows])))
        refs = {r: ray.put(f) for r, f in feats.items()}
        task = ray.remote(_compare_task)
        blocks = _gather([task.remote(refs[r], refs[c], metric, context) for r, c in pairs], desc, progress)
    out = np.empty((n, n))
    for (r, c), block in zip(pairs, blocks):
        out[r[0]:r[1], c[0]:c[1]] = block
        out[c[0]:c[1], r[0]:r[1]] = block.T
    out = (out + out.T) / 2
    np.fill_diagonal(out, 1.0)
    return out


#: ``align`` values besides a number of rotations: "refine" searches SO(3) (or the plane)
#: coarse to fine (:mod:`affvae.affinity.align`); "auto" refines 3D objects, whose
#: templates come in arbitrary frames, and leaves 2D ones (upright glyphs) as they are
ALIGN_MODES = ("auto", "refine")


def align_mode(align: int | str, ndim: int, metric: str) -> int | str:
    """What ``align`` means for ``ndim``-D objects under ``metric``: 0 (compare as they lie),
    a number of rotations (brute force over them) or "refine"."""
    from affvae.affinity.metrics import get_metric

    if isinstance(align, str) and align not in ALIGN_MODES:
        raise AffinityError(f"align {align!r}: expected a number of rotations, {' or '.join(ALIGN_MODES)}")
    if not get_metric(metric).rotation_sensitive:
        return 0
    if align == "auto":
        return "refine" if ndim == 3 else 0
    return align


def compute_matrix(classes: Sequence[str], objects: np.ndarray, metric: str = "fsc",
                   align: int | str = 0, cache: bool = True, progress: bool = False,
                   use_ray: bool = False, shards: int | None = None,
                   sources: Sequence[str] | None = None) -> AffinityMatrix:
    """The affinity matrix over one object per class, cached by content hash.

    ``align`` (see :func:`align_mode`): 0 compares objects as they lie; a number N
    takes the best similarity over N rotations of the second object (see
    :func:`affvae.affinity.metrics.aligned_matrix`); "refine" searches the rotations
    coarse to fine (:func:`affvae.affinity.align.aligned_values`); "auto" refines
    3D objects only.  ``use_ray`` spreads the work over Ray tasks
    (:func:`sharded_values`); the result is the same.  ``sources`` (one per class:
    the file each object came from) name a constant object in the error it raises.
    """
    from affvae.affinity.metrics import ConstantObject

    try:
        return _compute_matrix(classes, objects, metric, align, cache, progress, use_ray, shards)
    except ConstantObject as e:
        where = sources[e.index] if sources is not None else f"the representative of class {classes[e.index]!r}"
        raise constant_error(where, classes[e.index], metric) from None


def _compute_matrix(classes, objects, metric, align, cache, progress, use_ray, shards) -> AffinityMatrix:
    from affvae.affinity.metrics import aligned_matrix, rotation_set, similarity_matrix

    mode = align_mode(align, np.asarray(objects).ndim - 1, metric)
    key = content_hash(classes, objects, metric, mode, "ray" if use_ray else "local")
    path = cache_dir() / f"{key}.csv"
    if cache and path.is_file():
        try:
            cached = read_affinity_csv(path, strict=True)
            if cached.classes == tuple(classes):
                return cached
        except AffinityError:
            pass  # a damaged cache entry is recomputed and replaced
    if mode == "refine":
        values = _refined_values(objects, metric, progress, use_ray, shards)
    elif use_ray:
        values = sharded_values(objects, metric, mode, shards, progress)
    elif mode:
        from tqdm import tqdm

        rots = rotation_set(objects.ndim - 1, mode)
        with tqdm(total=len(rots), desc=f"{metric} aligned", unit="rot", disable=None if progress else True) as bar:
            values = aligned_matrix(objects, rots, metric, progress=lambda k: bar.update(1))
    else:
        values = similarity_matrix(objects, metric=metric)
    result = AffinityMatrix(tuple(classes), values).validate(f"{metric} matrix")
    if cache:
        try:
            write_affinity_csv(result, path)
        except OSError:
            pass  # a read-only cache must not stop the computation
    return result


def _refined_values(objects: np.ndarray, metric: str, progress: bool, use_ray: bool,
                    shards: int | None) -> np.ndarray:
    """The coarse-to-fine aligned matrix; with Ray the coarse search runs in blocks of rotations."""
    from tqdm import tqdm

    from affvae.affinity import align

    X = np.asarray(objects)
    with tqdm(total=align.progress_steps(len(X), X.ndim - 1), desc=f"{metric} aligned", unit="step",
              disable=None if progress else True) as bar:
        if not use_ray:
            return align.aligned_values(X, metric, progress=bar.update)[0]
        import ray

        from affvae.raysession import ensure_ray

        ensure_ray()
        rots = align.coarse_rotations(X.ndim - 1)
        shards = shards or max(2, int(ray.cluster_resources().get("CPU", 2)))
        parts = [p for p in np.array_split(np.arange(len(rots)), min(shards, len(rots))) if len(p)]
        ref = ray.put(X)
        task = ray.remote(align.coarse_best)
        found = _gather([task.remote(ref, metric, rots[p]) for p in parts], f"{metric} coarse on Ray", progress)
        bar.update(len(rots))
        best, arg = align.merge_coarse(found, [len(p) for p in parts])
        return align.refine_and_measure(X, metric, rots, best, arg, progress=bar.update)[0]
