import numpy as np
import pytest
import torch

from affvae.checkpoints import load_checkpoint
from affvae.config import build_config
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.data.splits import split_indices
from affvae.train import TrainingDiverged, train

# the paper's S (uniform pairs, no anchors) on minmax glyphs: the terms these tests work out by hand
SMALL = ["data.source=alphanumeric", "data.size=16", "data.glyphs=aeio", "data.n_per_class=12",
         "model.filters=[4, 8]", "model.latent_dims=4", "train.batch_size=8", "train.epochs=4",
         "train.checkpoint_every=1", "loss.gamma=1", "data.affinity_metric=ncc", "loss.pairs=uniform",
         "loss.anchors=0", "data.normalise=minmax", "loss.beta=1", "data.affinity_range=null"]


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
    assert h[-1]["train_total"] < 0.85 * h[0]["train_total"]  # 0.82 -> 0.60 here
    assert h[-1]["train_affinity"] < 0.8 * h[0]["train_affinity"]  # S is optimised, not only logged
    assert [e["train_items"] for e in h] == [len(res.splits.train)] * 4
    n_val = len(res.splits.val)
    for e in h:  # beta = gamma = 1: the total is the sum of its terms; accuracy counts val items
        assert e["val_total"] == pytest.approx(e["val_recon"] + e["val_kl"] + e["val_affinity"], rel=1e-6)
        assert e["val_accuracy"] * n_val == pytest.approx(round(e["val_accuracy"] * n_val), abs=1e-9)
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


# -- paths of the loop a config switches on ---------------------------------------------------

def _run(overrides, **kw):
    cfg = build_config(overrides=SMALL + overrides)
    ds = build_dataset(cfg)
    return cfg, ds, train(cfg, ds, resolve_affinity(cfg, ds) if cfg.loss.gamma > 0 else None, **kw)


def test_the_formula_convention_scales_the_terms_training_logs(small):
    # lr 1e-12: both runs keep the initial weights (same seed) and see the same batches,
    # so the logs differ only by each convention's scaling (16x16 glyphs, 4 latent dims)
    still = ["train.lr=1e-12", "train.epochs=1"]
    _, _, ref = _run(still)
    _, _, formula = _run(still + ["loss.convention=formula"])
    r, f = ref.history[0], formula.history[0]
    assert f["train_recon"] / r["train_recon"] == pytest.approx(16 * 16, rel=1e-4)  # summed over pixels
    assert f["train_kl"] / r["train_kl"] == pytest.approx(4, rel=1e-4)  # summed over latent dims
    assert f["val_recon"] / r["val_recon"] == pytest.approx(16 * 16, rel=1e-4)
    # S on the validation batch (z = mu there): the sum over ordered pairs / N against the
    # mean over pairs i < j is a factor N - 1
    n_val = len(ref.splits.val)
    assert f["val_affinity"] / r["val_affinity"] == pytest.approx(n_val - 1, rel=1e-4)
    # training: 32 items in full batches of 8, where S on mu would give a ratio of 8 - 1;
    # the formula scores the sampled z instead (11.6 here)
    assert r["train_items"] == f["train_items"] == 32
    assert abs(f["train_affinity"] / r["train_affinity"] - 7) > 1.0


