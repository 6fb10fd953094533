"""The study layer's pure parts: trial configs, error reasons, storage paths, the summary."""

import numpy as np
import pytest

from affvae.errors import ConfigError
from affvae.tracking import StudyTracker
from affvae.tune import (
    StudySpec,
    split_trial_config,
    storage_path,
    trial_config,
    trial_label,
    write_summary,
)

BASE = {"data": {"source": "alphanumeric", "size": 32, "glyphs": "ab"}, "loss": {"gamma": 2.0}}


def test_composite_choices_expand_into_overrides_and_trial_settings():
    config = {"loss.beta": 2.0, "metric": {"name": "none", "loss.gamma": 0.0}, "trial.workers": 2}
    overrides, settings, shown = split_trial_config(config)
    assert overrides == {"loss.beta": 2.0, "loss.gamma": 0.0}
    assert settings == {"trial.workers": 2}
    assert shown == {"loss.beta": "2", "metric": "none", "trial.workers": "2"}
    cfg = trial_config(BASE, config)
    assert (cfg.loss.beta, cfg.loss.gamma, cfg.data.glyphs) == (2.0, 0.0, "ab")
    assert trial_label(config) == "beta=2,metric=none,workers=2"


def test_a_trial_with_an_invalid_value_names_the_trial_and_the_key():
    with pytest.raises(ConfigError, match=r"trial loss.beta=-1: loss.beta: .*greater than or equal to 0"):
        trial_config(BASE, {"loss.beta": -1})
    with pytest.raises(ConfigError, match=r"unknown key 'loss.gama'"):
        trial_config(BASE, {"loss.gama": 1})


def test_checkpoint_paths_of_uri_storage_get_their_scheme_back():
    assert storage_path("/data/study", "/data/study/train/x/ck") == "/data/study/train/x/ck"
    assert storage_path("s3://bucket/study", "bucket/study/train/x/ck") == "s3://bucket/study/train/x/ck"
    assert storage_path("s3://bucket/study", "s3://bucket/s/ck") == "s3://bucket/s/ck"


def test_summary_writes_the_trials_table_and_a_heatmap_of_the_searched_pair(tmp_path):
    import pandas as pd

    from affvae.tune import _pivot

    spec = StudySpec("s", BASE, {"loss.beta": [1, 2], "loss.gamma": [0, 3]}, rows="loss.beta", cols="loss.gamma")
    rows = [{"trial_id": f"t{i}", "name": f"n{i}", "status": st, "loss.beta": b, "loss.gamma": g,
             "val_accuracy": val, "accuracy": acc, "run_id": f"r{i}", "run_dir": str(tmp_path / f"t{i}")}
            for i, (b, g, st, val, acc) in enumerate([
                ("1", "0", "completed", 0.8, 0.5), ("1", "3", "completed", 0.7, 0.9),
                ("2", "0", "stopped_early", 0.3, 0.25), ("2", "3", "failed", None, None)])]
    tracker = StudyTracker(f"sqlite:///{tmp_path}/m.db", "s", artifact_dir=tmp_path / "art")
    paths = write_summary(spec, tmp_path, rows, tracker)
    df = pd.read_csv(paths["trials"])
    assert list(df["status"]) == ["completed", "completed", "stopped_early", "failed"]
    grid = df.assign(_row=df["loss.beta"].astype(str), _col=df["loss.gamma"].astype(str))
    np.testing.assert_array_equal(_pivot(grid, "accuracy", ["1", "2"], ["0", "3"]), [[0.5, 0.9], [0.25, np.nan]])
    parent = tracker.client.get_run(tracker.parent_run())
    # validation and test rank the trials differently: the study picks the validation winner
    assert parent.data.metrics["best_val_accuracy"] == 0.8
    assert parent.data.metrics["best_trial_test_accuracy"] == 0.5
    assert parent.data.tags["affvae.best_trial"] == "n0"
    assert parent.data.metrics["trials_failed"] == 1 and parent.data.metrics["trials_stopped_early"] == 1
    assert {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "summary")} == {
        "summary/trials.csv", "summary/heatmap.png", "summary/parallel_coordinates.png"}


def test_the_best_trial_and_the_printed_line_are_chosen_on_validation(tmp_path, capsys):
    from affvae.tune import StudyResult, print_summary

    spec = StudySpec("s", BASE, {"loss.gamma": [0, 3]}, cols="loss.gamma")
    trials = [{"name": "val_winner", "status": "completed", "loss.gamma": 3, "val_accuracy": 0.8, "accuracy": 0.5},
              {"name": "test_winner", "status": "completed", "loss.gamma": 3, "val_accuracy": 0.7, "accuracy": 0.9},
              {"name": "base", "status": "completed", "loss.gamma": 0, "val_accuracy": 0.4, "accuracy": 0.95}]
    res = StudyResult(tmp_path, "sqlite:///x.db", trials, 60.0, "http://127.0.0.1:5000/#/experiments/1/runs")
    assert res.best()["name"] == "val_winner"
    print_summary(spec, res)
    out = capsys.readouterr().out
    assert "best trial (chosen on validation accuracy) val_winner: validation 0.800, seen test accuracy 0.500" in out
    assert "gamma = 0 baseline (best on validation): validation 0.400, seen test accuracy 0.950" in out
    assert "trial table: http://127.0.0.1:5000/#/experiments/1/runs" in out


