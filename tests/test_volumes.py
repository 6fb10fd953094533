"""Tests for affvae.volumes: one object per .mrc/.mrcs/.npy file, validated, written atomically."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from affvae import volumes
from affvae.errors import DataError
from affvae.volumes import read_volume, write_volume

RNG = np.random.default_rng(0)


def _vol(shape=(8, 8, 8), value=None):
    if value is not None:
        return np.full(shape, value, dtype=np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def _write_mrc(path: Path, arr: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(arr, dtype=np.float32))


@pytest.mark.parametrize("name,shape", [("v.mrc", (8, 8, 8)), ("v.npy", (6, 7, 8)),
                                        ("i.mrcs", (16, 12)), ("i.mrc", (16, 16)),
                                        ("i.npy", (16, 16))])
def test_write_read_roundtrip(tmp_path, name, shape):
    a = _vol(shape)
    write_volume(tmp_path / name, a, voxel_size=2.5)
    b = read_volume(tmp_path / name)
    assert b.dtype == np.float32 and b.shape == shape
    np.testing.assert_array_equal(a, b)
    if name.endswith((".mrc", ".mrcs")):
        with mrcfile.open(tmp_path / name) as m:
            assert float(m.voxel_size.x) == pytest.approx(2.5)
            if name.endswith(".mrcs"):
                assert m.header.ispg == 0 and m.header.nz == 1  # a one-image stack
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp files left


def test_read_squeezes_leading_singletons_and_casts(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(16, dtype=np.int16).reshape(1, 1, 4, 4))
    out = read_volume(tmp_path / "a.npy")
    assert out.shape == (4, 4) and out.dtype == np.float32 and out[3, 3] == 15.0


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    for name in ("v.mrc", "v.npy"):
        target = tmp_path / name
        old = _vol(value=7.0)
        write_volume(target, old)

        def boom(*a, **k):
            raise RuntimeError("disk full")

        with monkeypatch.context() as mp:
            mp.setattr(volumes.mrcfile, "new", boom)
            mp.setattr(volumes.np, "save", boom)
            with pytest.raises(RuntimeError, match="disk full"):
                write_volume(target, _vol(value=-1.0))
        np.testing.assert_array_equal(read_volume(target), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc", "v.npy"]


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"v\.npy.*shape 4"):
        write_volume(tmp_path / "v.npy", np.zeros(4))
    with pytest.raises(DataError, match=r"v\.tif.*unsupported"):
        write_volume(tmp_path / "v.tif", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"v\.npy.*1 non-finite"):
        write_volume(tmp_path / "v.npy", np.array([[0, np.nan], [1, 2]]))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["t.mrc", "t.npy"])
def test_truncated_file(tmp_path, name):
    p = tmp_path / name
    write_volume(p, _vol())
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{name}: cannot read"):
        read_volume(p)


def test_unreadable_files(tmp_path):
    (tmp_path / "g.mrc").write_bytes(b"not an mrc file" * 100)
    with pytest.raises(DataError, match=r"g\.mrc: cannot read MRC"):
        read_volume(tmp_path / "g.mrc")
    (tmp_path / "g.npy").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"g\.npy: cannot read"):
        read_volume(tmp_path / "g.npy")
    with pytest.raises(DataError, match=r"missing\.mrc: cannot read"):
        read_volume(tmp_path / "missing.mrc")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"s\.npy: data type"):
        read_volume(tmp_path / "s.npy")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), (8, 1)])
def test_not_2d_or_3d(tmp_path, shape):
    np.save(tmp_path / "w.npy", np.zeros(shape, np.float32))
    with pytest.raises(DataError, match=r"w\.npy: shape .* not a 2D image"):
        read_volume(tmp_path / "w.npy")


@pytest.mark.filterwarnings("ignore:Data array contains:RuntimeWarning")  # writing the bad file
def test_nonfinite_voxels(tmp_path):
    a = _vol()
    a[0, 0, :3] = np.nan
    a[1, 1, 1] = np.inf
    _write_mrc(tmp_path / "n_0.mrc", a)
    with pytest.raises(DataError, match=r"n_0\.mrc: 4 non-finite voxel\(s\) \(3 NaN, 1 Inf\)"):
        read_volume(tmp_path / "n_0.mrc")


# --------------------------------------------------------------------------- folders
