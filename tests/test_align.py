"""Tests for affvae.affinity.align: the best similarity of templates over rotations."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from affvae.affinity import align
from affvae.affinity.metrics import similarity_matrix
from affvae.data.proteins import ProteinSimulator
from affvae.transforms.augment import angle_to_matrix, rotate


@pytest.fixture(scope="module")
def proteins():
    """Two panel proteins at 18 Å in a 24^3 box of 6 Å voxels, and an exactly rendered rotated copy."""
    from affvae.data.proteins import PANEL_DIR

    files = [PANEL_DIR / "1pwc.pdb.gz", PANEL_DIR / "3hsy.pdb.gz"]
    sim = ProteinSimulator(structures=files, size=24, resolution=18.0, voxel_size=6.0)
    names = ["1pwc", "3hsy"]
    pose = Rotation.random(1, random_state=3).as_euler("ZYZ", degrees=True)
    turned = sim.render(["1pwc"], pose)[0]
    return np.stack([sim.template(c) for c in names] + [turned])


def test_a_template_and_its_rotated_copy_are_aligned_to_within_002_of_one(proteins):
    values, rotations = align.aligned_values(proteins, "fsc")
    assert values[0, 2] > 0.98  # the exact map of 1pwc in another pose
    plain = similarity_matrix(proteins, metric="fsc")
    assert plain[0, 2] < 0.9  # as they lie, the copy is a different map
    # symmetric, unit diagonal, never below the unaligned value (identity is in the coarse set)
    np.testing.assert_allclose(values, values.T)
    np.testing.assert_allclose(np.diag(values), 1.0)
    assert (values >= plain - 0.02).all()
    # the found rotation turns the copy back onto the template
    back = rotate(proteins[2:3], rotations[0, 2][None])
    assert np.corrcoef(back.ravel(), proteins[0].ravel())[0, 1] > 0.99
    assert values[0, 1] < values[0, 2]  # another protein stays less alike than the copy


def test_the_coarse_search_in_blocks_merges_to_the_whole(proteins):
    rots = align.coarse_rotations(3, 60)
    whole = align.coarse_best(proteins, "fsc", rots)
    parts = [align.coarse_best(proteins, "fsc", rots[a:b]) for a, b in ((0, 25), (25, 60))]
    best, arg = align.merge_coarse(parts, [25, 35])
    np.testing.assert_allclose(best, whole[0])
    np.testing.assert_array_equal(arg, whole[1])


def test_images_are_aligned_in_the_plane():
    from affvae.transforms.glyphs import render_glyphs

    upright = render_glyphs(["k", "a"], np.zeros(2), 32)
    turned = rotate(upright[:1], angle_to_matrix([37.0]))
    values = align.aligned_cross(turned, upright, "ncc")
    assert values[0, 0] > 0.95 and values[0, 0] > values[0, 1]
    plain = similarity_matrix(turned, upright, metric="ncc")
    assert values[0, 0] > plain[0, 0] + 0.1


def test_metrics_without_an_aligned_mode_are_refused():
    from affvae.errors import AffinityError

    with pytest.raises(AffinityError, match="soap.*no aligned mode"):
        align.aligned_values(np.random.default_rng(0).random((2, 16, 16)), "soap")
