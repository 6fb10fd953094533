"""Tests for affvae.data.representatives: one object per class of a folder."""

import numpy as np
import pytest

from affvae.data.io import index_folder
from affvae.data.representatives import class_representatives
from affvae.errors import AffinityError
from affvae.volumes import write_volume


def test_representatives_prefer_templates_else_medoid(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 8, 8)).astype(np.float32)
    other = rng.standard_normal((8, 8, 8)).astype(np.float32)
    # class 'a': three noisy copies of base and one outlier; the medoid is a copy
    for i, noise in enumerate([0.1, 0.2, 0.15]):
        write_volume(tmp_path / f"a_{i}.mrc", base + noise * rng.standard_normal(base.shape))
    write_volume(tmp_path / "a_9.mrc", other)
    write_volume(tmp_path / "b_0.mrc", other)
    write_volume(tmp_path / "template_b.mrc", -other)
    index = index_folder(tmp_path, affinity=False)
    classes, X, source = class_representatives(index, "fsc")
    assert classes == ["a", "b"]
    assert source["a"].startswith("medoid of 4: ") and "a_9" not in source["a"]
    assert np.corrcoef(X[0].ravel(), base.ravel())[0, 1] > 0.9
    assert np.array_equal(X[1], -other)


def test_a_constant_representative_is_named_by_its_file(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            write_volume(tmp_path / f"{c}_{i}.mrc", rng.standard_normal((8, 8, 8)))
    write_volume(tmp_path / "b_1.mrc", np.full((8, 8, 8), 2.0))  # a medoid candidate
    with pytest.raises(AffinityError, match=r"b_1.mrc: every voxel has the same value \(class 'b'\)"):
        class_representatives(index_folder(tmp_path, affinity=False), "ncc")
