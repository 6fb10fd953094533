"""Streamed, augmented training items: the same batch functions locally and on Ray Data.

A stream is a table of small item specs and one pure function that turns a batch
of specs into arrays:

* simulated data: the spec of item ``i`` is ``(class, pose, seed)``, a pure function
  of ``(stream seed, i)`` computed with a counter-based hash (no state, no per-item
  RNG objects), so item ``i`` is the same wherever and whenever it is rendered,
  and epoch ``e`` can use fresh items ``e * n .. (e + 1) * n - 1``: unlimited poses;
* a folder on disk: the spec is the file path and its class; the volume is read
  when its batch is rendered.

:func:`render_batch` renders a batch (batched: one sampling call per chunk) and
applies the configured imaging effects: a random rotation (folder data), additive
noise at an SNR and a missing wedge.  :func:`local_batches` iterates it in this
process; :func:`ray_dataset` builds the same batches as a Ray Dataset
(``map_batches`` over a table of ids), which streams with bounded memory however
large the table, so results do not depend on where they ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from affvae.transforms.poses import item_normals, poses_from_uniforms, splitmix64, uniforms


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to render items: picklable and small."""

    source: str  # "tetramino" | "alphanumeric" | "proteins" | "folder"
    classes: tuple[str, ...]  # class index = position here
    seed: int = 0
    sim: dict[str, Any] = field(default_factory=dict)  # simulator keyword arguments
    root: str | None = None  # folder source
    size: int | None = None
    normalise: str = "minmax"
    rotation: str = "uniform"
    rotate_files: bool = False  # random rotation of folder items
    snr: float | None = None
    wedge: float | None = None  # max tilt in degrees: remove the missing wedge
    ctf_defocus: float | None = None  # µm: apply a CTF (needs voxel_size)
    voxel_size: float | None = None  # Å

    def simulator(self):
        """The simulator of this spec, built once per process."""
        return _simulator_cached(self.source, tuple(sorted(self.sim.items())))


_SIMS: dict = {}


def _simulator_cached(source: str, items: tuple):
    key = (source, items)
    if key not in _SIMS:
        from affvae.data.sources import simulator_class

        _SIMS[key] = simulator_class(source)(**dict(items))  # the arguments make_simulator passes
    return _SIMS[key]


def spec_from_config(cfg, classes: Sequence[str]) -> StreamSpec:
    """The stream of a :class:`~affvae.config.Config` (simulated or folder data)."""
    d = cfg.data
    if d.source == "folder":
        return StreamSpec("folder", tuple(classes), cfg.seed, root=d.path, size=d.size,
                          normalise=d.normalise, rotate_files=d.rotate_files,
                          snr=d.snr, wedge=d.wedge, ctf_defocus=d.ctf_defocus, voxel_size=d.voxel_size)
    from affvae.data.sources import simulator_kwargs

    sim = simulator_kwargs(d)
    voxel = sim["voxel_size"] if d.source == "proteins" else d.voxel_size
    return StreamSpec(d.source, tuple(classes), cfg.seed, sim=sim, normalise=d.normalise,
                      rotation=d.rotation, snr=d.snr, wedge=d.wedge, ctf_defocus=d.ctf_defocus,
                      voxel_size=voxel)


