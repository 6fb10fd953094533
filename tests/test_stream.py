"""The stream: pure item specs, the same batches locally and on Ray Data, training on it."""

import numpy as np
import pytest

from affvae.config import build_config
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.data.stream import (
    items_per_block,
    local_batches,
    rank_items,
    ray_dataset,
    render_batch,
    simulated_table,
    spec_from_config,
    stream_batches,
)
from affvae.train import train

TETRA = ["data.source=tetramino", "data.size=16", "data.shapes=[I, O, T]", "data.cube=3",
         "data.n_per_class=8", "model.filters=[4, 8]", "model.latent_dims=4", "train.batch_size=8",
         "train.epochs=2", "data.affinity_metric=ncc", "data.stream=true", "data.normalise=minmax"]


def test_simulated_table_is_balanced_and_renders_deterministically():
    cfg = build_config(overrides=TETRA)
    spec = spec_from_config(cfg, ["I", "O", "T"])
    t = simulated_table(spec, np.arange(30))
    assert np.bincount(t["label"]).tolist() == [10, 10, 10]
    b1 = render_batch({k: v[:6] for k, v in t.items()}, spec)
    b2 = render_batch({k: v[:6] for k, v in t.items()}, spec)
    assert b1["x"].shape == (6, 16, 16, 16) and np.array_equal(b1["x"], b2["x"])
    # every item is its class's shape in some pose: 4 cubes of 3^3 voxels before normalising
    raw = spec.simulator().render(["I"], t["pose"][:1])
    assert raw.sum() == pytest.approx(4 * 27, rel=0.02)  # partial-volume edges


def test_rank_items_split_every_global_batch_between_ranks():
    r0, r1 = rank_items(20, 8, 0, 2), rank_items(20, 8, 1, 2)
    assert r0.tolist() == [0, 2, 4, 6, 8, 10, 12, 14] and r1.tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert rank_items(20, 8).tolist() == list(range(16))  # full batches only


def test_a_render_task_makes_whole_batches_up_to_its_byte_cap():
    def spec(source, size):
        return spec_from_config(build_config(overrides=[f"data.source={source}", f"data.size={size}"]), ["a"])
    assert items_per_block(spec("tetramino", 32), 16) == 256  # 16 batches of 2 MiB
    assert items_per_block(spec("proteins", 64), 16) == 64  # 4 batches of 16 MiB: 64 MiB
    assert items_per_block(spec("proteins", 64), 128) == 128  # one batch over the cap: one batch
    assert items_per_block(spec("alphanumeric", 64), 32) == 512  # 2D items: 16 KiB each


@pytest.mark.slow
def test_ray_data_gives_the_same_items_as_the_local_path(ray_cluster):
    cfg = build_config(overrides=TETRA + ["data.snr=2", "data.wedge=60"])
    spec = spec_from_config(cfg, ["I", "O", "T"])
    ids = np.arange(100, 124)
    local = list(local_batches(spec, simulated_table(spec, ids), 8))
    # batches of another size: items must not depend on their batch
    remote = list(ray_dataset(spec, ids=ids, batch_size=5).iter_batches(batch_size=7, batch_format="numpy"))
    def by_id(batches):
        out = {}
        for b in batches:
            for i, x in zip(b["id"], b["x"]):
                out[int(i)] = x
        return out
    lo, re = by_id(local), by_id(remote)
    assert sorted(lo) == sorted(re) == ids.tolist()
    assert max(np.abs(lo[i] - re[i]).max() for i in lo) < 1e-6


