"""The study layer's pure parts: trial configs, error reasons, storage paths, the summary."""

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

    spec = StudySpec("s", BASE, {"loss.beta": [1, 2], "loss.gamma": [0, 3]}, rows="loss.beta", cols="loss.gamma")
    rows = [{"trial_id": f"t{i}", "name": f"n{i}", "status": st, "loss.beta": b, "loss.gamma": g,
             "accuracy": acc, "run_dir": str(tmp_path / f"t{i}")}
            for i, (b, g, st, acc) in enumerate([("1", "0", "completed", 0.5), ("1", "3", "completed", 0.9),
                                                 ("2", "0", "stopped_early", 0.25), ("2", "3", "failed", None)])]
    tracker = StudyTracker(f"sqlite:///{tmp_path}/m.db", "s", artifact_dir=tmp_path / "art")
    paths = write_summary(spec, tmp_path, rows, tracker)
    df = pd.read_csv(paths["trials"])
    assert list(df["status"]) == ["completed", "completed", "stopped_early", "failed"]
    assert paths["heatmap_accuracy"].stat().st_size > 1000
    parent = tracker.client.get_run(tracker.parent_run())
    assert parent.data.metrics["best_accuracy"] == 0.9
    assert parent.data.metrics["trials_failed"] == 1 and parent.data.metrics["trials_stopped_early"] == 1
    assert {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "summary")} == {
        "summary/trials.csv", "summary/heatmap.png"}


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