def simulated_table(spec: StreamSpec, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Specs of simulated items ``ids``: balanced classes, poses and seeds from the hash."""
    ids = np.asarray(ids, dtype=np.int64)
    ndim = 2 if spec.source == "alphanumeric" else 3
    u = uniforms(spec.seed, ids, 4)
    pose = poses_from_uniforms(u, ndim, spec.rotation)
    item_seed = (splitmix64(ids.astype(np.uint64) ^ np.uint64(spec.seed + 7)) >> np.uint64(33)).astype(np.int64)
    return {"id": ids, "label": (ids % len(spec.classes)).astype(np.int64),
            "pose": pose.reshape(len(ids), -1).astype(np.float64), "seed": item_seed}


def render_batch(batch: dict[str, np.ndarray], spec: StreamSpec) -> dict[str, np.ndarray]:
    """Render and augment one batch of specs: returns ``{"x", "label", "id"}``.

    The same function runs in this process (:func:`local_batches`) and in Ray Data
    workers (:func:`ray_dataset`).  Noise is seeded by the items' seeds, so a
    batch renders identically anywhere.
    """
    from affvae.transforms.augment import add_noise, apply_ctf, missing_wedge, resize_to_box
    from affvae.transforms.imaging import normalise

    labels = np.asarray(batch["label"], dtype=np.int64)
    if spec.source == "folder":
        from affvae.volumes import read_volume

        x = np.stack([read_volume(p) for p in batch["path"]])
        if spec.size:
            x = resize_to_box(x, spec.size)
        if spec.rotate_files:
            from affvae.transforms.augment import pose_to_matrix, rotate

            ndim = x.ndim - 1
            u = uniforms(spec.seed, np.asarray(batch["id"]), 4)
            x = rotate(x, pose_to_matrix(poses_from_uniforms(u, ndim, "uniform" if ndim == 3 else "none"), ndim))
    else:
        sim = spec.simulator()
        names = [spec.classes[i] for i in labels]
        pose = np.asarray(batch["pose"])
        x = sim.render(names, pose[:, 0] if sim.ndim == 2 else pose)
    x = normalise(x, spec.normalise)
    if spec.wedge is not None or spec.snr is not None or spec.ctf_defocus is not None:
        t = torch.from_numpy(x)
        if spec.ctf_defocus is not None:
            t = apply_ctf(t, spec.voxel_size, spec.ctf_defocus)
        if spec.wedge is not None and t.dim() == 4:
            t = missing_wedge(t, spec.wedge)
        if spec.snr is not None:
            seeds = np.asarray(batch.get("seed", batch["id"]))
            noise = torch.from_numpy(item_normals(seeds, t[0].numel()).reshape(t.shape))
            t = add_noise(t, spec.snr, noise=noise)
        x = t.numpy()
    return {"x": x.astype(np.float32, copy=False), "label": labels, "id": np.asarray(batch["id"])}


def local_batches(spec: StreamSpec, table: dict[str, np.ndarray], batch_size: int,
                  order: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Render ``table`` (optionally reordered) batch by batch in this process."""
    n = len(next(iter(table.values())))
    order = np.arange(n) if order is None else order
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        yield render_batch({k: v[idx] for k, v in table.items()}, spec)


def _specs_for_ids(batch: dict[str, np.ndarray], spec: StreamSpec, offset: int) -> dict[str, np.ndarray]:
    return simulated_table(spec, np.asarray(batch["id"], dtype=np.int64) + offset)


def _specs_for_array(batch: dict[str, np.ndarray], spec: StreamSpec) -> dict[str, np.ndarray]:
    return simulated_table(spec, np.asarray(batch["data"], dtype=np.int64))


def ray_dataset(spec: StreamSpec, n_items: int | None = None, batch_size: int = 32, offset: int = 0,
                table: dict[str, np.ndarray] | None = None, ids: np.ndarray | None = None):
    """The same batches as a streaming Ray Dataset; rendering runs in Ray tasks.

    Simulated data starts from ``ray.data.range`` (ids ``offset .. offset + n_items``)
    or from an array of ``ids``, so no table of rendered items is ever held in
    memory; folder data starts from its small table of paths and labels.
    """
    import ray.data

    if spec.source == "folder":
        if table is None:
            raise ValueError("a folder stream needs its table of paths")
        ds = ray.data.from_items([{"id": int(i), "path": str(p), "label": int(lab)}
                                  for i, p, lab in zip(table["id"], table["path"], table["label"])])
    elif ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        parts = np.array_split(ids, max(1, -(-len(ids) // (4 * batch_size))))
        ds = ray.data.from_numpy(parts).map_batches(
            _specs_for_array, fn_kwargs={"spec": spec}, batch_size=None, batch_format="numpy")
    else:
        if n_items is None:
            raise ValueError("a simulated stream needs n_items or ids")
        # one block per few batches: enough tasks to keep every CPU busy, each
        # rendering whole batches
        blocks = max(1, -(-n_items // (4 * batch_size)))
        ds = ray.data.range(n_items, override_num_blocks=blocks).map_batches(
            _specs_for_ids, fn_kwargs={"spec": spec, "offset": offset}, batch_size=None,
            batch_format="numpy")
    return ds.map_batches(render_batch, fn_kwargs={"spec": spec}, batch_size=batch_size,
                          batch_format="numpy")


def bound_stream_memory(mib: int = 128) -> None:
    """Cap the object-store memory this process's Ray Datasets buffer (rendered blocks
    waiting to be consumed), so a stream's memory does not grow with its length."""
    from ray.data import DataContext, ExecutionResources

    DataContext.get_current().execution_options.resource_limits = ExecutionResources(
        object_store_memory=mib * 2**20)


def rank_items(n: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Positions (0..n-1) a rank trains on in an epoch, in its batch order.

    Global batch b holds positions ``b*B .. (b+1)*B - 1`` (B = ``batch_size``, full
    batches only, so every rank runs the same number of steps); rank r takes every
    W-th of them from r, as the in-memory loop of :func:`affvae.train.train` does.
    """
    local = batch_size // world
    if local < 1:
        raise ValueError(f"batch size {batch_size} is smaller than the {world} workers")
    n_batches = n // (local * world)
    pos = np.arange(n_batches * local * world).reshape(n_batches, local * world)
    return pos[:, rank::world].reshape(-1)


def epoch_batches_for(spec: StreamSpec, data, train_idx: np.ndarray, batch_size: int,
                      rank: int = 0, world: int = 1, engine: str = "local"):
    """``batches(epoch)`` for :func:`affvae.train.train`: this rank's streamed training batches.

    Simulated data: epoch e trains on fresh items ``e*n .. (e+1)*n - 1`` (n the size
    of the training split), rendered on demand.  Folder data: the training files in
    a new order each epoch, read when their batch is rendered.  ``engine`` "local"
    renders in this process; "ray" renders in Ray Data tasks and prefetches, so
    rendering overlaps the training step.  Both give the same items.
    """
    n = len(train_idx)
    local = batch_size // world
    classes = list(spec.classes)

    def table_of(epoch: int) -> dict[str, np.ndarray]:
        pos = rank_items(n, batch_size, rank, world)
        if spec.source == "folder":
            order = np.random.default_rng([spec.seed, epoch]).permutation(np.asarray(train_idx))[pos]
            return {"id": order, "path": np.array([str(Path(data.root) / data.paths[i]) for i in order]),
                    "label": np.array([classes.index(str(data.labels[i])) for i in order], dtype=np.int64)}
        return simulated_table(spec, epoch * n + pos)

    if engine == "ray":
        bound_stream_memory()

    def batches(epoch: int):
        table = table_of(epoch)
        if engine == "ray":
            ds = ray_dataset(spec, batch_size=local, table=table if spec.source == "folder" else None,
                             ids=None if spec.source == "folder" else table["id"])
            for b in ds.iter_batches(batch_size=local, batch_format="numpy", prefetch_batches=2,
                                     drop_last=True):
                yield b["x"], b["label"]
        else:
            for b in local_batches(spec, table, local):
                yield b["x"], b["label"]

    return batches


def stream_batches(cfg, data, rank: int = 0, world: int = 1, engine: str = "local"):
    """``batches(epoch)`` of a config with ``data.stream``, for :func:`affvae.train.train`."""
    from affvae.data.splits import splits_of

    return epoch_batches_for(spec_from_config(cfg, data.classes), data, splits_of(cfg, data).train,
                             cfg.train.batch_size, rank, world, engine=engine)