@pytest.mark.slow
def test_the_ray_engine_serves_each_epoch_the_local_engines_items_in_order(ray_cluster):
    # every epoch from one Ray Dataset (epochs 0-2 asked in turn, then epoch 1 again as
    # after a restart): each epoch gets exactly its own items, in the local engine's order
    from affvae.data.stream import epoch_batches_for

    cfg = build_config(overrides=TETRA + ["data.snr=2"])
    data = build_dataset(cfg)
    spec = spec_from_config(cfg, data.classes)
    train_idx = np.arange(12)
    local = epoch_batches_for(spec, data, train_idx, 4, engine="local")
    ray_ = epoch_batches_for(spec, data, train_idx, 4, engine="ray", epochs=3)
    for epoch in (0, 1, 2, 1):
        want = [(x, y) for x, y in local(epoch)]
        got = [(x, y) for x, y in ray_(epoch)]
        assert len(got) == len(want) == 3
        for (xa, ya), (xb, yb) in zip(got, want):
            assert np.array_equal(ya, yb) and np.abs(xa - xb).max() < 1e-5  # 1 thread there, 2 here


def recording(batches):
    """``batches`` that also records, per epoch asked for, the items it served."""
    served: dict[int, list] = {}

    def wrapped(epoch):
        served[epoch] = []
        for x, y in batches(epoch):
            served[epoch].append((np.array(x), np.array(y)))
            yield x, y

    return wrapped, served


def test_training_logs_how_long_it_waited_for_its_stream():
    import time

    cfg = build_config(overrides=TETRA + ["train.epochs=1"])
    data = build_dataset(cfg)
    source = stream_batches(cfg, data)

    def slow(epoch):  # a stream that takes 0.3 s to deliver each batch
        for x, y in source(epoch):
            time.sleep(0.3)
            yield x, y

    fast = train(cfg, data, resolve_affinity(cfg, data), source).history[0]
    h = train(cfg, data, resolve_affinity(cfg, data), slow).history[0]
    assert h["train_items"] == 8  # one batch
    assert 0.3 <= h["train_wait_seconds"] <= h["train_seconds"]
    assert fast["train_wait_seconds"] < 0.3


def test_training_consumes_exactly_what_the_stream_serves_fresh_each_epoch():
    cfg = build_config(overrides=TETRA)
    data = build_dataset(cfg)
    aff = resolve_affinity(cfg, data)
    batches, served = recording(stream_batches(cfg, data))
    res = train(cfg, data, aff, batches)
    assert sorted(served) == [0, 1]  # asked once per epoch, in order
    n_served = [sum(len(y) for _, y in served[e]) for e in (0, 1)]
    # full batches of 8 from the 12 training items: 8 an epoch (the in-memory split trains all 12)
    assert len(res.splits.train) == 12 and n_served == [8, 8]
    assert [h["train_items"] for h in res.history] == n_served
    x0, x1 = (np.concatenate([x for x, _ in served[e]]) for e in (0, 1))
    assert np.abs(x0 - x1).max() > 0.5  # fresh items in epoch 2, not the first ones again
    # what the loop trains on is the stream's: a stream of flat grey volumes, which the
    # initial sigmoid decoder (about 0.5 everywhere) already reconstructs, trains another loss
    memory = train(build_config(overrides=TETRA + ["data.stream=false"]), data, aff)
    grey = train(cfg, data, aff, lambda epoch: ((np.full_like(x, 0.5), y) for x, y in served[epoch]))
    assert memory.history[0]["train_items"] == 12 and grey.history[0]["train_items"] == 8
    streamed, flat = res.history[0]["train_recon"], grey.history[0]["train_recon"]
    assert flat < 0.1 * streamed and flat < 0.1 * memory.history[0]["train_recon"]


@pytest.mark.slow
def test_two_workers_train_on_the_ray_data_stream(ray_cluster, tmp_path):
    from affvae.distributed import train_distributed

    cfg = build_config(overrides=TETRA + ["data.stream_engine=ray"])  # auto would render in the workers here
    data = build_dataset(cfg)
    res = train_distributed(cfg, data, workers=2, storage=tmp_path / "ray")
    assert [h["epoch"] for h in res.history] == [1, 2]
    # each worker renders its half of the full global batches of 8 from the 12 training
    # items: 8 items an epoch in all (the in-memory split would train 12)
    assert len(res.splits.train) == 12
    assert [h["train_items"] for h in res.history] == [8, 8]


