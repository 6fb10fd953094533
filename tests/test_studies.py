"""The study scripts end to end, each in its own process with a local Ray and SQLite MLflow.

These are the slow tests (a Ray Train worker group takes 20-30 s to start here):
the three --smoke-test studies, a study killed midway and resumed (with a trial whose
loss turns to inf), MLflow's REST API over a finished study, and the notebook.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_study(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def trial_runs(study_dir, name):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(study_dir).resolve()}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], "tags.`affvae.role` = 'trial'") if exp else []


def assert_rows_are_their_run_folders(trials, *keys):
    """Each trial's row of trials.csv holds the numbers of its run folder's metrics.json."""
    assert len(trials)
    for _, row in trials.iterrows():
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        for key in keys:
            assert row[key] == pytest.approx(metrics[key], abs=1e-9), (row["name"], key)


def assert_png_picture(path, png, min_side=200):
    """A PNG of at least ``min_side`` pixels a side with a drawing on it (not one flat colour)."""
    import numpy as np

    img = png(path)
    assert min(img.shape[:2]) >= min_side, img.shape
    colours = np.unique((img[..., :3] * 255).round().reshape(-1, 3), axis=0)
    assert len(colours) > 50 and png.share(img, (1, 1, 1)) < 0.99, path


OTHER_RAY = "import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=True); time.sleep(600)"


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The gamma_beta smoke study, with another Ray instance started on this machine while it runs.

    Ray's state API finds "the latest" instance on a machine unless told otherwise; the
    study's trials must still be cleaned up in their own instance (else the second wave
    of trials waits forever for the first wave's CPUs).
    """
    out = tmp_path_factory.mktemp("studies") / "gamma_beta"
    proc = subprocess.Popen([sys.executable, str(ROOT / "studies" / "gamma_beta.py"), "--smoke-test", "--out",
                             str(out)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(15)
    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        os.killpg(other.pid, signal.SIGTERM)
        other.wait(timeout=60)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return out, stdout


def test_gamma_beta_smoke_logs_every_trial_with_accuracy_and_latent_map(smoke_study, png):
    out, stdout = smoke_study
    assert "study gamma_beta_smoke: 4 trials" in stdout
    trials = pd.read_csv(out / "summary" / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped_early"}
    assert_rows_are_their_run_folders(trials, "accuracy", "val_accuracy")
    assert sorted(zip(trials["loss.beta"], trials["loss.gamma"])) == [(1, 0), (1, 2), (4, 0), (4, 2)]
    for name in ("heatmap.png", "embeddings_grid.png"):
        assert_png_picture(out / "summary" / name, png)
    client, runs = trial_runs(out, "gamma_beta_smoke")
    assert len(runs) == 4 and len({r.data.tags["affvae.trial_id"] for r in runs}) == 4
    for r in runs:
        assert r.info.status == "FINISHED"
        folder = json.loads((Path(r.data.tags["affvae.run_dir"]) / "metrics.json").read_text())
        assert r.data.metrics["accuracy"] == pytest.approx(folder["accuracy"], abs=1e-9)
        assert r.data.params["trial.workers"] == "1"
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"latent_map.parquet", "metrics.json", "config.yaml", "figures"} <= names
        epochs = client.get_metric_history(r.info.run_id, "train_total")
        assert [m.step for m in epochs] == [1, 2, 3]
    study = json.loads((out / "study.json").read_text())
    assert study["status"] == "finished" and study["trials"] == 4


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_mlflow_server_answers_the_rest_api_over_the_study(smoke_study):
    out, _ = smoke_study
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{out.resolve()}/mlflow.db"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        exp = json.load(urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=gamma_beta_smoke"))
        eid = exp["experiment"]["experiment_id"]
        req = urllib.request.Request(f"{base}/runs/search", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"experiment_ids": [eid],
                                                      "filter": "tags.`affvae.role` = 'trial'"}).encode())
        runs = json.load(urllib.request.urlopen(req))["runs"]
        assert len(runs) == 4
        for run in runs:
            assert any(m["key"] == "accuracy" for m in run["data"]["metrics"])
            files = json.load(urllib.request.urlopen(f"{base}/artifacts/list?run_id={run['info']['run_id']}"))
            assert "latent_map.parquet" in {f["path"] for f in files["files"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_notebook_runs_against_the_smoke_study(smoke_study):
    out, _ = smoke_study
    env = _env() | {"AFFVAE_STUDY": str(out)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake",
                           str(ROOT / "notebooks" / "explore_study.ipynb")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_similarity_metric_smoke_compares_none_fsc_and_soap(tmp_path):
    out = tmp_path / "sim"
    run_study(ROOT / "studies" / "similarity_metric.py", "--smoke-test", "--out", out)
    trials = pd.read_csv(out / "summary" / "trials.csv")
    assert sorted(trials["metric"]) == ["fsc", "none", "soap"]
    assert (trials["status"] == "completed").all() and trials["epochs_done"].eq(2).all()
    assert (out / "summary" / "heatmap.png").is_file()


def test_dataset_scale_smoke_reports_accuracy_and_throughput(tmp_path):
    out = tmp_path / "scale"
    run_study(ROOT / "studies" / "dataset_scale.py", "--smoke-test", "--out", out)
    trials = pd.read_csv(out / "summary" / "trials.csv")
    assert sorted(trials["data.n_per_class"]) == [16, 32]
    assert_rows_are_their_run_folders(trials, "accuracy")
    for _, row in trials.iterrows():  # the median rate of the epochs after the first (warm-up)
        history = pd.read_csv(Path(row["run_dir"]) / "history.csv")
        assert row["samples_per_second"] == pytest.approx(history["samples_per_second"][1:].median(), rel=1e-9)
    assert (out / "summary" / "heatmap_samples_per_second.png").is_file()


def _train_epochs(train_dir: Path) -> dict[str, int]:
    """Each trial's newest epoch that Ray Train has recorded with a checkpoint."""
    epochs = {}
    for snap in train_dir.glob("*/checkpoint_manager_snapshot.json"):
        try:
            epochs[snap.parent.name] = json.loads(snap.read_text())["latest_checkpoint_result"]["metrics"]["epoch"]
        except (OSError, ValueError, KeyError, TypeError):  # being written, or no checkpoint yet
            pass
    return epochs


STUDY = '''
import sys
from ray import tune
from affvae.tune import StudySpec, study_main

BASE = {"data": {"source": "alphanumeric", "size": 32, "glyphs": "aeb2", "unseen": ["2"], "n_per_class": 16},
        "model": {"filters": [4, 8], "latent_dims": 4, "pose_dims": 1},
        "train": {"epochs": 4, "threads": 1, "checkpoint_every": 1},
        "eval": {"embedding": "pca", "figures": False}}

def build(scale):
    space = {"loss.beta": tune.grid_search([1.0, 2.0, 1e39])}  # 1e39 overflows float32: the loss is inf
    return StudySpec("resume_test", BASE, space, scheduler="fifo", max_concurrent=2, cols="loss.beta")

sys.exit(study_main("a study to kill and resume", build))
'''


def test_a_killed_study_resumes_and_a_diverging_trial_fails_with_its_reason(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(STUDY)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), "--out", str(out)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill the whole process group (driver and its local Ray) the moment Ray Train has
        # recorded the second trial's last epoch: Tune may not have seen it yet, so on resume
        # that trial finds nothing left to train and must still end on its last epoch
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if sorted(_train_epochs(out / "train").values())[-2:] == [4, 4]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "summary").exists()

    res = run_study(script, "--out", out, "--resume")
    assert "3 trials" in res.stdout and "1 failed" in res.stdout
    client, runs = trial_runs(out, "resume_test")
    assert len(runs) == 3 and len({r.data.tags["affvae.trial_id"] for r in runs}) == 3
    by_beta = {float(r.data.params["loss.beta"]): r for r in runs}
    bad = by_beta[1e39]
    assert bad.info.status == "FAILED"
    assert "epoch 1" in bad.data.tags["affvae.error"] and "loss became" in bad.data.tags["affvae.error"]
    for beta in (1.0, 2.0):
        r = by_beta[beta]
        folder = json.loads((Path(r.data.tags["affvae.run_dir"]) / "metrics.json").read_text())
        assert r.info.status == "FINISHED" and r.data.metrics["accuracy"] == pytest.approx(folder["accuracy"])
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_total")]
        assert steps == sorted(set(steps)) and steps[-1] == 4  # each epoch logged once
    trials = pd.read_csv(out / "summary" / "trials.csv")
    assert sorted(trials["status"]) == ["completed", "completed", "failed"]


def test_proteins_smoke_reports_the_nearest_seen_proteins_of_the_unseen_ones(tmp_path):
    out = tmp_path / "prot"
    proc = run_study(ROOT / "studies" / "proteins.py", "--smoke-test", "--out", out)
    trials = pd.read_csv(out / "summary" / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    assert_rows_are_their_run_folders(trials, "accuracy", "novelty_auroc")
    for near in trials["nearest_seen"]:
        assert near.startswith("1gui: ") and "; 2ebo: " in near
    assert "nearest seen centres" in proc.stdout