def _cos_matrix(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_anchors_enter_the_affinity_term_of_training():
    from affvae.losses import class_anchors
    from affvae.model import encode_all

    w = 2.0
    cfg, ds, res = _run(["train.epochs=2", f"loss.anchors={w}"])
    val = res.splits.val
    mu, _, _ = encode_all(res.model, torch.from_numpy(ds.x[val]), torch.device("cpu"))
    mu = mu.astype(np.float64)
    A = res.affinity.values
    c = np.array([ds.classes.index(lab) for lab in ds.labels[val]])
    iu = np.triu_indices(len(val), 1)
    pairs = np.abs(A[c][:, c] - _cos_matrix(mu, mu))[iu].mean()
    P = class_anchors(torch.as_tensor(A, dtype=torch.float32), cfg.model.latent_dims).double().numpy()
    anchor = np.abs(A[c] - _cos_matrix(mu, P)).mean()  # each item against every class anchor
    assert anchor > 0.05
    assert res.history[-1]["val_affinity"] == pytest.approx(pairs + w * anchor, rel=1e-4)
    # and in the training steps: same weights and batches (lr 1e-12), the anchors add their term
    still = ["train.lr=1e-12", "train.epochs=1"]
    plain = _run(still)[2].history[0]["train_affinity"]
    anchored = _run(still + [f"loss.anchors={w}"])[2].history[0]["train_affinity"]
    assert anchored - plain > 0.1 * w


def test_beta_and_gamma_follow_their_schedules_in_training():
    _, _, res = _run(["loss.beta=2", "loss.beta_schedule.kind=linear", "loss.beta_schedule.warmup_epochs=4",
                      "loss.gamma=1", "loss.gamma_schedule.kind=cyclical", "loss.gamma_schedule.cycles=2",
                      "loss.gamma_schedule.ratio=0.5"])
    h = res.history
    assert [e["beta"] for e in h] == [0.5, 1.0, 1.5, 2.0]  # linear warm-up over 4 epochs
    assert [e["gamma"] for e in h] == [0.0, 1.0, 0.0, 1.0]  # two cycles of 2 epochs, ramp 1 epoch
    for e in h:  # the logged weights are the ones the loss used
        assert e["train_total"] == pytest.approx(e["train_recon"] + e["beta"] * e["train_kl"]
                                                 + e["gamma"] * e["train_affinity"], rel=1e-6)
        assert e["val_total"] == pytest.approx(e["val_recon"] + e["beta"] * e["val_kl"]
                                               + e["gamma"] * e["val_affinity"], rel=1e-6)
        assert (e["train_affinity"] > 0.01) == (e["gamma"] > 0)  # S is skipped at gamma 0


def test_max_minutes_stops_after_the_first_epoch_with_a_checkpoint(small, tmp_path):
    cfg, ds, aff = small
    limited = build_config(overrides=SMALL + ["train.max_minutes=0.0001", "train.checkpoint_every=5"])
    seen = []
    res = train(limited, ds, aff, checkpoint_dir=tmp_path / "ck", report=lambda m, ck: seen.append(ck))
    assert res.stopped_early and res.epochs_done == 1 and [h["epoch"] for h in res.history] == [1]
    # no checkpoint was due at epoch 1 (every 5): the stop writes one
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch_00001.pt"]
    assert seen == [tmp_path / "ck" / "epoch_00001.pt"] and load_checkpoint(seen[0])["epoch"] == 1
    again = train(cfg, ds, aff, checkpoint_dir=tmp_path / "ck", resume=True)
    assert [h["epoch"] for h in again.history] == [1, 2, 3, 4] and not again.stopped_early


def _cube_rotations(v: np.ndarray) -> set[bytes]:
    """The 24 rotations of a cubic array, as the closure of quarter turns about its axes."""
    seen, todo = {}, [v]
    while todo:
        a = todo.pop()
        if a.tobytes() in seen:
            continue
        seen[a.tobytes()] = a
        todo += [np.ascontiguousarray(np.rot90(a, 1, axes)) for axes in ((0, 1), (0, 2), (1, 2))]
    return set(seen)


TETRA = ["data.source=tetramino", "data.size=16", "data.cube=3", "data.shapes=[I, O, T]", "data.n_per_class=8",
         "model.filters=[4, 8]", "model.latent_dims=4", "train.batch_size=8", "train.epochs=2", "loss.gamma=0"]


@pytest.mark.parametrize("augment", ["none", "octahedral"])
def test_octahedral_augmentation_rotates_what_the_model_trains_on(augment):
    from affvae.model import AffinityVAE

    cfg = build_config(overrides=TETRA + [f"data.augment={augment}"])
    ds = build_dataset(cfg)
    fed = []

    def record(module, args):
        if isinstance(module, AffinityVAE) and module.training:
            fed.extend(args[0].detach().numpy().copy())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        res = train(cfg, ds)
    finally:
        handle.remove()
    items = ds.x[res.splits.train].astype(np.float32)
    assert len(items[0]) == 16 and len(fed) == 2 * len(items)  # every training item, each epoch
    as_is = {v.tobytes() for v in items}
    rotated = set().union(*(_cube_rotations(v) for v in items))
    assert len(rotated) > 20 * len(items)  # generic poses: (almost) 24 distinct views each
    unrotated = sum(v.tobytes() in as_is for v in fed)
    if augment == "none":
        assert unrotated == len(fed)
    else:  # each a cube rotation of a training item, and about 1 in 24 the identity
        assert all(v.tobytes() in rotated for v in fed)
        assert unrotated < len(fed) / 4
