"""MLflow tracking of studies: one experiment per study, a parent run, a child run per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, so the
study driver never depends on MLflow's global "active run" and can log for many
trials at once.  Runs are found again by tags, which makes every call idempotent:
a study that is interrupted and resumed logs into the same parent and child runs,
and each trial appears once.

Tags used (the contract with notebooks and the UI's filters):

``affvae.study``         the study name (parent and children)
``affvae.role``          ``study`` (parent) or ``trial`` (child)
``affvae.trial_id``      Ray Tune's trial id (children)
``affvae.status``        ``running``, ``completed``, ``stopped_early`` or ``failed``
``affvae.error``         why a failed trial failed (one line)
``affvae.evaluated``     ``1`` once the trial's final metrics and artifacts are logged

The default store is a SQLite file in the study folder, with artifacts beside it;
``--tracking-uri`` or ``$MLFLOW_TRACKING_URI`` points at a server instead (on a
cluster, the head's, reached through the launcher's port forwarding).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from affvae.errors import AffvaeError

STUDY_TAG = "affvae.study"
ROLE_TAG = "affvae.role"
TRIAL_TAG = "affvae.trial_id"
STATUS_TAG = "affvae.status"
ERROR_TAG = "affvae.error"
EVALUATED_TAG = "affvae.evaluated"
MAX_PARAM = 500  # MLflow accepts longer values; shorter keeps the UI readable
#: the experiment's saved view of its trial table (MLflow 3's shared view state)
VIEW_KEY = "trials"


def resolve_tracking_uri(uri: str | None, study_dir: str | os.PathLike) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///STUDY_DIR/mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(study_dir).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _quiet_mlflow() -> None:
    import logging

    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class StudyTracker:
    """The MLflow side of one study: find-or-create runs by tag, log into them.

    Cheap to construct and picklable until first used (it holds only strings), so a
    Ray Tune callback can carry one and reconnect after a resume.
    """

    def __init__(self, tracking_uri: str, study: str, artifact_dir: str | os.PathLike | None = None):
        self.tracking_uri = tracking_uri
        self.study = study
        self.artifact_dir = str(artifact_dir) if artifact_dir else None
        self._client = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._trial_runs: dict[str, str] = {}

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "study": self.study, "artifact_dir": self.artifact_dir}

    def __setstate__(self, state):
        self.__init__(**state)

    # -- connection ------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            _quiet_mlflow()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            try:
                exp = self.client.get_experiment_by_name(self.study)
                if exp is None:
                    location = Path(self.artifact_dir).resolve().as_uri() if self.artifact_dir else None
                    self._experiment_id = self.client.create_experiment(
                        self.study, artifact_location=location, tags={STUDY_TAG: self.study})
                else:
                    self._experiment_id = exp.experiment_id
            except Exception as e:  # noqa: BLE001 - connection, permissions, bad URI: one user problem
                raise AffvaeError(f"MLflow tracking at {self.tracking_uri}: {e.__class__.__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
        return self._experiment_id

    def _find(self, **tags: str) -> str | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=2)
        return runs[0].info.run_id if runs else None

    # -- runs --------------------------------------------------------------------------
    def parent_run(self, params: dict[str, Any] | None = None) -> str:
        """The study's parent run (created on first call, found again after a resume)."""
        if self._parent is None:
            rid = self._find(**{ROLE_TAG: "study"})
            if rid is None:
                rid = self.client.create_run(self.experiment_id, run_name=self.study,
                                             tags={STUDY_TAG: self.study, ROLE_TAG: "study"}).info.run_id
                if params:
                    self.log_params(rid, params)
            self._parent = rid
        return self._parent

    def trial_run(self, trial_id: str, name: str,
                  params: dict[str, Any] | Callable[[], dict[str, Any]]) -> str:
        """The child run of a trial, created once per trial id.

        ``params`` may be a function, called only when the run is created (callers log
        per epoch and should not rebuild a trial's params every time).
        """
        if trial_id in self._trial_runs:
            return self._trial_runs[trial_id]
        rid = self._find(**{ROLE_TAG: "trial", TRIAL_TAG: trial_id})
        if rid is None:
            parent = self.parent_run()
            rid = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={STUDY_TAG: self.study, ROLE_TAG: "trial", TRIAL_TAG: trial_id,
                      STATUS_TAG: "running", "mlflow.parentRunId": parent}).info.run_id
            self.log_params(rid, params() if callable(params) else params)
        else:
            self.client.update_run(rid, status="RUNNING")
        self._trial_runs[trial_id] = rid
        return rid

    def trial_runs(self) -> dict[str, Any]:
        """trial id -> MLflow Run of every child run of the study."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'",
                                       max_results=50000)
        return {r.data.tags[TRIAL_TAG]: r for r in runs}

    # -- logging -------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:MAX_PARAM]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, int(step)) for k, v in _finite(metrics).items()]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def last_step(self, run_id: str, key: str) -> int:
        """The highest step logged for metric ``key`` of a run (0 if none)."""
        return max((int(m.step) for m in self.client.get_metric_history(run_id, key)), default=0)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, files: Iterable[str | os.PathLike], artifact_path: str | None = None):
        for f in files:
            if Path(f).is_file():
                self.client.log_artifact(run_id, str(f), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- the UI ----------------------------------------------------------------------------
    def set_trial_view(self, searched: list[str], order_by: str = "val_accuracy",
                       metrics: tuple[str, ...] = ("val_accuracy", "best_val_accuracy", "accuracy")) -> None:
        """Save the trial table as the experiment's shared view (see :meth:`ui_link`).

        MLflow 3 opens a new experiment in its GenAI view, with the trials folded under
        their parent run and no metric columns; its runs page restores a view saved as the
        experiment tag ``mlflow.sharedViewState.<key>`` when the URL names the key.  This
        view lists the trial runs only (the parent keeps its own page; the trials keep
        ``mlflow.parentRunId``), sorted by ``order_by``, with a column for every searched
        key, the given metrics and the trial's status.
        """
        import json

        cols = ([f"params.`search.{k}`" for k in searched] + [f"metrics.`{m}`" for m in metrics]
                + [f"tags.`{STATUS_TAG}`"])
        state = {"selectedColumns": cols, "columnOrder": cols, "orderByKey": f"metrics.`{order_by}`",
                 "orderByAsc": False, "searchFilter": f"tags.`{ROLE_TAG}` = 'trial'"}
        now = int(time.time() * 1000)
        view = {"name": "Trials", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}",
                                       json.dumps(view))

    def ui_link(self, ui: str | None = None) -> str:
        """The URL of the experiment's trial table in the MLflow UI's model-training view.

        ``ui`` is the UI's address: by default the tracking server itself for an
        ``http(s)`` tracking URI, else what ``mlflow ui`` serves (http://127.0.0.1:5000).
        ``workflowType`` picks the training view for this visit (the UI otherwise opens
        experiments in its GenAI view); ``viewStateShareKey`` loads :meth:`set_trial_view`.
        """
        if ui is None:
            ui = self.tracking_uri if self.tracking_uri.startswith(("http://", "https://")) \
                else "http://127.0.0.1:5000"
        return (f"{ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs"
                f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")
