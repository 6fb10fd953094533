"""Simulated datasets: rotated 2D alphanumeric glyphs and rotated 3D tetracubes.

Every item is a pure function of its spec ``(class, pose)`` (plus a seed, used by
noise models downstream), so a stream can render any item on demand without
files, and writing a folder is just rendering the specs in batches.  Rendering is
batched: one tensor operation per batch, never a Python loop over items.

Glyphs come from DejaVu Sans, the font that ships inside matplotlib, rasterised
once per glyph on a fine grid (even-odd fill of the outline polygons), rotated as
a batch with bilinear sampling and binarised after area-averaging down to the
image size.  Tetracubes are rendered exactly: each voxel centre (or each of
``supersample**3`` points inside it) is mapped back into the object frame and
looked up in the object's cube occupancy grid, so an unrotated tetracube with an
integer cube edge ``c`` has exactly ``4 c**3`` voxels.
"""

from __future__ import annotations

import abc
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from affvae.errors import DataError
from affvae.transforms.augment import euler_to_matrix, plane_prefilter, pose_to_matrix, rotate
from affvae.transforms.glyphs import ALL_GLYPHS, PAPER_GLYPHS, render_glyphs
from affvae.transforms.poses import item_poses, item_seeds

#: The eight one-sided tetracubes: five planar (the tetrominoes I, O, T, L, S) and
#: three non-planar: the tripod ("branch") and the chiral pair of skew "screws".
#: Coordinates are unit cubes; the right screw steps +x, +y, +z (a right-handed
#: triple), the left screw +x, +y, -z.
TETRACUBES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "I": ((0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)),
    "O": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)),
    "T": ((0, 0, 0), (1, 0, 0), (2, 0, 0), (1, 1, 0)),
    "L": ((0, 0, 0), (1, 0, 0), (2, 0, 0), (2, 1, 0)),
    "S": ((0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 0)),
    "branch": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "screwR": ((0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)),
    "screwL": ((0, 0, 1), (1, 0, 1), (1, 1, 1), (1, 1, 0)),
}


@dataclass(frozen=True)
class ItemSpec:
    """What fully determines one simulated item."""

    cls: str
    pose: tuple[float, ...]
    seed: int = 0


# --------------------------------------------------------------------------- items


def item_table(classes: Sequence[str], ids: np.ndarray, seed: int, ndim: int,
               rotation: str = "uniform") -> dict[str, np.ndarray]:
    """Simulated items ``ids``: class index ``id mod len(classes)`` (balanced), pose and seed.

    A pure function of (classes, seed, id), so the in-memory dataset, a dataset folder
    and the stream all make item ``i`` alike; poses come from the one sampler,
    :func:`affvae.transforms.poses.item_poses`.
    """
    ids = np.asarray(ids, dtype=np.int64)
    pose = item_poses(seed, ids, ndim, rotation)
    return {"id": ids, "label": (ids % len(classes)).astype(np.int64),
            "pose": pose.reshape(len(ids), -1).astype(np.float64), "seed": item_seeds(seed, ids)}


# ------------------------------------------------------------------------ simulators


