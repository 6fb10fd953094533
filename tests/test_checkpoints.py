"""Checkpoints: atomic writes, the newest good one with fallback, stale temporaries, model checks."""

from __future__ import annotations

import pytest
import torch

from affvae.checkpoints import (
    check_matches,
    checkpoint_files,
    load_checkpoint,
    newest_good_checkpoint,
    remove_stale_temps,
    restore,
    save_checkpoint,
)
from affvae.config import build_config
from affvae.errors import AffvaeError
from affvae.model import build_model

SMALL = ["model.filters=[2, 4]", "model.latent_dims=3", "model.pose_dims=1"]


def _model(*extra, shape=(16, 16)):
    cfg = build_config(overrides=SMALL + list(extra))
    model = build_model(cfg, shape)
    return cfg, model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _write(directory, epochs, *extra):
    cfg, model, opt = _model(*extra)
    return [save_checkpoint(directory, e, model, opt, None, [{"epoch": k + 1} for k in range(e)],
                            config=cfg.to_dict()) for e in epochs]


def test_save_keeps_the_two_newest_and_stores_config_and_shape(tmp_path):
    _write(tmp_path, [1, 2, 3])
    assert [p.name for p in checkpoint_files(tmp_path)] == ["epoch_00002.pt", "epoch_00003.pt"]
    state = load_checkpoint(tmp_path / "epoch_00003.pt")
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert state["config"]["model"]["latent_dims"] == 3 and state["shape"] == [16, 16]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, capsys):
    _write(tmp_path, [1, 2])
    newest = tmp_path / "epoch_00002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    path, state = newest_good_checkpoint(tmp_path)
    assert path.name == "epoch_00001.pt" and state["epoch"] == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "warning" in err
    assert "epoch_00002.pt: cannot read checkpoint" in err and "resuming from epoch_00001.pt" in err


def test_a_model_file_in_place_of_a_checkpoint_is_not_a_checkpoint(tmp_path, capsys):
    _write(tmp_path, [1, 2])
    _, model, _ = _model()
    torch.save(model.state_dict(), tmp_path / "epoch_00002.pt")  # model.pt copied over it
    with pytest.raises(AffvaeError, match=r"epoch_00002.pt: not a training checkpoint \(no epoch"):
        load_checkpoint(tmp_path / "epoch_00002.pt")
    path, _ = newest_good_checkpoint(tmp_path)
    assert path.name == "epoch_00001.pt"
    assert "not a training checkpoint" in capsys.readouterr().err


def test_no_readable_checkpoint_is_one_error_and_none_is_none(tmp_path):
    assert newest_good_checkpoint(tmp_path / "missing") is None
    _write(tmp_path, [1])
    (tmp_path / "epoch_00001.pt").write_bytes(b"")
    with pytest.raises(AffvaeError, match="epoch_00001.pt: cannot read checkpoint.*no other checkpoint"):
        newest_good_checkpoint(tmp_path)


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    _write(tmp_path, [1])
    stale = [tmp_path / ".epoch_00002.k2j3h4.pt", tmp_path / ".epoch_00003.abcdef.pt"]
    for p in stale:
        p.write_bytes(b"")  # what a SIGKILL during torch.save leaves
    _write(tmp_path, [2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_00001.pt", "epoch_00002.pt"]
    stale[0].write_bytes(b"")
    assert remove_stale_temps(tmp_path) == [stale[0]]


def test_a_different_model_is_refused_by_config_and_by_shapes(tmp_path):
    (path,) = _write(tmp_path, [1])
    state = load_checkpoint(path)
    cfg6, model6, _ = _model("model.latent_dims=6")
    with pytest.raises(AffvaeError, match=r"model.latent_dims is 3 in the checkpoint but 6 now"):
        check_matches(state, path, config=cfg6.to_dict())
    old_style = {k: v for k, v in state.items() if k not in ("config", "shape")}  # before configs were saved
    with pytest.raises(AffvaeError, match=r"cannot resume a different model: .* has shape \[3, \d+\] in the "
                                          r"checkpoint but \[6, \d+\] now"):
        check_matches(old_style, path, model=model6)
    _, model32, _ = _model(shape=(32, 32))
    with pytest.raises(AffvaeError, match="trained on items of 16x16, the data now are 32x32"):
        check_matches(state, path, model=model32)
    cfg, model, opt = _model()
    check_matches(state, path, model=model, config=cfg.to_dict())  # the same model passes
    history, epoch, restarts = restore(state, path, model, opt)
    assert (epoch, restarts, len(history)) == (1, 1, 1)


def test_a_full_disk_keeps_the_previous_checkpoint(small_fs):
    ck = small_fs("64k") / "checkpoints"
    _write(ck, [1])
    before = (ck / "epoch_00001.pt").read_bytes()
    with pytest.raises(OSError) as e:
        _write(ck, [2], "model.filters=[16, 32]")  # larger than the space left
    assert e.value.errno == 28 and e.value.filename == str(ck / "epoch_00002.pt")
    assert [p.name for p in ck.iterdir()] == ["epoch_00001.pt"]  # no temporary file either
    assert (ck / "epoch_00001.pt").read_bytes() == before
