"""Density maps of proteins simulated from atomic structures (PDB / mmCIF, plain or gzipped).

Each heavy atom contributes a 3D Gaussian whose amplitude is its atomic number and
whose standard deviation is ``0.225 x resolution`` (UCSF Chimera's ``molmap``
convention); the default voxel size is ``resolution / 3``, molmap's default grid
spacing.  Poses rotate the *coordinates* about the structure's centre, so every
rotated copy is an exact map, not an interpolated volume.

The sum over atoms is evaluated exactly, with no cut-off: a Gaussian factorises
over x, y and z, so for one item the map is ``sum_a Z_a g_a(x) g_a(y) g_a(z)``,
i.e. one matrix product of the (A, S*S) table of ``Z_a g_a(x) g_a(y)`` with the
(A, S) table of ``g_a(z)``; a batch of items is one batched matrix product.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from affvae.data.simulate import Simulator
from affvae.errors import DataError
from affvae.transforms.augment import euler_to_matrix

#: molmap: sigma = SIGMA_FACTOR x resolution
SIGMA_FACTOR = 0.225
STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
PANEL_DIR = Path(__file__).with_name("structures")
#: The benchmark panel: 18 entries (none of the built-in panel's), several of similar size
BENCHMARK_DIR = Path(__file__).with_name("benchmark_structures")
#: Names that stand for the shipped panels in ``structures``
PANELS = {"panel": PANEL_DIR, "benchmark": BENCHMARK_DIR}


@dataclass
class Atoms:
    """Heavy atoms of one structure: coordinates (A, 3) in Å about their weighted centre."""

    name: str
    xyz: np.ndarray
    z: np.ndarray
    source: str = ""

    @property
    def radius(self) -> float:
        return float(np.sqrt((self.xyz ** 2).sum(1)).max()) if len(self.xyz) else 0.0


def _is_structure(path: Path) -> bool:
    return path.name.lower().endswith(STRUCTURE_SUFFIXES)


def class_name(path: str | os.PathLike) -> str:
    """``1ake.pdb.gz`` -> ``1ake``: the file name up to its first dot, underscores made dashes
    (the anchor layout takes a file's class up to its first underscore)."""
    return Path(path).name.split(".")[0].replace("_", "-")


def structure_files(sources: Sequence[str | os.PathLike] | str | os.PathLike | None) -> list[Path]:
    """Structure files from files and folders (sorted); ``None`` or ``"panel"``: the built-in
    panel, ``"benchmark"``: the benchmark panel (:data:`PANELS`)."""
    if sources is None:
        sources = [PANEL_DIR]
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for s in sources:
        p = PANELS.get(str(s), Path(s))
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _is_structure(f))
            if not found:
                raise DataError(f"{p}: no structure files ({', '.join(STRUCTURE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such structure file or folder")
    names = [class_name(f) for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"two structure files give the class {dup[0]!r}: rename one")
    return files


