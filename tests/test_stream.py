"""The stream: pure item specs, the same batches locally and on Ray Data, training on it."""

import numpy as np
import pytest

from affvae.config import build_config
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.data.stream import (
    local_batches,
    rank_items,
    ray_dataset,
    render_batch,
    simulated_table,
    spec_from_config,
    stream_batches,
)
from affvae.train import train
from affvae.transforms.poses import uniforms

TETRA = ["data.source=tetramino", "data.size=16", "data.shapes=[I, O, T]", "data.cube=3",
         "data.n_per_class=8", "model.filters=[4, 8]", "model.latent_dims=4", "train.batch_size=8",
         "train.epochs=2", "data.affinity_metric=ncc", "data.stream=true"]


def test_item_specs_are_a_pure_function_of_seed_and_id():
    a = uniforms(3, np.arange(100), 4)
    assert np.array_equal(a, uniforms(3, np.arange(100), 4))
    assert np.array_equal(a[40:60], uniforms(3, np.arange(40, 60), 4))  # independent of the chunk
    assert not np.array_equal(a, uniforms(4, np.arange(100), 4))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean() - 0.5) < 0.05


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


def test_training_on_the_local_stream_sees_fresh_items_each_epoch():
    cfg = build_config(overrides=TETRA)
    data = build_dataset(cfg)
    res = train(cfg, data, resolve_affinity(cfg, data), stream_batches(cfg, data))
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert all(np.isfinite(h["train_total"]) for h in res.history)
    spec = spec_from_config(cfg, data.classes)
    n = len(res.splits.train)
    e0, e1 = simulated_table(spec, np.arange(n)), simulated_table(spec, n + np.arange(n))
    assert not np.allclose(e0["pose"], e1["pose"])


def test_two_workers_train_on_the_ray_data_stream(ray_cluster, tmp_path):
    from affvae.distributed import train_distributed

    cfg = build_config(overrides=TETRA)
    data = build_dataset(cfg)
    res = train_distributed(cfg, data, workers=2, storage=tmp_path / "ray")
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert res.history[-1]["train_total"] > 0


def test_item_noise_depends_on_the_item_not_the_batch():
    from affvae.transforms.poses import item_normals

    z = item_normals(np.array([5, 6, 7]), 10001)
    assert np.array_equal(z[1:], item_normals(np.array([6, 7]), 10001))
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert abs(np.corrcoef(z[0], z[1])[0, 1]) < 0.05


def test_training_streams_a_folder_of_files(tmp_path):
    from affvae.data.simulate import TetraminoSimulator, write_dataset

    sim = TetraminoSimulator(size=16, cube=3, shapes=["I", "O", "T"])
    write_dataset(sim, tmp_path / "d", n_per_class=8, progress=False)
    cfg = build_config(overrides=["data.source=folder", f"data.path={tmp_path / 'd'}", "data.stream=true",
                                  "data.rotate_files=true", "model.filters=[4, 8]", "model.latent_dims=4",
                                  "train.batch_size=4", "train.epochs=2", "data.affinity_metric=ncc"])
    data = build_dataset(cfg)
    seen = []
    res = train(cfg, data, resolve_affinity(cfg, data), stream_batches(cfg, data),
                report=lambda m, ck: seen.append(m["train_total"]))
    assert len(seen) == 2 and all(np.isfinite(seen))
    assert res.history[0]["samples_per_second"] > 0
