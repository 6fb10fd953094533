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

from affvae.transforms.imaging import Imaging
from affvae.transforms.poses import item_poses


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to render items: picklable and small."""

    source: str  # "tetramino" | "alphanumeric" | "proteins" | "folder"
    classes: tuple[str, ...]  # class index = position here
    seed: int = 0
    sim: dict[str, Any] = field(default_factory=dict)  # simulator keyword arguments
    root: str | None = None  # folder source
    size: int | None = None
    rotation: str = "uniform"
    rotate_files: bool = False  # random rotation of folder items
    imaging: Imaging = field(default_factory=Imaging)  # effects and normalisation

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
    from affvae.transforms.imaging import Imaging

    d = cfg.data
    if d.source == "folder":
        return StreamSpec("folder", tuple(classes), cfg.seed, root=d.path, size=d.size,
                          rotate_files=d.rotate_files, imaging=Imaging.of(d))
    from affvae.data.sources import simulator_kwargs

    return StreamSpec(d.source, tuple(classes), cfg.seed, sim=simulator_kwargs(d), rotation=d.rotation,
                      imaging=Imaging.of(d))


def simulated_table(spec: StreamSpec, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Specs of simulated items ``ids`` (:func:`affvae.data.simulate.item_table`)."""
    from affvae.data.simulate import item_table

    return item_table(spec.classes, ids, spec.seed, 2 if spec.source == "alphanumeric" else 3, spec.rotation)


def render_batch(batch: dict[str, np.ndarray], spec: StreamSpec) -> dict[str, np.ndarray]:
    """Render and image one batch of specs: returns ``{"x", "label", "id"}``.

    The same function runs in this process (:func:`local_batches`) and in Ray Data
    workers (:func:`ray_dataset`): the simulator renders each item in its pose, or
    its file is read (resized, and with ``rotate_files`` turned by its own random
    pose), then the one imaging pipeline (:func:`affvae.transforms.imaging.image`)
    applies the effects with each item's own noise and normalises, exactly as the
    in-memory dataset does.
    """
    from affvae.runtime import keep_large_blocks
    from affvae.transforms.imaging import image
    from affvae.transforms.poses import item_seeds

    keep_large_blocks()  # in Ray Data workers too: batches of 64^3 volumes exceed glibc's mmap threshold
    labels = np.asarray(batch["label"], dtype=np.int64)
    ids = np.asarray(batch["id"])
    if spec.source == "folder":
        x = _read_folder_items(batch, spec)
        seeds = item_seeds(spec.seed, ids)
    else:
        sim = spec.simulator()
        pose = np.asarray(batch["pose"])
        x = sim.render([spec.classes[i] for i in labels], pose[:, 0] if sim.ndim == 2 else pose)
        seeds = np.asarray(batch["seed"])
    import torch

    # the batch is this function's own: imaged in place
    return {"x": image(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), spec.imaging, seeds).numpy(),
            "label": labels, "id": ids}


def _read_folder_items(batch: dict[str, np.ndarray], spec: StreamSpec) -> np.ndarray:
    """The batch's files, resized to the box and, with ``rotate_files``, each turned by the pose
    of its draw (``batch["draw"]``: a fresh one each epoch)."""
    from affvae.transforms.augment import pose_to_matrix, resize_to_box, rotate
    from affvae.volumes import read_volume

    x = np.stack([read_volume(p) for p in batch["path"]])
    if spec.size:
        x = resize_to_box(x, spec.size)
    if spec.rotate_files:
        ndim = x.ndim - 1
        draws = np.asarray(batch.get("draw", batch["id"]))
        pose = item_poses(spec.seed + 1, draws, ndim, "uniform", max_angle=180.0)
        x = rotate(x, pose_to_matrix(pose, ndim))
    return x


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


#: a render task's block of items: up to this many batches, and at most this many bytes
BLOCK_BATCHES = 16
BLOCK_BYTES = 64 * 2**20


