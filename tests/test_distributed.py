"""Ray Train and sharded affinity on a real (simulated multi-node) Ray cluster; no mocks."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from affvae.affinity.matrix import compute_matrix
from affvae.config import build_config
from affvae.data.simulate import TetraminoSimulator
from affvae.data.sources import build_dataset
from affvae.distributed import failure_reason, train_distributed
from affvae.train import train

# One training step on one global batch of 8: 12 items per class, 4 classes, with a
# validation and test share of 0.25 each leaves 24 training items -> 3 steps; one
# epoch of batch 8.  gamma = 0 and no batch norm make the loss a per-item mean.
DDP = ["data.source=alphanumeric", "data.size=16", "data.glyphs=aeio", "data.n_per_class=12",
       "model.filters=[4, 8]", "model.latent_dims=4", "model.pose_dims=1", "model.batch_norm=false",
       "train.batch_size=8", "train.epochs=1", "loss.gamma=0", "data.affinity_metric=ncc"]


def params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.dtype.is_floating_point])


@pytest.mark.slow
def test_sharded_affinity_equals_the_local_matrix(ray_cluster):
    sim = TetraminoSimulator(size=16, cube=3, rotation="uniform")
    X = np.stack([sim.template(c) for c in sim.classes])
    rng = np.random.default_rng(0)
    X = X + 0.05 * rng.standard_normal(X.shape)  # make every pair distinct
    classes = list(sim.classes)
    for align in (0, 7):
        local = compute_matrix(classes, X, "fsc", align=align, cache=False)
        sharded = compute_matrix(classes, X, "fsc", align=align, cache=False, use_ray=True, shards=3)
        assert np.abs(local.values - sharded.values).max() < 1e-6, align
        if align:  # alignment can only raise a similarity
            plain = compute_matrix(classes, X, "fsc", cache=False).values
            assert (sharded.values >= plain - 1e-9).all() and (sharded.values > plain + 1e-3).any()


@pytest.mark.slow
def test_sharded_soap_equals_the_local_matrix_and_is_cached_apart(ray_cluster, tmp_path, monkeypatch):
    # SOAP centres its kernel on the whole set compared: every block pair must see that
    # set, not only its two blocks
    from affvae.affinity.matrix import cache_dir
    from affvae.transforms.glyphs import render_glyphs

    glyphs = list("aebdpijz")
    X = render_glyphs(glyphs, np.linspace(-30, 30, len(glyphs)), 32)
    local = compute_matrix(glyphs, X, "soap", cache=True)
    sharded = compute_matrix(glyphs, X, "soap", cache=True, use_ray=True, shards=3)
    assert np.abs(local.values - sharded.values).max() < 1e-9
    assert np.abs(local.values - np.eye(len(glyphs))).max() > 0.3  # not a trivial matrix
    assert len(list(cache_dir().glob("*.csv"))) == 2  # one entry per way of computing


@pytest.mark.slow
def test_two_worker_ddp_step_equals_one_process_on_the_same_global_batch(ray_cluster, tmp_path):
    cfg = build_config(overrides=DDP)
    data = build_dataset(cfg)
    single = train(cfg, data)
    dist = train_distributed(cfg, data, workers=2, storage=tmp_path / "ray")
    assert dist.epochs_done == single.epochs_done == 1
    before = params(type(single.model)(data.shape, [4, 8], 4, 1, batch_norm=False))
    moved = (params(single.model) - before).abs().max()
    assert moved > 1e-4  # the step changed the parameters...
    # ...and two DDP workers, each with half of every global batch, changed them identically
    assert torch.allclose(params(dist.model), params(single.model), atol=1e-6, rtol=1e-5)
    assert dist.history[0]["train_total"] == pytest.approx(single.history[0]["train_total"], rel=1e-5)


def _ray_train_worker_pids() -> list[int]:
    """PIDs of the live Ray Train workers, from the GCS actor table (no dashboard needed)."""
    from ray._private.state import actors

    return sorted(a["Pid"] for a in actors().values()
                  if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE")


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, tmp_path):
    cfg = build_config(overrides=DDP + ["train.epochs=12", "train.checkpoint_every=1", "data.n_per_class=40"])
    data = build_dataset(cfg)
    storage = tmp_path / "ray"
    out: dict = {}

    def run():
        try:
            out["result"] = train_distributed(cfg, data, workers=2, storage=storage, max_failures=2)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and thread.is_alive():
        if len(list(Path(storage).rglob("checkpoint_*"))) >= 3:
            pids = _ray_train_worker_pids()
            if len(pids) == 2:
                victim = pids[-1]
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.2)
    thread.join(timeout=400)
    assert victim is not None, "the run ended before a worker could be killed"
    assert "error" not in out, out.get("error")
    res = out["result"]
    assert [h["epoch"] for h in res.history] == list(range(1, 13))  # none lost, none twice
    assert res.extra["restarts"] >= 1
    # fitting the finished run again (a study resumed after its trial ended unrecorded)
    # trains nothing and ends on the same last epoch and checkpoint
    again = train_distributed(cfg, data, workers=2, storage=storage, max_failures=0)
    assert [h["epoch"] for h in again.history] == list(range(1, 13))
    assert torch.equal(params(again.model), params(res.model))


def test_failure_reason_is_the_trial_failed_message():
    text = ("Traceback (most recent call last):\n  File x\nray.exceptions.RayTaskError(TrialFailed): "
            "ray::_trial() (pid=1)\naffvae.tune.TrialFailed: TrainingDiverged: epoch 1: the total loss became inf\n")
    assert failure_reason(text) == "TrainingDiverged: epoch 1: the total loss became inf"
    assert failure_reason("a\nlast line\n") == "last line"
    assert failure_reason(ValueError("bad value")) == "ValueError: bad value"
