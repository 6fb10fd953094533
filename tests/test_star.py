"""RELION particle STAR files pointing at .mrc subtomograms."""

import numpy as np
import pytest

from affvae.data.star import load_star, read_star
from affvae.errors import DataError
from affvae.volumes import write_volume

STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
1 opticsGroup1 10.0 8 3

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnClassNumber #2
_rlnOpticsGroup #3
{rows}
"""


@pytest.fixture
def project(tmp_path):
    """A RELION-like project: subtomograms under Extract/, the STAR file in a job folder."""
    rng = np.random.default_rng(0)
    (tmp_path / "Extract" / "job002").mkdir(parents=True)
    (tmp_path / "Class3D" / "job005").mkdir(parents=True)
    rows = []
    for i in range(6):
        rel = f"Extract/job002/tomo1_{i:03d}.mrc"
        write_volume(tmp_path / rel, rng.normal(size=(8, 8, 8)).astype(np.float32) + i, voxel_size=10.0)
        rows.append(f"{rel} {1 + i % 2} 1")
    star = tmp_path / "Class3D" / "job005" / "run_data.star"
    star.write_text(STAR.format(rows="\n".join(rows)))
    return tmp_path, star


def test_particles_are_read_with_paths_relative_to_the_project(project):
    root, star = project
    files, labels = read_star(star)
    assert [f.name for f in files] == [f"tomo1_{i:03d}.mrc" for i in range(6)]
    assert labels.tolist() == ["1", "2", "1", "2", "1", "2"]
    ds = load_star(star, size=4)
    assert ds.x.shape == (6, 4, 4, 4) and ds.classes == ["1", "2"]
    assert ds.x[3].mean() > ds.x[0].mean()  # item order follows the STAR rows


def test_a_missing_subtomogram_is_one_line_naming_the_row(project):
    root, star = project
    (root / "Extract" / "job002" / "tomo1_004.mrc").unlink()
    with pytest.raises(DataError, match=r"run_data.star: row 5: rlnImageName 'Extract/job002/tomo1_004.mrc' "
                                        r"not found") as e:
        read_star(star)
    assert "\n" not in str(e.value)


def test_a_missing_class_column_names_the_column_and_those_present(project):
    _, star = project
    with pytest.raises(DataError, match=r"no column 'rlnHelicalTubeID' in block 'particles' "
                                        r"\(columns: rlnImageName, rlnClassNumber, rlnOpticsGroup\)"):
        read_star(star, class_column="rlnHelicalTubeID")


def test_not_a_star_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing.star: no such STAR file"):
        read_star(tmp_path / "nothing.star")
