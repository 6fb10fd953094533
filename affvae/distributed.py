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
from affvae.raysession import ensure_ray

CHECKPOINT_FILE = "checkpoint.pt"


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
        from affvae.data.stream import stream_batches

        # the trainers that may share this node: this run's, times the runs at once (Tune)
        trainers = ctx.get_local_world_size() * config["concurrent"]
        engine = stream_engine(cfg.data.stream_engine, trainers, config["cpus_per_worker"])
        batches = stream_batches(cfg, data, rank, world, engine=engine)
    try:
        train(cfg, data, config["affinity"], batches, report=report, checkpoint_dir=local,
              resume=restored is not None, device=ray.train.torch.get_device())
    finally:
        shutil.rmtree(local, ignore_errors=True)


def stream_engine(choice: str, trainers: int, cpus_per_worker: float = 1.0,
                  cores: int | None = None) -> str:
    """The engine ("ray" or "local") that renders a training worker's streamed items.

    ``choice`` is ``data.stream_engine``; "auto" takes Ray Data when this node's cores
    (``cores``, default the ones this process may run on) leave at least one to spare
    for each of the ``trainers`` training workers that may run on it, beyond the CPUs
    they hold; otherwise Ray Data's tasks would take the trainers' own cores.
    """
    if choice != "auto":
        return choice
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    spare = cores - trainers * cpus_per_worker
    return "ray" if spare >= trainers else "local"


def make_trainer(cfg, data_ref, affinity, *, workers: int = 1, use_gpu: bool = False,
                 cpus_per_worker: float = 1.0, storage: str | os.PathLike, name: str,
                 max_failures: int = 2, keep_checkpoints: int | None = None, callbacks=(),
                 concurrent: int = 1):
    """A ``TorchTrainer`` that runs :func:`_worker_loop` on ``workers`` workers.

    ``data_ref`` is the dataset in Ray's object store (``ray.put``); ``storage``
    and ``name`` locate the run's checkpoints.  Re-fitting a trainer with the same
    storage and name continues from the newest checkpoint there.  ``concurrent``:
    how many such trainers may run at once (a Tune study's trials), for the choice
    of :func:`stream_engine`.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise AffvaeError(f"--workers {workers}: expected at least 1")
    return TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "data": data_ref, "affinity": affinity,
                           "cpus_per_worker": cpus_per_worker, "concurrent": concurrent},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker,
                                                           **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                             callbacks=list(callbacks)),
    )


def read_checkpoint(path: str) -> dict:
    """The training state in a Ray Train checkpoint directory (local path or URI)."""
    from ray.train import Checkpoint

    from affvae.checkpoints import load_checkpoint

    with Checkpoint(path).as_directory() as d:
        return load_checkpoint(Path(d) / CHECKPOINT_FILE)


def result_from_state(cfg, data, state: dict, affinity=None, seconds: float = float("nan"),
                      extra: dict | None = None):
    """A :class:`~affvae.train.TrainResult` from a checkpoint's training state."""
    from affvae.data.splits import splits_of
    from affvae.model import build_model
    from affvae.train import TrainResult

    model = build_model(cfg, data.shape)
    model.load_state_dict(state["model"])
    model.eval()
    history = list(state["history"])
    splits = splits_of(cfg, data)
    return TrainResult(cfg=cfg, model=model, history=history, splits=splits, classes=list(data.classes),
                       affinity=affinity, seconds=seconds, epochs_done=len(history),
                       stopped_early=len(history) < cfg.train.epochs,
                       extra={"restarts": int(state.get("restarts", 0)), **(extra or {})})


def train_distributed(cfg, data, workers: int = 2, use_gpu: bool = False,
                      storage: str | os.PathLike | None = None, name: str = "train",
                      max_failures: int = 2, affinity=None):
    """Train with ``workers`` Ray Train workers; returns a :class:`~affvae.train.TrainResult`.

    ``storage`` is where Ray Train keeps checkpoints and results (a shared path or
    URI on a cluster; default a temporary folder).  Training resumes from the newest
    checkpoint after up to ``max_failures`` worker failures.
    """
    import ray

    from affvae.data.sources import resolve_affinity

    t0 = time.perf_counter()
    ensure_ray(num_cpus=max(os.cpu_count() or 1, workers + 1))
    if affinity is None:
        affinity = resolve_affinity(cfg, data)
    storage = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="affvae-ray-"))
    storage.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(cfg, ray.put(data), affinity, workers=workers, use_gpu=use_gpu,
                           storage=storage.resolve(), name=name, max_failures=max_failures)
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps the worker's error
        raise AffvaeError(f"distributed training failed: {failure_reason(e)}") from None
    if result.error is not None:
        raise AffvaeError(f"distributed training failed: {failure_reason(result.error)}")
    if result.checkpoint is None:
        raise AffvaeError("distributed training finished without a checkpoint")
    state = read_checkpoint(result.checkpoint.path)
    return result_from_state(cfg, data, state, affinity, seconds=time.perf_counter() - t0,
                             extra={"workers": workers, "use_gpu": use_gpu, "ray_storage": str(storage)})


def failure_reason(err: BaseException | str) -> str:
    """The user-facing cause of a failure, one line: of a Ray Train or Tune error, or of its text.

    For an exception, the first failed worker's own error (Ray wraps it); for text
    (a Tune error file, a wrapped error's message), the message of the
    ``TrialFailed`` line if there is one, else the last line (a traceback's last
    line is the error).
    """
    if isinstance(err, BaseException):
        inner = err
        failures = getattr(err, "worker_failures", None)
        if failures:
            inner = failures[min(failures)]
        inner = getattr(inner, "controller_failure", inner)
        cause = getattr(inner, "cause", None) or inner  # RayTaskError keeps the user's exception
        text = f"{cause.__class__.__name__}: {cause}" if str(cause) else cause.__class__.__name__
    else:
        text = str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "TrialFailed:" in ln:
            return ln.split("TrialFailed:", 1)[1].strip()
    return lines[-1] if lines else "unknown error"
