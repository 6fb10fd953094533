import numpy as np
import pytest

from affvae.affinity.matrix import (
    AffinityMatrix,
    compute_matrix,
    read_affinity_csv,
    write_affinity_csv,
)
from affvae.data.simulate import TetraminoSimulator
from affvae.errors import AffinityError


def test_csv_round_trip_in_anchor_format(tmp_path):
    m = AffinityMatrix(("a", "b", "c"), np.array([[1, 0.25, -0.5], [0.25, 1, 0.1], [-0.5, 0.1, 1]]))
    p = write_affinity_csv(m, tmp_path / "affinity.csv")
    lines = p.read_text().splitlines()
    assert lines[0] == "a,b,c" and len(lines) == 4
    back = read_affinity_csv(p)
    assert back.classes == ("a", "b", "c") and np.array_equal(back.values, m.values)
    assert back.subset(["c", "a"]).values.tolist() == [[1.0, -0.5], [-0.5, 1.0]]


def test_pandas_index_column_is_tolerated(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(",x,y\nx,1,0.5\ny,0.5,1\n")
    assert read_affinity_csv(p).values[0, 1] == 0.5


@pytest.mark.parametrize("text, match", [
    ("a,b\n1,0.5\n", "not square"),
    ("a,b\n1,1.5\n1.5,1\n", "1.5.*outside"),
    ("a,b\n1,x\nx,1\n", "'x' is not a number"),
    ("a,b\n0.9,0.5\n0.5,1\n", r"diagonal value 0.9 at \(a, a\)"),
    # an asymmetric matrix is symmetrised, but not one that is also out of range
    ("a,b\n1,1.5\n0.2,1\n", "1.5.*outside"),
    ("", "empty"),
])
@pytest.mark.parametrize("strict", [False, True])
def test_bad_csv_is_rejected_with_one_clear_line(tmp_path, text, match, strict, capsys):
    p = tmp_path / "affinity.csv"
    p.write_text(text)
    with pytest.raises(AffinityError, match=match) as e:
        read_affinity_csv(p, strict=strict)
    assert "\n" not in str(e.value) and "affinity.csv" in str(e.value)
    assert capsys.readouterr().err == ""


# a, b, c with two asymmetric pairs: (a, b) off by 0.1, (b, c) by 0.3 (the largest)
ASYM = "a,b,c\n1,0.5,0\n0.4,1,-0.2\n0,0.1,1\n"


def test_asymmetric_csv_is_symmetrised_with_one_warning(tmp_path, capsys):
    p = tmp_path / "affinity_x.csv"
    p.write_text(ASYM)
    m = read_affinity_csv(p)
    np.testing.assert_allclose(m.values, [[1, 0.45, 0], [0.45, 1, -0.05], [0, -0.05, 1]])
    assert np.array_equal(m.values, m.values.T) and m.classes == ("a", "b", "c")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"affvae: warning: {p}: not symmetric, largest |A - A^T| is 0.3 at (b, c)")
    assert "(b, c) = -0.2 but (c, b) = 0.1" in line and "(A + A^T)/2" in line


def test_strict_refuses_an_asymmetric_csv_naming_the_largest_pair(tmp_path, capsys):
    p = tmp_path / "affinity.csv"
    p.write_text(ASYM)
    with pytest.raises(AffinityError, match=r"affinity\.csv: not symmetric: \(b, c\) = -0.2 but "
                                             r"\(c, b\) = 0.1 \(largest \|A - A\^T\| 0.3\)"):
        read_affinity_csv(p, strict=True)
    assert capsys.readouterr().err == ""


def test_asymmetry_within_the_tolerance_is_kept_silently(tmp_path, capsys):
    p = tmp_path / "affinity.csv"
    p.write_text("a,b\n1,0.50004\n0.5,1\n")
    m = read_affinity_csv(p, strict=True)
    assert m.values[0, 1] == 0.50004 and m.values[1, 0] == 0.5  # not rewritten
    assert read_affinity_csv(p).values[0, 1] == 0.50004
    assert capsys.readouterr().err == ""


