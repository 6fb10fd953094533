"""Ray: a local or cluster session, and ``train(cfg, data)`` under Ray Train's TorchTrainer.

:func:`train_distributed` runs the one training loop of :mod:`affvae.train` in N
Ray Train workers (DistributedDataParallel: gloo on CPU, NCCL on GPU).  Rank 0's
checkpoints go to Ray Train's storage, so a run whose worker dies restarts the
worker group from the newest one (``max_failures`` times) and loses no epoch: the
history travels inside the checkpoint, so each epoch appears once however often the
run was restarted.  The driver rebuilds a :class:`~affvae.train.TrainResult` from
the final checkpoint, so the CLI saves and evaluates a distributed run exactly like
a local one.

With ``data.stream`` the workers render their share of fresh training items every
epoch through Ray Data (:mod:`affvae.data.stream`), overlapping rendering with
training; validation and test items stay the fixed ones of the dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from affvae.errors import AffvaeError

CHECKPOINT_FILE = "checkpoint.pt"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process: ``address`` (or $RAY_ADDRESS), else start a local one.

    A local Ray binds to 127.0.0.1 and runs no dashboard.  ``num_cpus`` declares the
    local node's logical CPUs (default: the machine's), e.g. more than the cores so
    that Ray Data tasks can run beside training workers that hold one CPU each.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: restore the newest checkpoint if any, then ``train``."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from affvae.config import Config
    from affvae.train import train

    cfg = Config.model_validate(config["cfg"])
    data = ray.get(config["data"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local = Path(tempfile.mkdtemp(prefix=f"affvae-rank{rank}-"))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = Path(d) / CHECKPOINT_FILE
            shutil.copy(state, local / "epoch_00000.pt")

    def report(logs: dict, path: Path | None) -> None:
        if path is not None:  # rank 0 only: train() writes checkpoints on rank 0
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(path, Path(tmp) / CHECKPOINT_FILE)
                ray.train.report(logs, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(logs)

    batches = None
    if cfg.data.stream:
        from affvae.data.stream import epoch_batches_for, spec_from_config
        from affvae.train import split_indices

        splits = split_indices(data.labels, list(data.classes), cfg.data.val_fraction,
                               cfg.data.test_fraction, cfg.seed)
        spec = spec_from_config(cfg, data.classes)
        batches = epoch_batches_for(spec, data, splits.train, cfg.train.batch_size, rank, world,
                                    engine="ray")
    try:
        train(cfg, data, report=report, checkpoint_dir=local, resume=restored is not None,
              affinity=config["affinity"], device=ray.train.torch.get_device(), batches=batches)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def train_distributed(cfg, data, workers: int = 2, use_gpu: bool = False,
                      storage: str | os.PathLike | None = None, name: str = "train",
                      max_failures: int = 2, affinity=None):
    """Train with ``workers`` Ray Train workers; returns a :class:`~affvae.train.TrainResult`.

    ``storage`` is where Ray Train keeps checkpoints and results (a shared path or
    URI on a cluster; default a temporary folder).  Training resumes from the newest
    checkpoint after up to ``max_failures`` worker failures.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from affvae.data.sources import resolve_affinity
    from affvae.model import build_model
    from affvae.train import TrainResult, load_checkpoint, split_indices

    if workers < 1:
        raise AffvaeError(f"--workers {workers}: expected at least 1")
    t0 = time.perf_counter()
    ensure_ray(num_cpus=max(os.cpu_count() or 1, workers + 1))
    if affinity is None:
        affinity = resolve_affinity(cfg, data)
    storage = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="affvae-ray-"))
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "data": ray.put(data), "affinity": affinity},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=str(storage.resolve()),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise AffvaeError(f"distributed training failed: {result.error}")
    if result.checkpoint is None:
        raise AffvaeError("distributed training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    model = build_model(cfg, data.shape)
    model.load_state_dict(state["model"])
    model.eval()
    history = list(state["history"])
    splits = split_indices(data.labels, list(data.classes), cfg.data.val_fraction,
                           cfg.data.test_fraction, cfg.seed)
    return TrainResult(cfg=cfg, model=model, history=history, splits=splits, classes=list(data.classes),
                       affinity=affinity, seconds=time.perf_counter() - t0, epochs_done=len(history),
                       stopped_early=len(history) < cfg.train.epochs,
                       extra={"restarts": int(state.get("restarts", 0)), "workers": workers,
                              "use_gpu": use_gpu, "ray_storage": str(storage)})
