"""MLflow tracking against a real local SQLite store: runs are found again by tag."""

from pathlib import Path

import pytest

from affvae.errors import AffvaeError
from affvae.tracking import StudyTracker, resolve_tracking_uri


def test_the_default_store_is_a_sqlite_file_in_the_study_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path / "s") == f"sqlite:///{(tmp_path / 's').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_parent_and_trial_runs_are_created_once_and_found_again(tmp_path):
    uri = resolve_tracking_uri(None, tmp_path)
    t = StudyTracker(uri, "s1", artifact_dir=tmp_path / "art")
    parent = t.parent_run({"a": 1})
    rid = t.trial_run("t0", "beta=1", {"loss.beta": 1.0})
    t.log_metrics(rid, {"val_accuracy": 0.5, "nan": float("nan"), "text": "x"}, step=1)
    t.log_metrics(rid, {"val_accuracy": 0.75}, step=2)
    (tmp_path / "f.txt").write_text("hello")
    t.log_artifacts(rid, [tmp_path / "f.txt", tmp_path / "missing.txt"], "files")

    # a new tracker (as after a resume) finds the same runs instead of making new ones
    t2 = StudyTracker(uri, "s1", artifact_dir=tmp_path / "art")
    assert t2.parent_run() == parent
    assert t2.trial_run("t0", "beta=1", {"loss.beta": 1.0}) == rid
    runs = t2.trial_runs()
    assert list(runs) == ["t0"]
    run = runs["t0"]
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["loss.beta"] == "1.0"
    assert run.data.metrics == {"val_accuracy": 0.75}  # NaN and text dropped
    hist = t2.client.get_metric_history(rid, "val_accuracy")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.75)]
    assert t2.last_step(rid, "val_accuracy") == 2 and t2.last_step(rid, "train_total") == 0
    assert [a.path for a in t2.client.list_artifacts(rid, "files")] == ["files/f.txt"]
    assert Path(tmp_path / "art").is_dir()


def test_an_unreachable_tracking_server_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    t = StudyTracker("http://127.0.0.1:9", "s")
    with pytest.raises(AffvaeError, match=r"MLflow tracking at http://127.0.0.1:9"):
        t.parent_run()