def test_validate_is_strict_by_default_for_matrices_in_memory(capsys):
    m = AffinityMatrix(("a", "b"), np.array([[1.0, 0.5], [0.3, 1.0]]))
    with pytest.raises(AffinityError, match=r"my matrix: not symmetric: \(a, b\) = 0.5"):
        m.validate("my matrix")
    sym = m.validate("my matrix", strict=False)
    assert sym.values[0, 1] == sym.values[1, 0] == pytest.approx(0.4)
    assert m.values[0, 1] == 0.5  # the original is not changed
    assert "my matrix: not symmetric, largest |A - A^T| is 0.2 at (a, b)" in capsys.readouterr().err


def test_missing_class_is_named(tmp_path):
    m = AffinityMatrix(("a", "b"), np.eye(2))
    with pytest.raises(AffinityError, match="'z'"):
        m.subset(["a", "z"])


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "affinity.csv"
    p.write_text("old contents\n")

    class Boom(AffinityMatrix):
        def to_csv_text(self):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_affinity_csv(Boom(("a",), np.eye(1)), p)
    assert p.read_text() == "old contents\n"
    assert [q.name for q in tmp_path.iterdir()] == ["affinity.csv"]


def test_compute_matrix_is_cached_by_content(tmp_path):
    sim = TetraminoSimulator(size=16, cube=2, shapes=["I", "O", "T"])
    X = np.stack([sim.template(c) for c in sim.classes])
    a = compute_matrix(sim.classes, X, "fsc")
    files = list((tmp_path / "affvae-cache" / "affinity").glob("*.csv"))
    assert len(files) == 1
    # tamper with the cache entry: a second call must read it, not recompute
    forged = AffinityMatrix(a.classes, np.full((3, 3), 0.5) + 0.5 * np.eye(3))
    write_affinity_csv(forged, files[0])
    assert np.array_equal(compute_matrix(sim.classes, X, "fsc").values, forged.values)
    # different content, metric or alignment -> different key, recomputed
    b = compute_matrix(sim.classes, X[::-1].copy(), "fsc")
    assert not np.array_equal(b.values, forged.values)
    assert compute_matrix(sim.classes, X, "ncc").values[0, 1] != 0.5
    assert np.allclose(compute_matrix(sim.classes, X, "fsc", cache=False).values, a.values)


def test_non_utf8_csv_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes(b"\xff\xfe\x00garbage\x00\n")
    with pytest.raises(AffinityError, match=r"a.csv: not UTF-8 text \(byte 0xff at offset 0\)") as e:
        read_affinity_csv(p)
    assert "\n" not in str(e.value)
    p.write_bytes(b"a,b\n1,0.5\n0.5,1\n\x00\n")
    with pytest.raises(AffinityError, match="a.csv: holds NUL bytes"):
        read_affinity_csv(p)


def test_a_byte_order_mark_is_not_part_of_the_first_class(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufeffI,O\n1,0.2\n0.2,1\n".encode())
    m = read_affinity_csv(p)
    assert m.classes == ("I", "O")
    assert m.subset(["O", "I"]).values[0, 1] == pytest.approx(0.2)


def test_the_diagonal_must_be_ones(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("I,O,T\n0.9,0.2,0.3\n0.2,1,0.1\n0.3,0.1,1\n")
    with pytest.raises(AffinityError, match=r"a.csv: diagonal value 0.9 at \(I, I\), expected 1"):
        read_affinity_csv(p)
    p.write_text("I,O\n1.00001,0.2\n0.2,1\n")  # within the tolerance of a rounded write
    assert read_affinity_csv(p).classes == ("I", "O")
    with pytest.raises(AffinityError, match=r"diagonal value 0 at \(b, b\)"):
        AffinityMatrix(("a", "b"), np.array([[1.0, 0.5], [0.5, 0.0]])).validate()


def test_a_constant_template_is_named_by_its_file():
    rng = np.random.default_rng(0)
    X = np.stack([rng.standard_normal((8, 8, 8)), np.zeros((8, 8, 8))])
    with pytest.raises(AffinityError, match=r"template_b.mrc: every voxel has the same value \(class 'b'\)"):
        compute_matrix(["a", "b"], X, "ncc", cache=False, sources=["template_a.mrc", "template_b.mrc"])
