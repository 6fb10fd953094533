"""Studies: Ray Tune searches over config overrides, each trial a Ray Train run, tracked in MLflow.

A study is a base config plus a search space of dotted config keys (``loss.beta``,
``loss.gamma``, ``model.latent_dims``, ``model.pose_dims``, ``data.affinity_metric``,
``train.lr``...), given as Ray Tune domains (``tune.grid_search([...])``,
``tune.loguniform(...)``).  A value may also be a dict of several overrides chosen
together, with an optional ``"name"``: ``{"name": "none", "loss.gamma": 0}``.  The
key ``trial.workers`` sets the number of Ray Train workers of a trial.

Each trial builds a :class:`~ray.train.torch.TorchTrainer` running the one
``train(cfg, data)`` loop (:mod:`affvae.distributed`), reports every epoch to Tune
through Ray Train's ``TuneReportCallback`` and checkpoints every epoch, so ASHA can
stop it at any rung and the study still has its model.  The dataset of the base
config is built once by the driver and shared through Ray's object store.

The driver keeps MLflow up to date while trials run (:class:`StudyCallback`: params,
per-epoch metrics, failures with their reason), then evaluates every trial's newest
checkpoint, finished or stopped early, into a run folder (``metrics.json``,
``latent_map.parquet``, figures) and logs it to the trial's child run; the parent run
gets the study summary (trials CSV, heatmap of the searched pair, grid of latent
embeddings).  ``resume=True`` continues an interrupted study: finished trials are not
run again, unfinished ones continue from their newest checkpoint, and MLflow runs are
found again by tag, so each trial appears once.

Study folder::

    STUDY_DIR/
      study.json            spec, provenance, status
      mlflow.db, mlartifacts/   the default MLflow store
      ray/NAME/             Ray Tune's experiment (restored by --resume)
      train/TRIAL_ID/       Ray Train's checkpoints of each trial
      trials/TRIAL_NAME/    each evaluated trial: a run folder like ``affvae train`` writes
      summary/              trials.csv, heatmap.png, embeddings_grid.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from affvae.distributed import failure_reason
from affvae.errors import AffvaeError, ConfigError
from affvae.tracking import ERROR_TAG, EVALUATED_TAG, STATUS_TAG

TRIAL_KEYS = ("trial.workers",)
TRIAL_DRIVER_CPU = 0.01  # the trial function only drives its TorchTrainer
#: What a trial's evaluation logs: the validation accuracy of its latent map (what a study
#: chooses on; best_val_accuracy is the best epoch's), then the test split's numbers
SELECT_METRIC = "val_accuracy"
#: ties on SELECT_METRIC go to the lower validation reconstruction loss (comparable across
#: beta and gamma, unlike the total loss)
TIE_BREAK = "val_recon"
FINAL_METRICS = ("val_accuracy", "best_val_accuracy", "val_recon", "accuracy", "f1_macro", "silhouette", "embedding_silhouette",
                 "novelty_auroc", "decoded_identification", "mean_offdiag_proximity", "pose_angle_best_abs_r",
                 "pose_angle_class_mean_abs_r")
ARTIFACTS = ("config.yaml", "provenance.json", "metrics.json", "history.csv", "latent_map.parquet",
             "predictions.csv", "affinity.csv")


class TrialFailed(AffvaeError):
    """A trial's training failed (the reason is the worker's own error)."""


@dataclass
class StudySpec:
    """What a study searches and how.  ``space`` maps dotted keys to Tune domains or values."""

    name: str
    base: dict[str, Any]
    space: dict[str, Any]
    metric: str = "val_accuracy"
    mode: str = "max"
    #: "asha" stops poor trials at rungs; "fifo" runs every trial to the end
    scheduler: str = "asha"
    #: ASHA: epochs before a trial can be stopped (None: a third of the epochs, the first rung
    #: where the latent map's validation accuracy ranks trials as their final one does)
    grace_period: int | None = None
    reduction_factor: float = 2.0
    num_samples: int = 1
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    #: trials at once (0: as many as the cluster's CPUs allow)
    max_concurrent: int = 0
    #: Ray Train restarts of a trial's worker group after a worker failure
    max_failures: int = 0
    #: searched keys (or composite names) laid out as rows and columns of the summary figures
    rows: str | None = None
    cols: str | None = None
    #: final metrics drawn as rows x cols heatmaps in the summary
    summary_metrics: tuple[str, ...] = ("accuracy",)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["space"] = {k: _describe_domain(v) for k, v in self.space.items()}
        return d


def _describe_domain(v: Any) -> Any:
    if isinstance(v, dict) and "grid_search" in v:
        return {"grid_search": v["grid_search"]}
    if hasattr(v, "sample"):
        return repr(v)
    return v


# -- trial config ---------------------------------------------------------------------------
def split_trial_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """A Tune trial config -> (config overrides, trial settings, shown values by search key)."""
    overrides: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    shown: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            items = {k: v for k, v in value.items() if k != "name"}
            shown[key] = str(value.get("name", ",".join(f"{k}={v}" for k, v in items.items())))
        else:
            items = {key: value}
            shown[key] = _fmt(value)
        for k, v in items.items():
            (settings if k in TRIAL_KEYS else overrides)[k] = v
    return overrides, settings, shown


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_config(base: dict[str, Any], config: dict[str, Any]):
    """The validated :class:`~affvae.config.Config` of a trial: base + the trial's overrides."""
    from affvae.config import build_config

    overrides, _, shown = split_trial_config(config)
    return build_config(base, overrides, source=f"trial {', '.join(f'{k}={v}' for k, v in shown.items())}")


