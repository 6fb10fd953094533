"""Tests for affvae.data.io: the anchor folder layout, validation and atomic writes."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from affvae.affinity.matrix import AffinityMatrix
from affvae.data.io import (
    check_test_folder,
    has_test_folder,
    index_folder,
    load_folder,
)
from affvae.errors import AffinityError, DataError

RNG = np.random.default_rng(0)


def _vol(shape=(8, 8, 8), value=None):
    if value is not None:
        return np.full(shape, value, dtype=np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def _write_mrc(path: Path, arr: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(arr, dtype=np.float32))


AFF_TEXT = "a,b,c\n1.0,0.5,-0.25\n0.5,1.0,0.1\n-0.25,0.1,1.0\n"


@pytest.fixture
def vol_dir(tmp_path):
    """3D: classes a (3 items, mrc), b (2, npy), c (2, mrc); value = class index + 1."""
    root = tmp_path / "vols"
    root.mkdir()
    for i in range(3):
        _write_mrc(root / f"a_{i}.mrc", _vol(value=1.0))
    for i in range(2):
        np.save(root / f"b_{i}_x.npy", _vol(value=2.0))
    for i in range(2):
        _write_mrc(root / f"c_{i}.mrc", _vol(value=3.0))
    _write_mrc(root / "template_a.mrc", _vol(value=10.0))
    np.save(root / "template_b.npy", _vol(value=20.0))
    # files that must be ignored
    (root / "notes.json").write_text("{}")
    (root / "picture.png").write_bytes(b"\x89PNG")
    np.save(root / ".hidden_0.npy", _vol())
    return root


@pytest.fixture
def img_dir(tmp_path):
    """2D: 16x16 images as .mrcs one-image stacks and .npy."""
    root = tmp_path / "imgs"
    root.mkdir()
    with mrcfile.new(root / "x_0.mrcs") as m:
        m.set_data(_vol((1, 16, 16), 1.0))
    np.save(root / "y_0.npy", _vol((16, 16), 2.0))
    np.save(root / "y_1.npy", _vol((16, 16), 4.0))
    return root


# --------------------------------------------------------------------------- volumes


def test_load_folder_labels_values_templates(vol_dir):
    ds = load_folder(vol_dir)
    assert ds.paths == ["a_0.mrc", "a_1.mrc", "a_2.mrc", "b_0_x.npy", "b_1_x.npy",
                        "c_0.mrc", "c_1.mrc"]
    assert ds.labels.tolist() == ["a", "a", "a", "b", "b", "c", "c"]
    assert ds.classes == ["a", "b", "c"]
    assert ds.x.dtype == np.float32 and ds.x.shape == (7, 8, 8, 8)
    assert ds.ndim == 3 and ds.shape == (8, 8, 8) and len(ds) == 7
    np.testing.assert_array_equal(ds.x.mean(axis=(1, 2, 3)), [1, 1, 1, 2, 2, 3, 3])
    assert set(ds.templates) == {"a", "b"}
    assert ds.templates["a"].shape == (8, 8, 8) and ds.templates["b"][0, 0, 0] == 20.0
    assert ds.affinity is None and ds.seen.all()
    assert not has_test_folder(vol_dir)


def test_load_folder_2d(img_dir):
    ds = load_folder(img_dir, progress=True)
    assert ds.ndim == 2 and ds.shape == (16, 16)
    assert ds.labels.tolist() == ["x", "y", "y"]
    np.testing.assert_array_equal(ds.x[:, 5, 5], [1, 2, 4])


def test_index_does_not_read_voxels(vol_dir):
    # a corrupt data file is only noticed when read, not when listed
    (vol_dir / "a_9.mrc").write_bytes(b"garbage")
    idx = index_folder(vol_dir)
    assert len(idx) == 8 and idx.templates == {"a": "template_a.mrc", "b": "template_b.npy"}
    assert idx.classes == ["a", "b", "c"] and idx.unseen_classes == []
    with pytest.raises(DataError, match=r"a_9\.mrc: cannot read MRC"):
        load_folder(vol_dir)


def test_classes_csv_restricts_and_flags_unseen(vol_dir):
    (vol_dir / "classes.csv").write_text(" c , a\n\n\n")
    idx = index_folder(vol_dir)
    assert idx.classes == ["c", "a"] and idx.unseen_classes == ["b"]
    ds = load_folder(vol_dir)
    assert ds.classes == ["c", "a"] and len(ds) == 7  # unseen items kept
    assert ds.seen.tolist() == [True, True, True, False, False, True, True]
    assert ds.labels[~ds.seen].tolist() == ["b", "b"]
    assert [p for p, s in zip(ds.paths, ds.seen) if not s] == ["b_0_x.npy", "b_1_x.npy"]
    # the explicit argument wins over classes.csv
    assert index_folder(vol_dir, classes=["b"]).classes == ["b"]


def test_affinity_csv_subset_order_and_values(vol_dir):
    (vol_dir / "affinity_matrix.csv").write_text(AFF_TEXT)
    (vol_dir / "classes.csv").write_text("c,a\n")
    ds = load_folder(vol_dir)
    assert ds.affinity.classes == ("c", "a")
    np.testing.assert_allclose(ds.affinity.values, [[1.0, -0.25], [-0.25, 1.0]])
    # full class list without classes.csv
    (vol_dir / "classes.csv").unlink()
    idx = index_folder(vol_dir)
    assert idx.affinity.classes == ("a", "b", "c")
    assert idx.affinity_path == vol_dir / "affinity_matrix.csv"
    np.testing.assert_allclose(idx.affinity.values[0], [1.0, 0.5, -0.25])
    # an in-memory matrix is accepted too
    m = AffinityMatrix(("b", "a", "c"), np.eye(3))
    assert index_folder(vol_dir, affinity=m).affinity.classes == ("a", "b", "c")


def test_explicit_affinity_path(vol_dir, tmp_path):
    (vol_dir / "affinity_1.csv").write_text(AFF_TEXT)
    (vol_dir / "affinity_2.csv").write_text(AFF_TEXT)
    with pytest.raises(AffinityError, match=r"affinity_1\.csv, affinity_2\.csv.*pick one"):
        index_folder(vol_dir)
    idx = index_folder(vol_dir, affinity=vol_dir / "affinity_2.csv")
    assert idx.affinity_path.name == "affinity_2.csv" and len(idx.affinity) == 3
    with pytest.raises(AffinityError, match=r"nowhere\.csv"):
        index_folder(vol_dir, affinity=tmp_path / "nowhere.csv")


@pytest.mark.parametrize("text,match", [
    ("a,b\n1,0.5\n0.5,1\n", r"aff\.csv: missing class 'c'"),
    ("a,b,c\n1,0.5,0\n0.5,1,0\n", r"aff\.csv: not square"),
    ("a,b,c\n1,2,0\n2,1,0\n0,0,1\n", r"aff\.csv: value 2 .* outside \[-1, 1\]"),
])
def test_bad_affinity_csv(vol_dir, text, match):
    (vol_dir / "aff.csv").write_text(text)
    with pytest.raises(AffinityError, match=match):
        index_folder(vol_dir, affinity=vol_dir / "aff.csv")


ASYM_TEXT = "a,b,c\n1.0,0.5,-0.25\n0.3,1.0,0.1\n-0.25,0.1,1.0\n"  # (a, b) 0.5 but (b, a) 0.3


def test_asymmetric_affinity_csv_is_symmetrised_with_a_warning(vol_dir, capsys):
    (vol_dir / "affinity.csv").write_text(ASYM_TEXT)
    (vol_dir / "classes.csv").write_text("b,a\n")
    ds = load_folder(vol_dir)
    assert ds.affinity.classes == ("b", "a")
    np.testing.assert_allclose(ds.affinity.values, [[1.0, 0.4], [0.4, 1.0]])
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{vol_dir / 'affinity.csv'}: not symmetric, largest |A - A^T| is 0.2 at (a, b)" in line


def test_strict_refuses_an_asymmetric_affinity(vol_dir, capsys):
    (vol_dir / "affinity.csv").write_text(ASYM_TEXT)
    for call in (index_folder, load_folder):
        with pytest.raises(AffinityError, match=r"affinity\.csv: not symmetric: \(a, b\) = 0.5"):
            call(vol_dir, strict=True)
    # a matrix given in memory: symmetrised the same way, or refused when strict
    m = AffinityMatrix(("a", "b", "c"), np.array([[1, 0.5, 0], [0.3, 1, 0], [0, 0, 1]]))
    assert index_folder(vol_dir, affinity=m).affinity.values[0, 1] == pytest.approx(0.4)
    assert "affinity argument: not symmetric" in capsys.readouterr().err
    with pytest.raises(AffinityError, match=r"affinity argument: not symmetric"):
        index_folder(vol_dir, affinity=m, strict=True)


def test_resize_to_box(vol_dir, img_dir):
    ds = load_folder(vol_dir, size=4)
    assert ds.x.shape == (7, 4, 4, 4) and ds.shape == (4, 4, 4) and ds.file_shape == (8, 8, 8)
    assert load_folder(img_dir).file_shape == (16, 16)
    assert ds.templates["a"].shape == (4, 4, 4)
    np.testing.assert_allclose(ds.x.mean(axis=(1, 2, 3)), [1, 1, 1, 2, 2, 3, 3], rtol=1e-5)
    np.testing.assert_allclose(ds.templates["b"].mean(), 20.0, rtol=1e-5)
    # random content: the mean is preserved roughly when upsampling a 2D image
    rnd = _vol((16, 16))
    np.save(img_dir / "z_0.npy", rnd)
    ds2 = load_folder(img_dir, size=24)
    assert ds2.x.shape == (4, 24, 24) and ds2.x.dtype == np.float32
    assert ds2.x[-1].mean() == pytest.approx(rnd.mean(), abs=0.05)
    with pytest.raises(DataError, match="size=0"):
        load_folder(img_dir, size=0)


def test_test_subfolder_not_mixed(vol_dir):
    test = vol_dir / "test"
    test.mkdir()
    _write_mrc(test / "a_t.mrc", _vol(value=5.0))
    np.save(test / "d_t.npy", _vol(value=6.0))
    assert has_test_folder(vol_dir)
    ds = load_folder(vol_dir)
    assert len(ds) == 7 and not any(p.startswith("test") for p in ds.paths)
    t = load_folder(vol_dir / "test")
    assert t.labels.tolist() == ["a", "d"] and t.paths == ["a_t.mrc", "d_t.npy"]
    np.testing.assert_array_equal(t.x[:, 0, 0, 0], [5.0, 6.0])


# --------------------------------------------------------------------------- bad folders


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope: dataset folder does not exist"):
        index_folder(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match=r"f\.txt: expected a dataset folder"):
        load_folder(tmp_path / "f.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "classes.csv").write_text("a\n")
    _write_mrc(empty / "template_a.mrc", _vol())
    with pytest.raises(DataError, match=r"empty: no data files"):
        load_folder(empty)


def test_name_without_class_prefix(vol_dir):
    np.save(vol_dir / "noclass.npy", _vol())
    with pytest.raises(DataError, match=r"noclass\.npy: file name has no class prefix"):
        index_folder(vol_dir)


def test_mixed_shapes_name_both_files(vol_dir):
    _write_mrc(vol_dir / "c_9.mrc", _vol((8, 8, 6)))
    with pytest.raises(DataError, match=r"c_9\.mrc: shape 8x8x6 differs from 8x8x8 of a_0\.mrc"):
        load_folder(vol_dir)


def test_nonfinite_in_folder(vol_dir):
    a = _vol()
    a[2, 2, 2] = np.nan
    np.save(vol_dir / "b_9.npy", a)
    with pytest.raises(DataError, match=r"b_9\.npy: 1 non-finite"):
        load_folder(vol_dir)


def test_template_shape_mismatch(vol_dir):
    _write_mrc(vol_dir / "template_c.mrc", _vol((4, 4, 4)))
    with pytest.raises(DataError, match=r"template_c\.mrc: template shape 4x4x4 differs"):
        load_folder(vol_dir)


def test_duplicate_template(vol_dir):
    np.save(vol_dir / "template_a.npy", _vol())
    with pytest.raises(DataError, match=r"template_a\..*second template for class 'a'"):
        index_folder(vol_dir)


@pytest.mark.parametrize("text,match", [
    ("zz,yy\n", r"classes\.csv: classes 'zz', 'yy' listed to train on but .* has no "
                r"<class>_\*\.mrc\|\.mrcs\|\.npy file for them \(found a, b, c\)"),
    ("a,a\n", r"classes\.csv: duplicate class name\(s\) 'a'"),
    ("\n\n", r"classes\.csv: empty"),
    ("a\nb\n", r"classes\.csv: 2 non-blank lines"),
])
def test_bad_classes_csv(vol_dir, text, match):
    (vol_dir / "classes.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        index_folder(vol_dir)


def test_classes_csv_class_without_files_is_dropped_with_a_warning(vol_dir, capsys):
    (vol_dir / "classes.csv").write_text("c,zz,a,yy\n")
    (vol_dir / "affinity.csv").write_text(AFF_TEXT)  # has no zz or yy: only the classes kept count
    ds = load_folder(vol_dir)
    assert ds.classes == ["c", "a"] and ds.labels[~ds.seen].tolist() == ["b", "b"]
    assert ds.affinity.classes == ("c", "a")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"affvae: warning: {vol_dir / 'classes.csv'}: classes 'zz', 'yy' listed to "
                           "train on but")
    assert line.endswith("training on the other 2 (c, a)")


def test_classes_argument_missing_class(vol_dir):
    with pytest.raises(DataError, match=r"class 'q' listed to train on"):
        load_folder(vol_dir, classes=["a", "q"])


def test_errors_are_one_line(vol_dir):
    (vol_dir / "a_0.mrc").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError) as exc:
        load_folder(vol_dir)
    assert "\n" not in str(exc.value) and "a_0.mrc" in str(exc.value)


def test_classes_argument_as_comma_string(vol_dir):
    assert index_folder(vol_dir, classes="b, a").classes == ["b", "a"]


def test_a_broken_link_with_a_data_name_is_an_error(vol_dir):
    (vol_dir / "a_99999.mrc").symlink_to(vol_dir / "gone.mrc")
    with pytest.raises(DataError, match=r"a_99999.mrc: broken symbolic link \(to .*gone.mrc"):
        index_folder(vol_dir)
    (vol_dir / "a_99999.mrc").unlink()
    (vol_dir / "notes.txt").symlink_to(vol_dir / "gone.txt")  # not a data file name: ignored
    assert len(index_folder(vol_dir)) == 7


def test_the_test_folder_is_validated_like_its_parent(vol_dir, capsys):
    test = vol_dir / "test"
    test.mkdir()
    load_folder(vol_dir, test_folder=True)  # empty: ignored, with a warning
    assert "test: no data files" in capsys.readouterr().err
    _write_mrc(test / "a_t.mrc", _vol())
    np.save(test / "d_t.npy", _vol())
    index = check_test_folder(vol_dir, (8, 8, 8))
    assert index.labels.tolist() == ["a", "d"]
    _write_mrc(test / "b_big.mrc", _vol((16, 16, 16)))
    with pytest.raises(DataError, match=r"test/b_big.mrc: shape 16x16x16 differs from 8x8x8"):
        load_folder(vol_dir, test_folder=True)
    assert len(load_folder(vol_dir)) == 7  # only when asked
    _write_mrc(test / "b_big.mrc", _vol())
    assert load_folder(vol_dir, size=4, test_folder=True).shape == (4, 4, 4)  # compared before resizing
    (test / "b_big.mrc").write_bytes((test / "b_big.mrc").read_bytes()[:-100])
    with pytest.raises(DataError, match=r"test/b_big.mrc: cannot read MRC file"):
        load_folder(vol_dir, test_folder=True)
