import numpy as np
import pytest
import torch

from affvae.checkpoints import load_checkpoint
from affvae.config import build_config
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.data.splits import split_indices
from affvae.train import TrainingDiverged, train

SMALL = ["data.source=alphanumeric", "data.size=16", "data.glyphs=aeio", "data.n_per_class=12",
         "model.filters=[4, 8]", "model.latent_dims=4", "train.batch_size=8", "train.epochs=4",
         "train.checkpoint_every=1", "loss.gamma=1", "data.affinity_metric=ncc"]


@pytest.fixture(scope="module")
def small():
    cfg = build_config(overrides=SMALL)
    ds = build_dataset(cfg)
    return cfg, ds, resolve_affinity(cfg, ds)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.dtype.is_floating_point])


def test_split_is_stratified_disjoint_and_reproducible():
    labels = np.array(list("aaaaaaaaaabbbbbbbbbbcccc"))
    s = split_indices(labels, ["a", "b"], 0.2, 0.2, seed=1)
    assert len(np.intersect1d(s.train, s.val)) == 0 and len(np.intersect1d(s.train, s.test)) == 0
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(20))
    assert (labels[s.val] == "a").sum() == 2 and (labels[s.test] == "b").sum() == 2
    assert set(labels[s.unseen]) == {"c"}
    s2 = split_indices(labels, ["a", "b"], 0.2, 0.2, seed=1)
    assert np.array_equal(s.train, s2.train)


def test_training_lowers_the_loss_and_reports_every_epoch(small):
    cfg, ds, aff = small
    seen = []
    res = train(cfg, ds, aff, report=lambda m, ck: seen.append((m, ck)))
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3, 4]
    h = res.history
    assert h[-1]["train_total"] < h[0]["train_total"]
    for key in ("train_recon", "train_kl", "train_affinity", "val_total", "val_accuracy"):
        assert np.isfinite(h[-1][key]), key
    assert res.affinity is not None and res.affinity.classes == ("a", "e", "i", "o")


def test_resume_gives_the_same_result_as_an_uninterrupted_run(small, tmp_path):
    cfg, ds, aff = small
    full = train(cfg, ds, aff, checkpoint_dir=tmp_path / "full")
    half_cfg = build_config(overrides=SMALL + ["train.epochs=2"])
    train(half_cfg, ds, aff, checkpoint_dir=tmp_path / "resumed")
    resumed = train(cfg, ds, aff, checkpoint_dir=tmp_path / "resumed", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert torch.allclose(params(full.model), params(resumed.model), atol=1e-6)
    assert resumed.history[-1]["train_total"] == pytest.approx(full.history[-1]["train_total"], rel=1e-5)


def test_resuming_a_finished_run_reports_its_last_epoch_and_checkpoint_again(small, tmp_path):
    # a trial killed after its last report but before its caller recorded it must not
    # end, on resume, with the caller's stale (earlier) epoch and checkpoint
    cfg, ds, aff = small
    done = train(cfg, ds, aff, checkpoint_dir=tmp_path / "ck")
    seen = []
    again = train(cfg, ds, aff, checkpoint_dir=tmp_path / "ck", resume=True, report=lambda logs, p: seen.append((logs, p)))
    assert len(seen) == 1 and seen[0][0]["epoch"] == 4
    assert seen[0][0]["train_total"] == done.history[-1]["train_total"]
    assert seen[0][1] is not None and load_checkpoint(seen[0][1])["epoch"] == 4
    assert [h["epoch"] for h in again.history] == [1, 2, 3, 4]


def test_nan_loss_stops_with_epoch_and_term(small):
    cfg, ds, aff = small
    bad_cfg = build_config(overrides=SMALL + ["data.normalise=none", "model.output=linear"])
    bad = build_dataset(bad_cfg)
    bad.x = bad.x * np.float32(1e30)
    with pytest.raises(TrainingDiverged, match=r"epoch 1: the recon loss became (inf|nan)"):
        train(bad_cfg, bad, aff)


def test_gamma_zero_trains_without_an_affinity_matrix(small):
    cfg, ds, aff = small
    res = train(build_config(overrides=SMALL + ["loss.gamma=0", "model.pose_dims=0", "train.epochs=1"]), ds)
    assert res.affinity is None
    assert res.history[0]["train_affinity"] == 0.0


def test_resume_removes_temporary_files_of_a_killed_checkpoint_write(small, tmp_path):
    cfg, ds, aff = small
    ck = tmp_path / "ck"
    train(build_config(overrides=SMALL + ["train.epochs=2"]), ds, aff, checkpoint_dir=ck)
    for name in (".epoch_00003.x1y2z3ab.pt", ".epoch_00004.q9w8e7rt.pt"):
        (ck / name).write_bytes(b"")  # what a SIGKILL inside torch.save leaves
    res = train(cfg, ds, aff, checkpoint_dir=ck, resume=True)
    assert len(res.history) == 4
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_00003.pt", "epoch_00004.pt"]


def test_resume_skips_a_damaged_newest_checkpoint(small, tmp_path, capsys):
    cfg, ds, aff = small
    ck = tmp_path / "ck"
    full = train(cfg, ds, aff, checkpoint_dir=tmp_path / "full")
    train(build_config(overrides=SMALL + ["train.epochs=3"]), ds, aff, checkpoint_dir=ck)
    newest = ck / "epoch_00003.pt"
    newest.write_bytes(newest.read_bytes()[:2000])
    resumed = train(cfg, ds, aff, checkpoint_dir=ck, resume=True)
    assert "epoch_00003.pt: cannot read checkpoint" in capsys.readouterr().err
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]  # from epoch 2, as if never damaged
    assert torch.allclose(params(full.model), params(resumed.model), atol=1e-6)


def test_augment_auto_rotates_volumes_and_leaves_images(small):
    from affvae.data.io import Dataset
    from affvae.errors import DataError
    from affvae.train import setup

    cfg, ds, aff = small
    auto = build_config(overrides=SMALL + ["data.augment=auto", "train.epochs=1"])
    assert not setup(auto, ds, aff).augment  # 2D glyphs: trained as they are
    # the same config on 3D items turns the cube symmetries on
    rng = np.random.default_rng(0)
    vols = Dataset(root=ds.root, x=rng.random((len(ds), 8, 8, 8), dtype=np.float32), labels=ds.labels,
                   paths=ds.paths, classes=ds.classes)
    assert setup(auto, vols, aff).augment
    res = train(auto, vols, aff)
    assert res.epochs_done == 1 and np.isfinite(res.history[-1]["train_total"])
    octa = build_config(overrides=SMALL + ["data.augment=octahedral", "data.source=folder", "data.path=x"])
    with pytest.raises(DataError, match="octahedral needs 3D volumes"):
        setup(octa, ds, aff)