def data_key(cfg) -> str:
    """Trials whose data configs agree share one dataset."""
    return json.dumps({"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed}, sort_keys=True)


def trial_affinity(cfg, data, affinities: dict[str, Any]):
    """A trial's affinity matrix: the study's for its dataset (``affinities`` by
    :func:`data_key`) when the driver computed it, once for all the trials that share the
    dataset, else computed here."""
    from affvae.data.sources import resolve_affinity

    if cfg.loss.gamma == 0:
        return None
    matrix = affinities.get(data_key(cfg))
    return matrix if matrix is not None else resolve_affinity(cfg, data)


def trial_label(config: dict[str, Any]) -> str:
    _, _, shown = split_trial_config(config)
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in shown.items()) or "trial"


# -- the trial (runs in a Ray Tune actor) ---------------------------------------------------
def _trial(config: dict[str, Any], shared: dict[str, Any]) -> None:
    """One trial: a TorchTrainer whose per-epoch reports reach Tune; raises TrialFailed."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from affvae.data.sources import build_dataset
    from affvae.distributed import make_trainer

    cfg = trial_config(shared["base"], config)
    _, settings, _ = split_trial_config(config)
    ref = shared["data"].get(data_key(cfg))
    data = ray.get(ref) if ref is not None else build_dataset(cfg)
    if ref is None:
        ref = ray.put(data)
    affinity = trial_affinity(cfg, data, shared["affinity"])
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = make_trainer(
        cfg, ref, affinity, workers=int(settings.get("trial.workers", shared["workers"])),
        use_gpu=shared["use_gpu"], cpus_per_worker=shared["cpus_per_worker"],
        storage=shared["train_storage"], name=trial_id, max_failures=shared["max_failures"],
        keep_checkpoints=2, callbacks=[TuneReportCallback()], concurrent=shared["concurrent_trials"])
    try:
        result = trainer.fit()
        error = result.error
    except Exception as e:  # noqa: BLE001 - Ray wraps the worker's own error
        error = e
    if error is not None:
        raise TrialFailed(failure_reason(error))


# -- MLflow while the study runs -------------------------------------------------------------
def _epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    keep = ("beta", "gamma", "val_accuracy", "epoch_seconds", "samples_per_second")
    return {k: v for k, v in result.items() if k.startswith(("train_", "val_")) or k in keep}


def _trial_params(base, config, settings_default: dict[str, Any]) -> dict[str, Any]:
    cfg = trial_config(base, config)
    _, settings, shown = split_trial_config(config)
    params = dict(cfg.flat())
    params["trial.workers"] = settings.get("trial.workers", settings_default["workers"])
    params["trial.use_gpu"] = settings_default["use_gpu"]
    params.update({f"search.{k}": v for k, v in shown.items()})
    return params


def _make_callback(tracker, base, settings):
    from ray.tune import Callback

    class StudyCallback(Callback):
        """Logs each trial to its MLflow child run as Tune reports (driver process)."""

        def __init__(self):
            self.tracker, self.base, self.settings = tracker, base, settings
            self._last_step: dict[str, int] = {}

        def _run(self, trial) -> str:
            return self.tracker.trial_run(trial.trial_id, trial_label(trial.config),
                                          lambda: _trial_params(self.base, trial.config, self.settings))

        def on_trial_start(self, iteration, trials, trial, **info):
            rid = self._run(trial)
            self.tracker.set_tags(rid, {STATUS_TAG: "running"})

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rid = self._run(trial)
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            if trial.trial_id not in self._last_step:  # a resumed study: skip epochs logged before
                self._last_step[trial.trial_id] = self.tracker.last_step(rid, "train_total")
            if step <= self._last_step[trial.trial_id]:
                return
            self._last_step[trial.trial_id] = step
            self.tracker.log_metrics(rid, _epoch_metrics(result), step=step)

        def on_trial_error(self, iteration, trials, trial, **info):
            rid = self._run(trial)
            reason = "unknown error"
            if trial.error_file and Path(trial.error_file).is_file():
                reason = failure_reason(Path(trial.error_file).read_text(errors="replace"))
            self.tracker.set_tags(rid, {STATUS_TAG: "failed", ERROR_TAG: reason})
            self.tracker.finish(rid, "FAILED")

    return StudyCallback()


# -- after the search: evaluate every trial's newest checkpoint -------------------------------
def evaluate_trial(base: dict[str, Any], config: dict[str, Any], checkpoint_path: str, out_dir: str,
                   data=None, affinities: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a trial's run folder from its newest checkpoint; returns its metrics.

    ``affinities``: the study's affinity matrices by dataset (:func:`trial_affinity`)."""
    from affvae.data.sources import build_dataset
    from affvae.distributed import read_checkpoint, result_from_state
    from affvae.runs import save_run

    cfg = trial_config(base, config)
    if data is None:
        data = build_dataset(cfg)
    state = read_checkpoint(checkpoint_path)
    history = list(state["history"])
    seconds = float(sum(h.get("epoch_seconds", 0.0) for h in history))
    result = result_from_state(cfg, data, state, trial_affinity(cfg, data, affinities or {}), seconds=seconds)
    metrics = save_run(result, data, out_dir)  # also writes embedding_2d.parquet (with figures)
    if history:
        rates = [h["samples_per_second"] for h in history[1:] or history if "samples_per_second" in h]
        metrics["samples_per_second"] = float(np.median(rates)) if rates else math.nan
        # the group's rate over its workers: the scaling figure of a study over trial.workers
        metrics["samples_per_second_per_worker"] = metrics["samples_per_second"] / int(history[-1].get("workers", 1))
    return metrics


# -- the study ---------------------------------------------------------------------------------
@dataclass
class StudyResult:
    study_dir: Path
    tracking_uri: str
    trials: list[dict[str, Any]]
    seconds: float
    #: the URL of the trial table in the MLflow UI
    ui_link: str = ""

    def best(self, metric: str = SELECT_METRIC) -> dict[str, Any] | None:
        """The trial chosen on validation (:func:`choose`)."""
        return choose(self.trials, metric)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def choose(trials, metric: str = SELECT_METRIC) -> dict[str, Any] | None:
    """The trial with the highest ``metric`` (validation accuracy), never a test number.

    Ties are common (a validation split of a hundred items gives several trials 1.000);
    they go to the lower validation reconstruction loss, then to the earlier trial.
    """
    done = [t for t in trials if _finite(t.get(metric))]
    return max(done, key=lambda t: _rank(t, metric), default=None)


def _rank(trial: dict[str, Any], metric: str = SELECT_METRIC) -> tuple[float, float]:
    """How :func:`choose` orders trials: ``metric`` first, then the lower ``TIE_BREAK``."""
    value = trial.get(metric)
    tie = trial.get(TIE_BREAK)
    return (value if _finite(value) else -math.inf, -tie if _finite(tie) else -math.inf)


def _scheduler(spec: StudySpec, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler == "fifo":
        return FIFOScheduler()
    if spec.scheduler != "asha":
        raise ConfigError(f"study {spec.name}: scheduler must be 'asha' or 'fifo', not {spec.scheduler!r}")
    return ASHAScheduler(time_attr="epoch", metric=spec.metric, mode=spec.mode, max_t=epochs,
                         grace_period=min(spec.grace_period or max(1, epochs // 3), epochs),
                         reduction_factor=spec.reduction_factor)


def run_study(spec: StudySpec, study_dir: str | os.PathLike, *, resume: bool = False,
              tracking_uri: str | None = None, address: str | None = None, storage: str | None = None,
              progress: bool = True) -> StudyResult:
    """Run (or with ``resume`` continue) a study; returns every trial's final numbers.

    ``storage`` is where Ray Tune and Ray Train keep trial state and checkpoints:
    by default the study folder; on a multi-node cluster a path every node shares
    (NFS) or a URI (``s3://bucket/studies``).
    """
    import ray

    from affvae.config import build_config
    from affvae.data.sources import build_dataset
    from affvae.raysession import ensure_ray

    t0 = time.perf_counter()
    study_dir = Path(study_dir).resolve()
    storage = (storage or str(study_dir)).rstrip("/")
    base_cfg = build_config(spec.base, source=f"study {spec.name}")
    tracker, state = _open_study(spec, study_dir, base_cfg, resume, tracking_uri)
    # a local Ray gets one logical CPU beyond the cores: trial drivers and evaluations are light
    ensure_ray(address, num_cpus=None if (address or os.environ.get("RAY_ADDRESS")) else
               (os.cpu_count() or 1) + 1)
    data = build_dataset(base_cfg, progress=progress)
    shared = {"base": spec.base, "data": {data_key(base_cfg): ray.put(data)},
              "affinity": _study_affinity(spec, base_cfg, data, progress), "workers": spec.workers,
              "use_gpu": spec.use_gpu, "cpus_per_worker": spec.cpus_per_worker,
              "max_failures": spec.max_failures, "train_storage": f"{storage}/train",
              "storage": storage}
    grid = _make_tuner(spec, shared, tracker, base_cfg, storage, resume, progress).fit()
    trials = finalize_study(spec, study_dir, grid, tracker, shared, progress=progress)
    _write_state(study_dir, {**state, "status": "finished", "trials": len(trials),
                             "seconds": time.perf_counter() - t0})
    return StudyResult(study_dir, state["tracking_uri"], trials, time.perf_counter() - t0, state["ui_link"])


def _study_affinity(spec: StudySpec, base_cfg, data, progress: bool = False) -> dict[str, Any]:
    """The affinity matrix of the study's dataset, computed once here for every trial that
    trains on it (trials that search the data config compute their own), when one may:
    a bad matrix then stops the study before any trial starts."""
    from affvae.data.sources import data_affinity

    key = data_key(base_cfg)
    grid = _grid_trials(spec.space)
    if grid is None:  # a sampled space: whether a trial uses it is known only as trials start
        wanted = base_cfg.loss.gamma != 0 or "loss.gamma" in spec.space
    else:
        trials = [trial_config(spec.base, config) for config in grid]
        wanted = any(c.loss.gamma != 0 and data_key(c) == key for c in trials)
    return {key: data_affinity(base_cfg, data, progress)} if wanted else {}


def _grid_trials(space: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every trial config of a space of grid searches and constants; None if any key samples."""
    import itertools

    axes = []
    for key, value in space.items():
        if isinstance(value, dict) and set(value) == {"grid_search"}:
            axes.append([(key, v) for v in value["grid_search"]])
        elif isinstance(value, (int, float, str, bool, dict)) or value is None:
            axes.append([(key, value)])
        else:
            return None
    return [dict(combo) for combo in itertools.product(*axes)]


def _write_state(study_dir: Path, state: dict[str, Any]) -> None:
    from affvae.provenance import atomic_write

    with atomic_write(study_dir / "study.json") as fh:
        json.dump(state, fh, indent=2, default=str)


def _open_study(spec: StudySpec, study_dir: Path, base_cfg, resume: bool, tracking_uri: str | None):
    """Check the folder, connect MLflow (parent run), record the study: (tracker, state)."""
    from affvae.provenance import write_provenance
    from affvae.tracking import StudyTracker, resolve_tracking_uri

    state_file = study_dir / "study.json"
    if resume and not state_file.is_file():
        raise AffvaeError(f"{study_dir}: no study to resume (missing study.json)")
    if not resume and state_file.is_file():
        raise AffvaeError(f"{study_dir}: already holds a study; use --resume to continue it or another --out")
    for key in spec.space:
        if isinstance(spec.space[key], dict) and "grid_search" not in spec.space[key]:
            raise ConfigError(f"study {spec.name}: search key {key!r}: a dict value must be tune.grid_search")
    study_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(tracking_uri, study_dir)
    tracker = StudyTracker(uri, spec.name, artifact_dir=study_dir / "mlartifacts")
    parent = tracker.parent_run({"study.description": spec.description,
                                 **{f"base.{k}": v for k, v in base_cfg.flat().items()}})
    tracker.set_trial_view(list(spec.space), order_by=SELECT_METRIC)
    state = {"spec": spec.to_json(), "tracking_uri": uri, "parent_run": parent, "status": "running",
             "ui_link": tracker.ui_link()}
    if not resume:
        write_provenance(study_dir, params={"spec": spec.to_json()}, seed=base_cfg.seed)
        _write_state(study_dir, state)
    return tracker, state


def _make_tuner(spec: StudySpec, shared: dict[str, Any], tracker, base_cfg, storage: str, resume: bool,
                progress: bool):
    """A new Tuner for the study, or the interrupted one restored from ``storage``."""
    import ray
    from ray import tune

    per_trial = spec.cpus_per_worker * spec.workers
    max_conc = spec.max_concurrent or max(1, int((ray.cluster_resources().get("CPU", 1) - 1) // per_trial))
    shared = {**shared, "concurrent_trials": max_conc}  # trials whose workers may share a node's cores
    trainable = tune.with_resources(tune.with_parameters(_trial, shared=shared), {"cpu": TRIAL_DRIVER_CPU})
    exp_dir = f"{storage}/ray/{spec.name}"
    if resume and tune.Tuner.can_restore(exp_dir):
        return tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    settings = {"workers": spec.workers, "use_gpu": spec.use_gpu}
    return tune.Tuner(
        trainable, param_space=spec.space,
        tune_config=tune.TuneConfig(scheduler=_scheduler(spec, base_cfg.train.epochs),
                                    num_samples=spec.num_samples, max_concurrent_trials=max_conc,
                                    trial_name_creator=lambda t: f"{t.trial_id}_{trial_label(t.config)}",
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(name=spec.name, storage_path=f"{storage}/ray",
                                  callbacks=[_make_callback(tracker, spec.base, settings)],
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  verbose=1 if progress else 0),
    )


def _trial_rows(spec: StudySpec, grid) -> list[dict[str, Any]]:
    """One dict per trial from Tune's results: status, epochs, newest checkpoint, error."""
    rows = []
    for res in grid:
        m = dict(res.metrics or {})
        config = res.config or {}
        epochs = trial_config(spec.base, config).train.epochs
        _, _, shown = split_trial_config(config)
        trial_id = m.get("trial_id") or Path(res.path).name
        row = {"trial_id": trial_id, "name": trial_label(config), "config": config, **shown,
               "epochs_done": int(m.get("epoch", 0) or 0), "epochs": epochs,
               "checkpoint": m.get("checkpoint_path"), "val_accuracy": m.get("val_accuracy")}
        if res.error is not None:
            row["status"] = "failed"
            row["error"] = failure_reason(str(res.error))
        elif row["epochs_done"] < epochs:
            row["status"] = "stopped_early"
        else:
            row["status"] = "completed"
        rows.append(row)
    return rows


def finalize_study(spec: StudySpec, study_dir: Path, grid, tracker, shared: dict[str, Any],
                   progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate every trial with a checkpoint, log it to MLflow, write the study summary."""
    rows = _trial_rows(spec, grid)
    runs = tracker.trial_runs()
    settings = {"workers": spec.workers, "use_gpu": spec.use_gpu}
    todo = []
    for row in rows:
        row["run_id"] = tracker.trial_run(row["trial_id"], row["name"],
                                          lambda row=row: _trial_params(spec.base, row["config"], settings))
        out = study_dir / "trials" / f"{row['trial_id']}_{_safe(row['name'])}"
        row["run_dir"] = str(out)
        run = runs.get(row["trial_id"])
        if run is not None and run.data.tags.get(EVALUATED_TAG) == "1" and (out / "metrics.json").is_file():
            _reuse_evaluation(row, run)
        elif row["status"] == "failed" or not row.get("checkpoint"):
            tracker.set_tags(row["run_id"], {STATUS_TAG: row["status"], EVALUATED_TAG: "0",
                                             **({ERROR_TAG: row["error"]} if row.get("error") else {})})
            tracker.finish(row["run_id"], "FAILED" if row["status"] == "failed" else "KILLED")
        else:
            todo.append(row)
    _evaluate_trials(spec, todo, tracker, shared, progress)
    write_summary(spec, study_dir, rows, tracker)
    return [{k: v for k, v in r.items() if k != "config"} for r in rows]


def _reuse_evaluation(row: dict[str, Any], run) -> None:
    """A trial evaluated before the study was resumed: its numbers from its MLflow run."""
    row.update({k: v for k, v in run.data.metrics.items() if k in FINAL_METRICS or k.startswith("samples_per_second")})
    row["nearest_seen"] = "; ".join(f"{k.split('.')[-1]}: {v.replace(',', ', ')}"
                                    for k, v in run.data.tags.items() if k.startswith("affvae.nearest_seen."))


def _evaluate_trials(spec: StudySpec, rows: list[dict[str, Any]], tracker, shared: dict[str, Any],
                     progress: bool) -> None:
    """Evaluate the trials' newest checkpoints in Ray tasks on this node; log each as it ends."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tqdm import tqdm

    node = ray.get_runtime_context().get_node_id()
    remote_eval = ray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))(
        _evaluate_remote)
    pending = {}
    for row in rows:
        ref = shared["data"].get(data_key(trial_config(spec.base, row["config"])))
        checkpoint = storage_path(shared["storage"], row["checkpoint"])
        pending[remote_eval.remote(spec.base, row["config"], checkpoint, row["run_dir"], ref,
                                   shared["affinity"])] = row
    with tqdm(total=len(pending), desc="evaluate trials", unit="trial",
              disable=None if progress and pending else True) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            row = pending.pop(done[0])
            try:
                metrics = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - one trial's evaluation must not end the study
                row["status"] = "failed"
                row["error"] = f"evaluation failed: {failure_reason(str(e))}"
                tracker.set_tags(row["run_id"], {STATUS_TAG: "failed", ERROR_TAG: row["error"]})
                tracker.finish(row["run_id"], "FAILED")
            else:
                _log_trial(tracker, row, metrics)
            bar.update(1)


def storage_path(storage: str, path: str) -> str:
    """A checkpoint path as Ray reports it (no scheme for URIs) -> a URI Ray can open."""
    scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    return path if not scheme or "://" in path else scheme + path.lstrip("/")


def _evaluate_remote(base, config, checkpoint, out, data, affinities):
    import torch

    torch.set_num_threads(1)
    return evaluate_trial(base, config, checkpoint, out, data, affinities)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in name)[:80]


def _log_trial(tracker, row: dict[str, Any], metrics: dict[str, Any]) -> None:
    out = Path(row["run_dir"])
    final = {k: metrics.get(k) for k in (*FINAL_METRICS, "samples_per_second", "samples_per_second_per_worker")}
    row.update({k: v for k, v in final.items() if v is not None})
    step = row["epochs_done"]
    tracker.log_metrics(row["run_id"], final, step=step)
    tracker.log_artifacts(row["run_id"], [out / f for f in ARTIFACTS])
    figures = [*sorted((out / "figures").glob("*.png")), out / "figures" / "latent_map.html"]
    tracker.log_artifacts(row["run_id"], figures, "figures")
    near = metrics.get("nearest_seen") or {}
    row["nearest_seen"] = "; ".join(f"{c}: {', '.join(v)}" for c, v in near.items())
    tags = {STATUS_TAG: row["status"], EVALUATED_TAG: "1", "affvae.run_dir": str(out)}
    tags.update({f"affvae.nearest_seen.{c}": ",".join(v) for c, v in near.items()})
    tracker.set_tags(row["run_id"], tags)
    tracker.finish(row["run_id"], "FINISHED")


def write_summary(spec: StudySpec, study_dir: Path, rows: list[dict[str, Any]], tracker) -> dict[str, Path]:
    """trials.csv, the heatmap of the searched pair and the grid of embeddings -> parent run."""
    import pandas as pd

    from affvae.provenance import atomic_save

    out = study_dir / "summary"
    out.mkdir(parents=True, exist_ok=True)
    cols = ["trial_id", "name", "status", *spec.space, "epochs_done", "epochs", *FINAL_METRICS,
            "samples_per_second", "samples_per_second_per_worker", "nearest_seen", "run_id", "run_dir", "error"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    paths = {"trials": out / "trials.csv"}
    atomic_save(paths["trials"], lambda tmp: df.to_csv(tmp, index=False))
    if spec.cols and spec.cols in df:
        paths.update(_summary_figures(spec, df, out))
    best = choose(rows)  # on validation; its test accuracy reported beside
    paths.update(_trial_figures(spec, df, out, best["name"] if best else None))
    parent = tracker.parent_run()
    tracker.log_artifacts(parent, paths.values(), "summary")
    summary = {"trials": len(df), "trials_failed": int((df["status"] == "failed").sum()),
               "trials_stopped_early": int((df["status"] == "stopped_early").sum())}
    if best is not None:
        summary.update({"best_val_accuracy": best[SELECT_METRIC], "best_trial_test_accuracy": best.get("accuracy")})
        tracker.set_tags(parent, {"affvae.best_trial": best["name"], "affvae.best_run_id": best.get("run_id")})
    tracker.log_metrics(parent, summary)
    tracker.finish(parent, "FINISHED")
    return paths


def _trial_figures(spec: StudySpec, df, out: Path, best: str | None) -> dict[str, Path]:
    """Parallel coordinates (searched keys -> validation accuracy) and every trial's
    validation accuracy per epoch, from the trials' run folders."""
    import pandas as pd

    from affvae.plots import plot_curves, plot_parallel_coordinates

    paths = {}
    keys = [k for k in spec.space if k in df and df[k].notna().any()]
    if keys and pd.to_numeric(df[SELECT_METRIC], errors="coerce").notna().any():
        paths["parallel"] = plot_parallel_coordinates(
            df, keys, SELECT_METRIC, out / "parallel_coordinates.png",
            title=f"{spec.name}: searched values and the validation accuracy they reach")
    curves = {}
    for _, row in df.iterrows():
        hist = Path(str(row["run_dir"])) / "history.csv"
        if hist.is_file():
            h = pd.read_csv(hist)
            if "val_accuracy" in h:
                curves[row["name"]] = (h["epoch"].to_numpy(), h["val_accuracy"].to_numpy())
    if curves:
        paths["curves"] = plot_curves(curves, out / "val_accuracy_per_epoch.png", highlight=best,
                                      title=f"{spec.name}: validation accuracy (latent map) per epoch")
    return paths


def _summary_figures(spec: StudySpec, df, out: Path) -> dict[str, Path]:
    """Heatmaps of the summary metrics over (rows x cols) and the grid of latent embeddings."""
    from affvae.plots import plot_embedding_grid, plot_matrix

    row_key = spec.rows if spec.rows and spec.rows in df else None
    col_key = spec.cols
    grid = df.assign(_row=df[row_key].astype(str) if row_key else "", _col=df[col_key].astype(str))
    row_vals = _ordered(grid["_row"])
    col_vals = _ordered(grid["_col"])
    rname = row_key.split(".")[-1] if row_key else ""
    cname = col_key.split(".")[-1]
    paths = {}
    for metric in spec.summary_metrics:
        vals = _pivot(grid, metric, row_vals, col_vals)
        bounded = metric in ("accuracy", "f1_macro", "novelty_auroc", "best_val_accuracy", "val_accuracy")
        finite = np.isfinite(vals).any()
        lo, hi = (0.0, 1.0) if bounded else (float(np.nanmin(vals)) if finite else 0.0,
                                             float(np.nanmax(vals)) if finite else 1.0)
        name = "heatmap.png" if metric == "accuracy" else f"heatmap_{metric}.png"
        paths[f"heatmap_{metric}"] = plot_matrix(
            vals, col_vals, out / name, row_labels=row_vals if row_key else [metric], vmin=lo,
            vmax=hi if hi > lo else lo + 1.0, cmap="viridis", colorbar_label=metric,
            fmt=".2f" if bounded else ".3g", annotate=True, xlabel=cname, ylabel=rname,
            title=f"{spec.name}: {metric}" + (f" ({rname} x {cname})" if rname else f" by {cname}"))
    cells = _embedding_cells(grid)
    if cells:
        paths["embeddings"] = plot_embedding_grid(cells, row_vals, col_vals, out / "embeddings_grid.png",
                                                  row_name=rname, col_name=cname,
                                                  title=f"{spec.name}: latent embeddings (test + unseen)")
    return paths


def _pivot(grid, metric: str, row_vals: list[str], col_vals: list[str]) -> np.ndarray:
    """The mean of ``metric`` per (row, col) cell, NaN where no trial has it."""
    import pandas as pd

    vals = grid.assign(_v=pd.to_numeric(grid[metric], errors="coerce")).pivot_table(
        index="_row", columns="_col", values="_v", aggfunc="mean")
    return vals.reindex(index=row_vals, columns=col_vals).to_numpy(dtype=float)


def _embedding_cells(grid) -> dict[tuple[str, str], Any]:
    """The plotted 2-D embedding of the first evaluated trial of every (row, col) cell."""
    from affvae.runs import read_embedding_2d

    cells = {}
    for (rv, cv), trials in grid[grid["accuracy"].notna()].groupby(["_row", "_col"], sort=False):
        path = Path(trials["run_dir"].iloc[0]) / "embedding_2d.parquet"
        if path.is_file():
            cells[(rv, cv)] = read_embedding_2d(path)
    return cells


def _ordered(series) -> list[str]:
    vals = list(dict.fromkeys(series.dropna().astype(str)))
    try:
        return sorted(vals, key=float)
    except ValueError:
        return vals


# -- the command line shared by studies/*.py ---------------------------------------------------
def study_arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="study folder (default runs/STUDY_NAME)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--smoke-test", action="store_true", help="a tiny study for CI (a few minutes)")
    scale.add_argument("--scale", choices=["local", "paper"], default="local",
                       help="local: about 20 minutes on a 2-core machine (default); paper: the paper's grid, "
                            "for a cluster")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study in --out")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                                          "sqlite:///OUT/mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS or a local Ray)")
    p.add_argument("--storage", help="Ray Tune/Train storage shared by all nodes (an NFS path or s3://...; "
                                     "default: the study folder)")
    p.add_argument("--workers", type=int, help="Ray Train workers per trial")
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as CPUs allow)")
    p.add_argument("--max-failures", type=int, help="worker failures a trial recovers from (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def study_main(description: str, build: Callable[[str], StudySpec], argv: Sequence[str] | None = None) -> int:
    """Parse the shared study options, run the study, print where its results are."""
    from affvae.errors import report_errors

    args = study_arguments(description).parse_args(argv)

    def run() -> int:
        spec = build("smoke" if args.smoke_test else args.scale)
        for attr, val in (("workers", args.workers), ("max_concurrent", args.max_concurrent),
                          ("max_failures", args.max_failures)):
            if val is not None:
                setattr(spec, attr, val)
        if args.gpu:
            spec.use_gpu = True
        out = Path(args.out or Path("runs") / spec.name)
        res = run_study(spec, out, resume=args.resume, tracking_uri=args.tracking_uri, address=args.address,
                        storage=args.storage)
        print_summary(spec, res)
        return 0

    return report_errors(Path(sys.argv[0]).name or "study", run, debug=args.debug)


def print_summary(spec: StudySpec, res: StudyResult) -> None:
    n = len(res.trials)
    by = {s: sum(t["status"] == s for t in res.trials) for s in ("completed", "stopped_early", "failed")}
    by_whom = " by ASHA" if spec.scheduler == "asha" else ""
    print(f"\nstudy {spec.name}: {n} trials ({by['completed']} completed, {by['stopped_early']} stopped early"
          f"{by_whom}, {by['failed']} failed) in {res.seconds / 60:.1f} min")
    best = res.best()
    if best:
        print(f"best trial (chosen on validation accuracy) {best['name']}: validation {best[SELECT_METRIC]:.3f}, "
              f"seen test accuracy {_num(best.get('accuracy'))}"
              + (f", novelty AUROC {best['novelty_auroc']:.3f}" if best.get("novelty_auroc") is not None else ""))
        if best.get("nearest_seen"):
            print(f"  unseen classes, nearest seen centres: {best['nearest_seen']}")
    b = choose([t for t in res.trials if str(t.get("loss.gamma")) in ("0", "0.0")])
    if b:
        print(f"gamma = 0 baseline (best on validation): validation {b[SELECT_METRIC]:.3f}, "
              f"seen test accuracy {_num(b.get('accuracy'))}")
    for t in sorted(res.trials, key=_rank, reverse=True):  # the chosen trial first
        if t["status"] == "failed":
            print(f"  failed {t['name']}: {t.get('error')}")
        elif t.get(SELECT_METRIC) is not None:
            extra = (f"; unseen nearest: {t['nearest_seen']}" if t.get("nearest_seen") else "") + \
                (f"; pose |r| within a class {t['pose_angle_class_mean_abs_r']:.2f}"
                 if isinstance(t.get("pose_angle_class_mean_abs_r"), float) else "")
            print(f"  {t['name']}: validation {t[SELECT_METRIC]:.3f}, test {_num(t.get('accuracy'))}{extra}")
    print(f"study folder: {res.study_dir}  (summary/trials.csv, summary/*.png)")
    if res.tracking_uri.startswith("sqlite"):
        print(f"MLflow: mlflow ui --backend-store-uri {res.tracking_uri}")
    print(f"  trial table: {res.ui_link or res.tracking_uri}")


def _num(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def deep_update(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with sections updated key by key (for studies' scale variants)."""
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out