def read_atoms(path: str | os.PathLike) -> Atoms:
    """Heavy atoms of the first model (no waters, no hydrogens), centred on their Z-weighted mean."""
    import gemmi

    path = Path(path)
    try:
        st = gemmi.read_structure(str(path))
    except Exception as e:  # noqa: BLE001 - gemmi raises RuntimeError/ValueError for unreadable input
        raise DataError(f"{path}: cannot read as PDB/mmCIF ({str(e).splitlines()[0] if str(e) else e})") from None
    if len(st) == 0:
        raise DataError(f"{path}: no models")
    st.remove_waters()
    st.remove_hydrogens()
    model = st[0]
    xyz, z = [], []
    for chain in model:
        for res in chain:
            for atom in res:
                if atom.element.atomic_number > 1:
                    xyz.append(atom.pos.tolist())
                    z.append(atom.element.atomic_number)
    if not xyz:
        raise DataError(f"{path}: no heavy atoms in the first model")
    xyz = np.asarray(xyz, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    centre = (xyz * z[:, None]).sum(0) / z.sum()
    return Atoms(class_name(path), xyz - centre, z, str(path))


def density_maps(atoms: Sequence[Atoms], rotations: np.ndarray, size: int, voxel_size: float,
                 resolution: float, max_elements: int = 2 ** 25) -> np.ndarray:
    """Maps (N, size, size, size) float32 of ``atoms[i]`` rotated by ``rotations[i]`` (N, 3, 3).

    Axis order (z, y, x) like the rest of affvae; the structure's centre sits at the
    box centre ``(size - 1) / 2`` in every axis.  Exact Gaussian sums, no cut-off.
    Items go in chunks whose (atoms x size^2) tables stay under ``max_elements``.
    """
    n = len(atoms)
    if n == 0:
        return np.zeros((0, size, size, size), np.float32)
    sigma = SIGMA_FACTOR * resolution / voxel_size  # in voxels
    grid = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    out = np.empty((n, size, size, size), np.float32)
    chunk = max(1, max_elements // (max(len(a.z) for a in atoms) * size * size))
    for start in range(0, n, chunk):
        part = atoms[start:start + chunk]
        a_max = max(len(a.z) for a in part)
        pos = torch.zeros(len(part), a_max, 3, dtype=torch.float64)
        w = torch.zeros(len(part), a_max, dtype=torch.float64)  # padding atoms weigh 0
        for k, a in enumerate(part):
            R = torch.from_numpy(np.asarray(rotations[start + k], dtype=np.float64))
            pos[k, :len(a.z)] = torch.from_numpy(a.xyz) @ R.T / voxel_size
            w[k, :len(a.z)] = torch.from_numpy(a.z)
        # g[b, a, axis, i] = exp(-(grid_i - pos_axis)^2 / (2 sigma^2)); coordinates are (x, y, z)
        g = torch.exp(-(grid.view(1, 1, 1, -1) - pos.unsqueeze(-1)) ** 2 / (2 * sigma ** 2)).float()
        w = w.float()
        gx, gy, gz = g[:, :, 0], g[:, :, 1], g[:, :, 2]
        zy = (w.unsqueeze(-1).unsqueeze(-1) * gz.unsqueeze(-1) * gy.unsqueeze(-2))  # (B, A, z, y)
        vol = torch.bmm(zy.reshape(len(part), a_max, -1).transpose(1, 2), gx)  # (B, z*y, x)
        out[start:start + len(part)] = vol.reshape(len(part), size, size, size).float().numpy()
    return out


@dataclass(eq=False)
class ProteinSimulator(Simulator):
    """Rotated density maps of a set of atomic structures, one class per structure.

    ``structures``: files or folders of PDB/mmCIF files (default: the built-in panel);
    ``resolution`` in Å (default 10); ``voxel_size`` in Å (default resolution / 3);
    ``size``: box edge in voxels (default 64).  Each structure must fit the box
    whatever its rotation (radius + 3 sigma within half the box).
    """

    structures: Sequence[str | os.PathLike] | str | None = None
    size: int = 64
    resolution: float = 10.0
    voxel_size: float | None = None
    rotation: str = "uniform"
    #: render by rotating the templates (:meth:`Simulator.render_fast`) instead of exactly
    fast: bool = False
    ndim: int = field(default=3, init=False)

    def __post_init__(self):
        if self.resolution <= 0:
            raise DataError(f"resolution {self.resolution}: expected a positive number of Å")
        self.voxel_size = float(self.voxel_size or self.resolution / 3)
        if self.voxel_size <= 0:
            raise DataError(f"voxel size {self.voxel_size}: expected a positive number of Å")
        self._atoms = {a.name: a for a in map(read_atoms, structure_files(self.structures))}
        self.classes = tuple(self._atoms)
        half = self.size / 2 * self.voxel_size
        for a in self._atoms.values():
            need = a.radius + 3 * SIGMA_FACTOR * self.resolution
            if need > half:
                raise DataError(
                    f"{a.source}: the structure reaches {need:.0f} Å from its centre but the box is "
                    f"{self.size} x {self.voxel_size:.3g} Å (half {half:.0f} Å): raise size or voxel size")

    def atoms(self, cls: str) -> Atoms:
        self._check_classes([cls])
        return self._atoms[cls]

    def render(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        return self.render_fast(classes, poses) if self.fast else self.render_exact(classes, poses)

    def render_exact(self, classes: Sequence[str], poses: np.ndarray) -> np.ndarray:
        self._check_classes(classes)
        R = euler_to_matrix(np.asarray(poses, dtype=np.float64).reshape(len(classes), 3))
        return density_maps([self._atoms[c] for c in classes], R, self.size, self.voxel_size,
                            self.resolution)