class Simulator(abc.ABC):
    """Common interface: ``render`` a batch of (class, pose), ``template`` of a class."""

    ndim: int
    size: int
    classes: tuple[str, ...]
    rotation: str = "uniform"

    @abc.abstractmethod
    def render(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        """Objects of ``classes`` in ``poses``, as one (N, *shape) float32 array."""

    def template(self, cls: str) -> np.ndarray:
        pose = np.zeros(1) if self.ndim == 2 else np.zeros((1, 3))
        return self.render_exact([cls], pose)[0]

    def render_exact(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        """The exact rendering (the simulator's own); ``render`` may take the fast path."""
        return self.render(classes, poses)

    def render_fast(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        """Objects rotated from their templates, each rendered exactly once.

        One batched rotation of the class templates (:func:`~affvae.transforms.augment.rotate`,
        order "planes": three bilinear plane resamplings of volumes sharpened once by
        :func:`~affvae.transforms.augment.plane_prefilter`) instead of an exact render
        per item, clamped to its template's range of values (which cuts the sharpening's
        ringing at sharp edges) and scaled back to its template's total (a rotation
        keeps it): a correlation with the exact rendering of 0.99 or more (tested).
        """
        self._check_classes(classes)
        if not hasattr(self, "_templates"):
            t = torch.from_numpy(np.stack([self.template(c) for c in self.classes]))
            flat = t.flatten(1)
            sharp = plane_prefilter(t) if self.ndim == 3 else t
            self._templates = (sharp, flat.amin(1), flat.amax(1), flat.sum(1))
        t, lo, hi, total = self._templates
        idx = torch.tensor([self.classes.index(c) for c in classes], dtype=torch.long)
        if not len(idx):
            return np.zeros((0,) + (self.size,) * self.ndim, np.float32)
        out = rotate(t[idx], pose_to_matrix(poses, self.ndim), order="planes")
        shape = (-1,) + (1,) * self.ndim
        # two one-sided clamps: 1.3 against 5.3 ms for 32 volumes of 64^3 by clamp_'s tensor bounds
        out = out.clamp_min_(lo[idx].view(shape)).clamp_max_(hi[idx].view(shape))
        now = out.flatten(1).sum(1)
        scale = torch.where(now.abs() > 1e-12, total[idx] / now.where(now.abs() > 1e-12, 1.0), 1.0)
        return out.mul_(scale.view(shape)).numpy()

    def _check_classes(self, classes: Sequence[str]) -> None:
        unknown = sorted(set(classes) - set(self.classes))
        if unknown:
            raise DataError(
                f"unknown class{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"(this simulator has {', '.join(self.classes)})"
            )

    def specs(self, n_per_class: int, seed: int = 0,
              classes: Sequence[str] | None = None) -> list[ItemSpec]:
        """``n_per_class`` items of each class (interleaved: item i is of class i mod C) with
        random poses and seeds, items 0 .. n*C - 1 of :func:`item_table`."""
        classes = list(classes or self.classes)
        self._check_classes(classes)
        t = item_table(classes, np.arange(n_per_class * len(classes)), seed, self.ndim, self.rotation)
        return [ItemSpec(classes[k], tuple(p.tolist()), int(sd)) for k, p, sd in zip(t["label"], t["pose"], t["seed"])]

    def render_specs(self, specs: Sequence[ItemSpec]) -> np.ndarray:
        if not specs:
            return np.zeros((0,) + (self.size,) * self.ndim, np.float32)
        poses = np.array([s.pose for s in specs], dtype=np.float64)
        if self.ndim == 2:
            poses = poses.reshape(-1)
        return self.render([s.cls for s in specs], poses)


@dataclass
class AlphanumericSimulator(Simulator):
    """Binary glyphs from DejaVu Sans, rotated in-plane by integer degrees.

    ``fill``: the height of a capital letter as a fraction of the image side (0.55
    leaves room for any glyph rotated by up to 45 degrees).  ``glyph_size``:
    "natural" keeps the font's relative sizes (lower case shorter than digits and
    capitals); "box" scales every glyph to the same outline box, so shapes are
    compared without their size (a 'z' and a '2' then overlap closely).
    """

    size: int = 64
    glyphs: Sequence[str] = PAPER_GLYPHS
    fill: float = 0.55
    max_angle: float = 45.0
    rotation: str = "uniform"
    oversample: int = 4
    glyph_size: str = "natural"
    ndim: int = field(default=2, init=False)

    def __post_init__(self):
        bad = [g for g in self.glyphs if g not in ALL_GLYPHS]
        if bad:
            raise DataError(f"glyph {bad[0]!r} is not available: expected a-z or 0-9")
        if self.size < 8:
            raise DataError(f"size {self.size}: expected at least 8 pixels")
        if self.glyph_size not in ("natural", "box"):
            raise DataError(f"glyph_size {self.glyph_size!r}: expected natural or box")
        if not 0 < self.fill <= 1:
            raise DataError(f"fill {self.fill}: expected a fraction in (0, 1]")
        self.classes = tuple(self.glyphs)

    def render(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        self._check_classes(classes)
        return render_glyphs(classes, poses, self.size, oversample=self.oversample, fill=self.fill,
                             glyph_size=self.glyph_size)


@dataclass
class TetraminoSimulator(Simulator):
    """Tetracubes in a cubic box, rotated exactly, with morphological parameters.

    ``cube``: cube edge in voxels (default ``size/6`` so any rotated piece fits);
    ``elongation``: cubes are stretched by this factor along the object's x axis;
    ``fused``: pairs of parent shapes combined into an extra class named by
    concatenating the parents ("L"+"T" -> "LT"), e.g. a novel class to hold out;
    ``fuse_mode``: "blend" (the mean of the two parents' densities: shared cubes 1,
    the others 0.5; the default) or "union" (every cube of either parent, density
    1), both with the parents in their canonical placement.  A blend resembles its
    two parents most; a union can contain a third piece (L + T is the P pentomino,
    which holds an S: FSC 0.85 to each of L, T and S);
    ``supersample``: points per voxel edge for partial-volume (anti-aliased) voxels.
    """

    size: int = 32
    shapes: Sequence[str] = tuple(TETRACUBES)
    cube: float | None = None
    elongation: float = 1.0
    fused: Sequence[tuple[str, str]] = ()
    fuse_mode: str = "blend"
    rotation: str = "uniform"
    supersample: int = 2
    #: render by rotating the templates (:meth:`Simulator.render_fast`) instead of exactly
    fast: bool = False
    ndim: int = field(default=3, init=False)

    def __post_init__(self):
        bad = [s for s in self.shapes if s not in TETRACUBES]
        if bad:
            raise DataError(f"tetracube {bad[0]!r} is unknown: expected one of {', '.join(TETRACUBES)}")
        self.cube = float(self.cube) if self.cube else float(round(self.size / 6))
        if self.cube <= 0 or self.elongation <= 0:
            raise DataError("cube edge and elongation must be positive")
        if self.fuse_mode not in ("union", "blend"):
            raise DataError(f"fuse_mode {self.fuse_mode!r}: expected union or blend")
        self._cells: dict[str, np.ndarray] = {s: np.array(TETRACUBES[s]) for s in self.shapes}
        density: dict[str, np.ndarray] = {s: np.ones(len(c)) for s, c in self._cells.items()}
        for pair in self.fused:
            a, b = pair
            for p in (a, b):
                if p not in TETRACUBES:
                    raise DataError(f"fused parent {p!r} is not a tetracube ({', '.join(TETRACUBES)})")
            both = np.concatenate([TETRACUBES[a], TETRACUBES[b]])
            cells, counts = np.unique(both, axis=0, return_counts=True)
            self._cells[f"{a}{b}"] = cells
            density[f"{a}{b}"] = np.ones(len(cells)) if self.fuse_mode == "union" else counts / 2.0
        self.classes = tuple(self._cells)
        edge = self.cube * np.array([self.elongation, 1.0, 1.0])
        reach = max(np.linalg.norm((c.max(0) + 1) * edge) / 2 for c in self._cells.values())
        if reach > self.size / 2 + 1e-9:
            raise DataError(
                f"a rotated piece (half-diagonal {reach:.1f} voxels) does not fit the box "
                f"{self.size}: lower cube ({self.cube:g}) or elongation ({self.elongation:g})"
            )
        # Occupancy grids padded by one empty cell on every side so lookups never wrap.
        self._grid = np.zeros((len(self.classes), 6, 6, 6), dtype=np.float32)
        self._origin = np.zeros((len(self.classes), 3))
        for k, (name, cells) in enumerate(self._cells.items()):
            self._grid[k, cells[:, 0] + 1, cells[:, 1] + 1, cells[:, 2] + 1] = density[name]
            # Object-frame centre snapped to whole voxels, so an unrotated piece with an
            # integer cube edge has its faces on voxel faces (exact volumes).
            self._origin[k] = np.floor((cells.max(0) + 1) * edge / 2)

    def render(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        return self.render_fast(classes, poses) if self.fast else self.render_exact(classes, poses)

    def render_exact(self, classes: Sequence[str], poses: np.ndarray, chunk: int = 16) -> np.ndarray:
        """Exact partial-volume rendering, as one sampling kernel per chunk of items.

        The cube occupancy grid is itself a tiny volume (one voxel per cube cell), so
        "which cell holds this point" is a nearest-neighbour lookup into it.  Each of
        the ``supersample**3`` points of every output voxel is mapped into the object
        frame by one affine transform per item (``affine_grid``), looked up with
        ``grid_sample(mode="nearest")`` and averaged back to voxels.
        """
        self._check_classes(classes)
        idx = torch.tensor([self.classes.index(c) for c in classes])
        R = torch.from_numpy(euler_to_matrix(poses)).float()  # (N, 3, 3)
        n, s, ss = len(classes), self.size, self.supersample
        edge = torch.tensor([self.cube * self.elongation, self.cube, self.cube])
        # occupancy as (N, 1, z, y, x) volumes of 6^3 cells
        occ = torch.from_numpy(self._grid).permute(0, 3, 2, 1).float()[idx].unsqueeze(1)
        origin = torch.from_numpy(self._origin).float()[idx]  # (N, 3) in voxels, (x, y, z)
        # output normalised coordinate v in [-1, 1] -> voxel offset from the box centre
        # u = v * s / 2 -> object frame p = R^T u + origin -> cell coordinate p / edge
        # -> occupancy normalised coordinate (p / edge + 1) / 3 - 1 (cells -1..4 span 6)
        A = (R.transpose(1, 2) * (s / 2)) / edge[None, :, None] / 3
        b = (origin / edge + 1) / 3 - 1
        theta = torch.cat([A, b.unsqueeze(2)], dim=2)
        out = []
        for k in range(0, n, chunk):
            th = theta[k:k + chunk]
            grid = F.affine_grid(th, (len(th), 1, s * ss, s * ss, s * ss), align_corners=False)
            fine = F.grid_sample(occ[k:k + chunk], grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)
            out.append(F.avg_pool3d(fine, ss).squeeze(1) if ss > 1 else fine.squeeze(1))
        return torch.cat(out).numpy() if out else np.zeros((0, s, s, s), np.float32)


SIMULATORS = {"alphanumeric": AlphanumericSimulator, "tetramino": TetraminoSimulator}


# --------------------------------------------------------------------- dataset folder


def write_dataset(sim: Simulator, out: str | os.PathLike, n_per_class: int, seed: int = 0,
                  classes: Sequence[str] | None = None, unseen: Sequence[str] = (),
                  batch_size: int = 64, ext: str = ".mrc", overwrite: bool = False,
                  progress: bool = True, params: dict | None = None, imaging=None,
                  n_test: int = 0, n_test_unseen: int | None = None, n_unseen: int | None = None) -> Path:
    """Render a dataset folder in the anchor layout.

    Writes ``<class>_<index>.<ext>`` per item, ``template_<class>.<ext>`` (the unrotated
    object, without imaging effects), ``manifest.csv`` (file, class, pose, seed),
    ``classes.csv`` (the classes to train on: all but ``unseen``) and ``provenance.json``.
    ``imaging`` (an :class:`~affvae.transforms.imaging.Imaging`: CTF, missing wedge,
    noise; the values stay unnormalised) images every item as training would.
    ``n_test`` > 0 adds a ``test/`` folder in the same layout with ``n_test`` more items of
    each class to train on and ``n_test_unseen`` (default ``n_test``) of each unseen
    class, from another seed.  ``n_unseen`` items of each unseen class go in the folder
    itself (default ``n_per_class``; 0: unseen classes only in ``test/``, as objects a
    model meets only after training).  Refuses a non-empty folder unless ``overwrite``, which
    replaces it.  Everything is written into a hidden sibling ``.<name>.partial-…``
    that is renamed to ``out`` only when complete, so an interrupted run leaves no
    folder that looks like a dataset (and a folder it replaces stays as it was).
    """
    from affvae.provenance import atomic_dir, atomic_write, write_provenance
    from affvae.volumes import write_volume

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: folder is not empty (use --overwrite to replace it)")
    if ext not in (".mrc", ".npy"):
        raise DataError(f"extension {ext!r}: expected .mrc or .npy")
    if n_per_class < 1:
        raise DataError(f"n_per_class {n_per_class}: expected at least 1")
    if n_test < 0 or (n_test_unseen is not None and n_test_unseen < 0) or (n_unseen is not None and n_unseen < 0):
        raise DataError(f"test items per class {n_test}: expected 0 or more")
    classes = list(classes or sim.classes)
    sim._check_classes(classes)
    missing_unseen = [u for u in unseen if u not in classes]
    if missing_unseen:
        raise DataError(f"unseen class {missing_unseen[0]!r} is not among the generated classes")
    seen = [c for c in classes if c not in unseen]
    with atomic_dir(out, replace=overwrite) as tmp:
        if n_unseen is None or n_unseen == n_per_class or not unseen:
            specs = sim.specs(n_per_class, seed=seed, classes=classes)
        else:
            specs = sim.specs(n_per_class, seed=seed, classes=seen)
            specs += sim.specs(n_unseen, seed=seed + 3, classes=list(unseen)) if n_unseen else []
        _write_items(sim, tmp, specs, ext, imaging, batch_size, progress, f"render {out.name}")
        if n_test:
            test = sim.specs(n_test, seed=seed + 1, classes=seen)
            n_unseen = n_test if n_test_unseen is None else n_test_unseen
            if unseen and n_unseen:
                test += sim.specs(n_unseen, seed=seed + 2, classes=list(unseen))
            _write_items(sim, tmp / "test", test, ext, imaging, batch_size, progress, f"render {out.name}/test")
        for c in classes:
            write_volume(tmp / f"template_{c}{ext}", sim.template(c))
        with atomic_write(tmp / "classes.csv") as fh:
            fh.write(",".join(seen) + "\n")
        write_provenance(tmp, params=params or {}, seed=seed)
    return out


def _write_items(sim: Simulator, folder: Path, specs: Sequence[ItemSpec], ext: str, imaging, batch_size: int,
                 progress: bool, desc: str) -> None:
    """Render, image and write ``specs`` as ``<class>_<index><ext>`` files, and their manifest.csv."""
    from tqdm import tqdm

    from affvae.provenance import atomic_write
    from affvae.transforms.imaging import image
    from affvae.volumes import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(specs))))
    names = [f"{sp.cls}_{i:0{width}d}{ext}" for i, sp in enumerate(specs)]
    with tqdm(total=len(specs), desc=desc, unit="item", disable=None if progress else True) as bar:
        for start in range(0, len(specs), batch_size):
            chunk = specs[start:start + batch_size]
            x = sim.render_specs(chunk)
            if imaging is not None:
                x = image(x, imaging, np.array([sp.seed for sp in chunk]))
            for name, arr in zip(names[start:start + batch_size], x):
                write_volume(folder / name, arr)
            bar.update(len(chunk))
    pose_cols = ["angle"] if sim.ndim == 2 else ["rot", "tilt", "psi"]
    with atomic_write(folder / "manifest.csv") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["file", "class", *pose_cols, "seed"])
        for name, sp in zip(names, specs):
            w.writerow([name, sp.cls, *(f"{a:.6g}" for a in sp.pose), sp.seed])
