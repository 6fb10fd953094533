"""Tests for affvae.data.sources: from a data config to a dataset and its affinity matrix."""

import numpy as np
import pytest

from affvae.config import build_config
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.errors import AffinityError
from affvae.volumes import write_volume


@pytest.fixture
def folder(tmp_path):
    """Classes a, b, c (3 random 8^3 volumes each) and an asymmetric affinity CSV beside them."""
    rng = np.random.default_rng(0)
    d = tmp_path / "d"
    for c in "abc":
        for i in range(3):
            write_volume(d / f"{c}_{i}.mrc", rng.standard_normal((8, 8, 8)))
    aff = tmp_path / "aff.csv"
    aff.write_text("a,b,c\n1,0.5,-0.5\n0.1,1,0\n-0.5,0,1\n")  # (a, b) 0.5 but (b, a) 0.1
    return d, aff


def test_a_given_affinity_csv_is_read_and_warned_about_once(folder, capsys):
    d, aff = folder
    cfg = build_config({"data": {"source": "folder", "path": str(d), "affinity": str(aff),
                                 "classes": ["b", "a"]}})
    ds = build_dataset(cfg)
    matrix = resolve_affinity(cfg, ds)
    assert matrix.classes == ("b", "a") and matrix.values[0, 1] == matrix.values[1, 0] == pytest.approx(0.3)
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ": warning: " in ln]
    assert len(warnings) == 1 and f"{aff}: not symmetric, largest |A - A^T| is 0.4 at (a, b)" in warnings[0]


def test_data_affinity_strict_refuses_it(folder, capsys):
    d, aff = folder
    cfg = build_config({"data": {"source": "folder", "path": str(d), "affinity": str(aff),
                                 "affinity_strict": True}})
    with pytest.raises(AffinityError, match=r"aff\.csv: not symmetric: \(a, b\) = 0.5 but \(b, a\) = 0.1"):
        build_dataset(cfg)
    assert capsys.readouterr().err == ""