def test_ray_data_renders_only_where_the_trainers_leave_cores_to_spare():
    from affvae.distributed import stream_engine

    # 2 cores, 2 trainers of 1 CPU: nothing to spare, so each renders its own batches
    assert stream_engine("auto", trainers=2, cores=2) == "local"
    assert stream_engine("auto", trainers=1, cores=2) == "ray"
    assert stream_engine("auto", trainers=8, cores=64) == "ray"  # a GPU node with its CPUs
    assert stream_engine("auto", trainers=4, cpus_per_worker=4, cores=16) == "local"
    assert stream_engine("auto", trainers=2, cpus_per_worker=0.5, cores=3) == "ray"
    assert stream_engine("ray", trainers=2, cores=2) == "ray"  # an explicit choice stands
    assert stream_engine("local", trainers=1, cores=64) == "local"


def test_training_streams_a_folder_of_files(tmp_path):
    from affvae.data.simulate import TetraminoSimulator, write_dataset

    sim = TetraminoSimulator(size=16, cube=3, shapes=["I", "O", "T"])
    write_dataset(sim, tmp_path / "d", n_per_class=8, progress=False)
    cfg = build_config(overrides=["data.source=folder", f"data.path={tmp_path / 'd'}", "data.stream=true",
                                  "data.rotate_files=true", "model.filters=[4, 8]", "model.latent_dims=4",
                                  "train.batch_size=4", "train.epochs=2", "data.affinity_metric=ncc"])
    data = build_dataset(cfg)
    seen = []
    batches, served = recording(stream_batches(cfg, data))
    res = train(cfg, data, resolve_affinity(cfg, data), batches, report=lambda m, ck: seen.append(m["train_total"]))
    assert seen == [h["train_total"] for h in res.history]
    items = {e: np.concatenate([x for x, _ in served[e]]) for e in (0, 1)}
    assert [h["train_items"] for h in res.history] == [len(items[0]), len(items[1])] == [len(res.splits.train)] * 2
    # the training files, read per batch in a new order and rotation each epoch
    assert sorted(np.concatenate([y for _, y in served[0]]).tolist()) == \
        sorted(data.classes.index(c) for c in data.labels[res.splits.train])
    assert np.abs(items[0] - items[1]).max() > 0.5


def test_the_stream_and_the_in_memory_dataset_make_the_same_items(tmp_path):
    # one imaging pipeline: item i rendered by the stream (in batches of another size) is
    # item i of the in-memory dataset, every imaging effect on (CTF, wedge, noise, norm)
    effects = ["data.snr=1", "data.wedge=60", "data.ctf_defocus=2", "data.voxel_size=4",
               "data.normalise=standard"]
    cfg = build_config(overrides=["data.source=tetramino", "data.size=16", "data.cube=3", "data.shapes=[I, O, T]",
                                  "data.n_per_class=3", *effects])
    ds = build_dataset(cfg)
    spec = spec_from_config(cfg, ds.classes)
    streamed = np.concatenate([b["x"] for b in local_batches(spec, simulated_table(spec, np.arange(len(ds))), 4)])
    np.testing.assert_allclose(streamed, ds.x, atol=1e-5)
    assert [spec.classes[k] for k in simulated_table(spec, np.arange(len(ds)))["label"]] == ds.labels.tolist()
    # a folder of files, imaged the same way whether read whole or per batch
    from affvae.data.simulate import TetraminoSimulator, write_dataset

    write_dataset(TetraminoSimulator(size=16, cube=3, shapes=["I", "O"]), tmp_path / "d", 3, progress=False)
    fcfg = build_config(overrides=["data.source=folder", f"data.path={tmp_path / 'd'}", *effects])
    fds = build_dataset(fcfg)
    fspec = spec_from_config(fcfg, fds.classes)
    table = {"id": np.arange(len(fds)), "path": np.array([str(fds.root / p) for p in fds.paths]),
             "label": np.zeros(len(fds), dtype=np.int64)}
    fstreamed = np.concatenate([b["x"] for b in local_batches(fspec, table, 4)])
    np.testing.assert_allclose(fstreamed, fds.x, atol=1e-5)
    assert np.abs(fds.x - build_dataset(build_config(overrides=fcfg.flat() | {"data.snr": None})).x).max() > 0.1