def items_per_block(spec: StreamSpec, batch_size: int) -> int:
    """Items each Ray Data render task makes: whole batches, as many as fit in
    :data:`BLOCK_BATCHES` and :data:`BLOCK_BYTES` (at least one batch).

    Fewer, larger tasks cost the training ranks less on a node they fill (per task,
    Ray schedules, starts and hands over a block): 2 workers on 2 cores trained
    tetracubes at 488-499 samples/s with blocks of 16 batches of 32^3 against 431-441
    with 4 (alternated); the byte cap keeps 64^3 blocks at 4 batches of 16, as before.
    """
    size = spec.sim.get("size") or spec.size or 64
    item = 4 * size ** (2 if spec.source == "alphanumeric" else 3)
    return batch_size * max(1, min(BLOCK_BATCHES, BLOCK_BYTES // (item * batch_size)))


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
        ds = ray.data.from_items([{"id": int(i), "draw": int(d), "path": str(p), "label": int(lab)}
                                  for i, d, p, lab in zip(table["id"], table.get("draw", table["id"]),
                                                          table["path"], table["label"])])
    elif ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        parts = np.array_split(ids, max(1, -(-len(ids) // items_per_block(spec, batch_size))))
        ds = ray.data.from_numpy(parts).map_batches(
            _specs_for_array, fn_kwargs={"spec": spec}, batch_size=None, batch_format="numpy")
    else:
        if n_items is None:
            raise ValueError("a simulated stream needs n_items or ids")
        blocks = max(1, -(-n_items // items_per_block(spec, batch_size)))
        ds = ray.data.range(n_items, override_num_blocks=blocks).map_batches(
            _specs_for_ids, fn_kwargs={"spec": spec, "offset": offset}, batch_size=None,
            batch_format="numpy")
    return ds.map_batches(render_batch, fn_kwargs={"spec": spec}, batch_size=batch_size,
                          batch_format="numpy")


def bound_stream_memory(mib: int = 128) -> None:
    """Cap the object-store memory this process's Ray Datasets buffer (rendered blocks
    waiting to be consumed), so a stream's memory does not grow with its length; and
    keep their order, so each epoch gets its own items whichever task renders first; and
    let the scheduling loop wait, not spin, while the buffer is full
    (:mod:`affvae.data.ray_polling`)."""
    from ray.data import DataContext, ExecutionResources

    from affvae.data import ray_polling

    options = DataContext.get_current().execution_options
    options.resource_limits = ExecutionResources(object_store_memory=mib * 2**20)
    options.preserve_order = True
    ray_polling.install()


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
                      rank: int = 0, world: int = 1, engine: str = "local", epochs: int | None = None):
    """``batches(epoch)`` for :func:`affvae.train.train`: this rank's streamed training batches.

    Simulated data: epoch e trains on fresh items ``e*n .. (e+1)*n - 1`` (n the size
    of the training split), rendered on demand.  Folder data: the training files in
    a new order each epoch, read when their batch is rendered.  ``engine`` "local"
    renders each batch in this process just before its step (on 2 cores a rendering
    thread beside the step was measured slower for 32^3 batches: the two OpenMP teams
    fight for the cores); "ray" renders in Ray Data tasks and prefetches, so rendering
    overlaps the training step where there are cores to spare.  Both give the same items.

    With "ray" and ``epochs`` (the run's total), simulated items of every epoch still
    to come stream from one Ray Dataset, in order: no start-up per epoch, and the
    next epoch's first batches render while this one validates.
    """
    n = len(train_idx)
    local = batch_size // world
    classes = list(spec.classes)
    pos = rank_items(n, batch_size, rank, world)

    def table_of(epoch: int) -> dict[str, np.ndarray]:
        if spec.source == "folder":
            from affvae.labels import index_of

            order = np.random.default_rng([spec.seed, epoch]).permutation(np.asarray(train_idx))[pos]
            return {"id": order, "draw": epoch * len(data) + order,
                    "path": np.array([str(Path(data.root) / data.paths[i]) for i in order]),
                    "label": index_of(data.labels[order], classes)}
        return simulated_table(spec, epoch * n + pos)

    if engine == "ray":
        bound_stream_memory()
    span: dict = {"next": None, "batches": None}  # the epoch the open stream serves next, and its batches

    def spanning(epoch: int):
        if span["next"] != epoch:  # the first epoch, or another than the next (a restart): a new stream
            ids = np.concatenate([epoch_ * n + pos for epoch_ in range(epoch, max(epoch + 1, epochs))])
            span["batches"] = iter(ray_dataset(spec, batch_size=local, ids=ids).iter_batches(
                batch_size=local, batch_format="numpy", prefetch_batches=2, drop_last=True))
        span["next"] = None  # until this epoch is consumed whole
        for _ in range(len(pos) // local):
            b = next(span["batches"])
            yield b["x"], b["label"]
        span["next"] = epoch + 1

    def batches(epoch: int):
        if engine == "ray" and epochs is not None and spec.source != "folder":
            yield from spanning(epoch)
            return
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
                             cfg.train.batch_size, rank, world, engine=engine, epochs=cfg.train.epochs)
