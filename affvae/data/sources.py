"""From a data config to an in-memory dataset and its affinity matrix.

Simulated sources render every item once (batched) from reproducible specs; a
folder source reads the anchor layout with :func:`affvae.data.io.load_folder`.
Both give an :class:`affvae.data.io.Dataset` holding seen and unseen classes, its
``classes`` being the ones to train on, normalised per item as configured.
"""

from __future__ import annotations

import numpy as np

from affvae.affinity.matrix import (
    AffinityMatrix,
    compute_matrix,
    constant_error,
    medoid_index,
    read_affinity_csv,
)
from affvae.affinity.metrics import ConstantObject
from affvae.data.io import Dataset, load_folder
from affvae.data.lazy import is_lazy
from affvae.errors import ConfigError, DataError
from affvae.transforms.imaging import Imaging, image, normalise
from affvae.transforms.poses import item_seeds


def simulator_class(source: str):
    """The simulator of a simulated ``data.source``."""
    if source == "proteins":
        from affvae.data.proteins import ProteinSimulator

        return ProteinSimulator
    from affvae.data.simulate import SIMULATORS

    return SIMULATORS[source]


def simulator_kwargs(d) -> dict:
    """The simulator's arguments for a simulated data config, as hashable values.

    The one place the ``data`` keys map onto a simulator: the in-memory dataset
    and the stream both build theirs from it.
    """
    if d.source == "proteins":
        return {"structures": tuple(d.structures), "size": d.size or 64, "resolution": d.resolution,
                "voxel_size": d.voxel_size or d.resolution / 3,
                "rotation": d.rotation, "fast": d.render == "fast"}
    if d.source == "alphanumeric":
        return {"size": d.size or 64, "glyphs": tuple(g for g in d.glyphs if not g.isspace()),
                "glyph_size": d.glyph_size, "rotation": d.rotation if d.rotation != "grid" else "uniform"}
    fused = []
    for f in d.fused:
        parts = f.split("+")
        if len(parts) != 2:
            raise ConfigError(f"data.fused: {f!r}: expected two tetracubes joined by '+', e.g. L+T")
        fused.append((parts[0], parts[1]))
    return {"size": d.size or 32, "shapes": tuple(d.shapes), "cube": d.cube, "elongation": d.elongation,
            "fused": tuple(fused), "fuse_mode": d.fuse_mode, "rotation": d.rotation, "fast": d.render == "fast"}


def make_simulator(d):
    return simulator_class(d.source)(**simulator_kwargs(d))


def build_dataset(cfg, progress: bool = False) -> Dataset:
    """The whole dataset of a config: training classes plus held-out ones."""
    d = cfg.data
    if d.source in ("folder", "star"):
        if d.source == "folder":
            # a streamed folder is read when its batches are: its items too (validation, test)
            ds = load_folder(d.path, size=d.size, classes=d.classes, affinity=d.affinity, progress=progress,
                             test_folder=True, strict=d.affinity_strict, lazy=d.stream)
        else:
            from affvae.data.star import load_star

            ds = load_star(d.path, class_column=d.class_column, size=d.size, classes=d.classes,
                           progress=progress)
        if d.unseen:
            missing = [u for u in d.unseen if u not in set(ds.labels.tolist())]
            if missing:
                raise ConfigError(f"data.unseen: class {missing[0]!r} has no files in {d.path}")
            ds.classes = [c for c in ds.classes if c not in d.unseen]
            if ds.affinity is not None:
                ds.affinity = ds.affinity.subset(ds.classes)
    else:
        ds = _simulated_dataset(cfg)
    if not ds.classes:
        raise ConfigError("data: no classes left to train on")
    # the one imaging pipeline, with each item's own seed: the stream's items are imaged alike
    seeds = ds.seeds if ds.seeds is not None else item_seeds(cfg.seed, np.arange(len(ds)))
    ds.x = ds.x.imaged(Imaging.of(d), seeds) if is_lazy(ds.x) else image(ds.x, Imaging.of(d), seeds)
    ds.templates = {c: normalise(t[None], d.normalise)[0] for c, t in ds.templates.items()}
    return ds


def _simulated_dataset(cfg) -> Dataset:
    """``data.n_per_class`` items of every simulated class, rendered in batches (not imaged)."""
    d = cfg.data
    sim = make_simulator(d)
    unknown = [c for c in [*(d.classes or []), *d.unseen] if c not in sim.classes]
    if unknown:
        raise ConfigError(f"data: class {unknown[0]!r} is not simulated (classes: {', '.join(sim.classes)})")
    specs = sim.specs(d.n_per_class, seed=cfg.seed)
    x = np.concatenate([sim.render_specs(specs[i:i + 256]) for i in range(0, len(specs), 256)])
    poses = np.array([s.pose for s in specs])
    seen = d.classes or [c for c in sim.classes if c not in d.unseen]
    return Dataset(root=d.source, x=x, labels=np.array([s.cls for s in specs]),
                   paths=[f"{s.cls}_{i:06d}" for i, s in enumerate(specs)], classes=list(seen),
                   templates={c: sim.template(c) for c in sim.classes},
                   poses=poses[:, 0] if sim.ndim == 2 else poses, seeds=np.array([s.seed for s in specs]))


def resolve_affinity(cfg, ds: Dataset) -> AffinityMatrix | None:
    """The matrix training uses: None when ``loss.gamma`` is 0, else :func:`data_affinity`."""
    return None if cfg.loss.gamma == 0 else data_affinity(cfg, ds)


def data_affinity(cfg, ds: Dataset, progress: bool = False) -> AffinityMatrix:
    """The matrix over the training classes that the data config gives, whatever gamma:
    given CSV, the folder's, or computed (``progress``: a bar while it is); its
    off-diagonal stretched to ``data.affinity_range`` when that is set."""
    matrix = _affinity_of(cfg, ds, progress)
    return matrix.stretched(*cfg.data.affinity_range) if cfg.data.affinity_range else matrix


def _affinity_of(cfg, ds: Dataset, progress: bool = False) -> AffinityMatrix:
    if ds.affinity is not None:  # the folder's, or data.affinity read (and warned about) once with it
        return ds.affinity.subset(ds.classes)
    if cfg.data.affinity:
        return read_affinity_csv(cfg.data.affinity, strict=cfg.data.affinity_strict).subset(
            ds.classes, cfg.data.affinity)
    reps, sources = [], []
    metric = cfg.data.affinity_metric
    for c in ds.classes:
        if c in ds.templates:
            reps.append(ds.templates[c])
            sources.append(f"the template of class {c!r} in {ds.root}")
            continue
        idx = np.flatnonzero(ds.labels == c)[:32]
        if len(idx) == 0:
            raise DataError(f"class {c!r} has no items to estimate an affinity from")
        try:
            k = medoid_index(ds.x[idx], metric)
        except ConstantObject as e:
            raise constant_error(_item_name(ds, idx[e.index]), c, metric) from None
        reps.append(ds.x[idx[k]])
        sources.append(_item_name(ds, idx[k]))
    return compute_matrix(ds.classes, np.stack(reps), metric, align=cfg.data.affinity_align,
                          sources=sources, progress=progress)


def _item_name(ds: Dataset, i: int) -> str:
    """Item ``i`` as a user knows it: its file in a folder, else its simulated name."""
    from pathlib import Path

    return str(Path(ds.root) / ds.paths[i]) if isinstance(ds.root, Path) else f"{ds.root} item {ds.paths[i]}"