def test_grid_poses_are_the_same_in_the_stream_and_in_memory():
    # proteins on rotation: grid drew uniform poses in memory and grid poses in the stream
    for source, extra in (("proteins", ["data.size=32", "data.resolution=18", "data.voxel_size=6"]),
                          ("tetramino", ["data.size=16", "data.cube=3", "data.shapes=[I, O]"])):
        cfg = build_config(overrides=[f"data.source={source}", "data.rotation=grid", "data.n_per_class=2",
                                      "loss.gamma=0", *extra])
        ds = build_dataset(cfg)
        spec = spec_from_config(cfg, ds.classes)
        poses = simulated_table(spec, np.arange(len(ds)))["pose"]
        np.testing.assert_allclose(poses, ds.poses, atol=1e-9)
        streamed = np.concatenate([b["x"] for b in local_batches(spec, simulated_table(spec, np.arange(len(ds))), 3)])
        np.testing.assert_allclose(streamed, ds.x, atol=1e-5)


def test_a_streamed_folder_of_images_is_rotated(tmp_path):
    # rotate_files turns 2D items too: each epoch's draw a new in-plane angle
    from affvae.data.simulate import AlphanumericSimulator, write_dataset

    write_dataset(AlphanumericSimulator(size=32, glyphs="lt"), tmp_path / "g", 6, ext=".npy", progress=False)
    cfg = build_config(overrides=["data.source=folder", f"data.path={tmp_path / 'g'}", "data.stream=true",
                                  "data.rotate_files=true", "data.normalise=minmax", "model.filters=[4, 8]",
                                  "train.batch_size=4", "loss.gamma=0"])
    data = build_dataset(cfg)
    spec = spec_from_config(cfg, data.classes)
    table = {"id": np.arange(4), "draw": np.arange(4), "label": np.zeros(4, dtype=np.int64),
             "path": np.array([str(data.root / p) for p in data.paths[:4]])}
    turned = render_batch(table, spec)["x"]
    again = render_batch({**table, "draw": table["draw"] + 100}, spec)["x"]
    plain = render_batch(table, spec_from_config(build_config(overrides=cfg.flat() | {"data.rotate_files": False}),
                                                 data.classes))["x"]
    assert turned.shape == plain.shape == (4, 32, 32)
    assert np.abs(turned - plain).max() > 0.5 and np.abs(turned - again).max() > 0.5
    np.testing.assert_allclose(turned.sum((1, 2)), plain.sum((1, 2)), rtol=0.15)  # the same glyph, turned


@pytest.mark.parametrize("extra, symmetries", [([], False), (["data.rotation=none"], True),
                                               (["data.augment=octahedral"], True)])
def test_a_stream_of_uniform_rotations_gets_no_cube_symmetries_under_auto(extra, symmetries):
    import torch

    from affvae.train import setup, streamed_batches

    cfg = build_config(overrides=TETRA + extra)
    data = build_dataset(cfg)
    s = setup(cfg, data, resolve_affinity(cfg, data))
    batches, served = recording(stream_batches(cfg, data))
    got = [x.squeeze(1).numpy() for x, _, _ in streamed_batches(s, batches, 0, torch.Generator().manual_seed(0))]
    same = all(np.array_equal(g, x) for g, (x, _) in zip(got, served[0]))
    assert len(got) == len(served[0]) == 1 and same != symmetries
    assert s.augment  # the in-memory split of the same data keeps them