def test_a_tie_on_validation_goes_to_the_lower_validation_reconstruction_loss(tmp_path):
    from affvae.tune import StudyResult

    trials = [{"name": "a", "val_accuracy": 1.0, "val_recon": 0.30, "accuracy": 1.0},
              {"name": "b", "val_accuracy": 1.0, "val_recon": 0.20, "accuracy": 0.9},
              {"name": "c", "val_accuracy": 1.0, "accuracy": 1.0},  # no val_recon: last among equals
              {"name": "d", "val_accuracy": 0.9, "val_recon": 0.01, "accuracy": 0.5}]
    res = StudyResult(tmp_path, "sqlite:///x.db", trials, 1.0)
    assert res.best()["name"] == "b"
    assert res.best(metric="accuracy")["name"] == "a"  # equal test accuracies: the lower val_recon
    assert StudyResult(tmp_path, "sqlite:///x.db", [{"name": "x", "val_accuracy": None}], 1.0).best() is None


def test_the_tune_command_turns_flags_into_a_search_space():
    import argparse

    from affvae.commands.tune import add_args, build_space

    p = argparse.ArgumentParser()
    add_args(p)
    args = p.parse_args(["--out", "x", "--search", "loss.beta=1,4", "--choice", "data.affinity_metric=fsc,soap",
                         "--loguniform", "train.lr=1e-4:1e-2"])
    space = build_space(args)
    assert space["loss.beta"] == {"grid_search": [1, 4]}
    assert set(space["data.affinity_metric"].categories) == {"fsc", "soap"}
    assert 1e-4 <= space["train.lr"].sample() <= 1e-2
    with pytest.raises(ConfigError, match=r"--uniform 'model.latent_dims=8': expected KEY=LO:HI"):
        build_space(p.parse_args(["--out", "x", "--uniform", "model.latent_dims=8"]))


def test_a_trials_figures_and_latent_map_page_are_logged_to_its_run(tmp_path):
    from affvae.tune import _log_trial

    run_dir = tmp_path / "trial"
    (run_dir / "figures").mkdir(parents=True)
    for name in ("embedding.png", "confusion.png", "latent_map.html"):
        (run_dir / "figures" / name).write_bytes(b"x")
    (run_dir / "metrics.json").write_text("{}")
    tracker = StudyTracker(f"sqlite:///{tmp_path}/m.db", "s", artifact_dir=tmp_path / "art")
    rid = tracker.trial_run("t0", "n0", {})
    row = {"run_id": rid, "run_dir": str(run_dir), "epochs_done": 1, "status": "completed"}
    _log_trial(tracker, row, {"accuracy": 0.5})
    assert {a.path for a in tracker.client.list_artifacts(rid, "figures")} == {
        "figures/embedding.png", "figures/confusion.png", "figures/latent_map.html"}


def test_the_study_computes_its_datasets_affinity_once_for_the_trials_that_share_it(monkeypatch):
    from affvae.config import build_config
    from affvae.data import sources
    from affvae.tune import _study_affinity, trial_affinity

    base = {"data": {"source": "alphanumeric", "size": 16, "glyphs": "abc", "n_per_class": 2},
            "loss": {"gamma": 0.0}}
    cfg = build_config(base)
    data = sources.build_dataset(cfg)
    from ray import tune

    # no trial uses the base data's matrix: gamma 0 throughout, or only on other metrics
    assert _study_affinity(StudySpec("s", base, {"loss.beta": tune.grid_search([1, 2])}), cfg, data) == {}
    metrics = tune.grid_search([{"name": "none", "loss.gamma": 0.0},
                                {"name": "soap", "loss.gamma": 2.0, "data.affinity_metric": "soap"}])
    assert _study_affinity(StudySpec("s", base, {"metric": metrics}), cfg, data) == {}
    affinities = _study_affinity(StudySpec("s", base, {"loss.gamma": tune.grid_search([0, 2])}), cfg, data)
    (matrix,) = affinities.values()
    assert matrix.classes == ("a", "b", "c")
    computed = []
    real = sources._affinity_of
    monkeypatch.setattr(sources, "_affinity_of", lambda *a, **k: computed.append(1) or real(*a, **k))
    trial = trial_config(base, {"loss.gamma": 2.0})
    assert trial_affinity(trial, data, affinities) is matrix and computed == []
    assert trial_affinity(trial_config(base, {"loss.gamma": 0.0}), data, affinities) is None
    # a trial on other data (here another metric) computes its own
    other = trial_config(base, {"loss.gamma": 2.0, "data.affinity_metric": "mean-diff"})
    mine = trial_affinity(other, data, affinities)
    assert computed == [1] and not np.allclose(mine.values, matrix.values)
