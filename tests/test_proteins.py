"""Protein density maps: exact Gaussian sums, exact rotations, clear errors."""

import gzip

import numpy as np
import pytest

from affvae.data.proteins import SIGMA_FACTOR, ProteinSimulator, read_atoms, structure_files
from affvae.errors import DataError
from affvae.transforms.augment import euler_to_matrix, rotate

ELEMENTS = {"C": 6, "N": 7, "O": 8, "S": 16}


def write_pdb(path, xyz, elements, extra=()):
    lines = []
    for i, ((x, y, z), el) in enumerate(zip(xyz, elements), start=1):
        name = f" {el:<3}"
        lines.append(f"ATOM  {i:5d} {name} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {el:>2}")
    lines += list(extra)
    lines.append("END")
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def blob(tmp_path):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(150, 3)) * np.array([9.0, 5.0, 3.0])  # an elongated cloud of atoms
    els = rng.choice(list(ELEMENTS), size=len(xyz))
    water_and_h = [  # must be ignored
        "HETATM 9001  O   HOH W   1      30.000  30.000  30.000  1.00  0.00           O",
        "ATOM   9002  H   ALA A   1      -1.000   2.000   3.000  1.00  0.00           H",
    ]
    return write_pdb(tmp_path / "my_blob.pdb.gz", xyz, els, water_and_h), xyz, els


def direct_sum(xyz, z, size, voxel, resolution):
    """An independent molmap: every voxel, every atom, no factorisation."""
    g = np.arange(size) - (size - 1) / 2
    Z, Y, X = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([X, Y, Z], -1).reshape(-1, 3) * voxel
    sig = SIGMA_FACTOR * resolution
    d2 = ((pts[:, None, :] - xyz[None]) ** 2).sum(-1)
    return (np.exp(-d2 / (2 * sig ** 2)) @ z).reshape(size, size, size)


def test_reading_keeps_heavy_atoms_of_protein_and_centres_them(blob):
    path, xyz, els = blob
    atoms = read_atoms(path)
    assert atoms.name == "my-blob"  # underscores would break the <class>_<n> file layout
    assert len(atoms.z) == len(xyz)
    z = np.array([ELEMENTS[e] for e in els], float)
    assert np.allclose(atoms.xyz, np.round(xyz, 3) - (np.round(xyz, 3) * z[:, None]).sum(0) / z.sum(), atol=1e-6)


def test_a_map_equals_an_independent_direct_sum_of_gaussians(blob):
    path, *_ = blob
    sim = ProteinSimulator([path], size=32, resolution=8.0, voxel_size=2.5)
    atoms = sim.atoms("my-blob")
    got = sim.render(["my-blob"], np.zeros((1, 3)))[0]
    want = direct_sum(atoms.xyz, atoms.z, 32, 2.5, 8.0)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
    assert np.abs(got - want).max() < 1e-4 * want.max()


def test_a_rotated_copy_is_the_map_of_rotated_coordinates(blob):
    path, *_ = blob
    sim = ProteinSimulator([path], size=32, resolution=8.0, voxel_size=2.5)
    atoms = sim.atoms("my-blob")
    pose = np.array([[40.0, 70.0, -25.0]])
    R = euler_to_matrix(pose)[0]
    got = sim.render(["my-blob"], pose)[0]
    want = direct_sum(atoms.xyz @ R.T, atoms.z, 32, 2.5, 8.0)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
    assert np.abs(got - want).max() < 1e-4 * want.max()
    # and it agrees with rotating the unrotated map as a volume (same rotation convention)
    vol = rotate(sim.render(["my-blob"], np.zeros((1, 3))), R[None])[0]
    assert np.corrcoef(got.ravel(), vol.ravel())[0, 1] > 0.97
    assert np.corrcoef(got.ravel(), sim.render(["my-blob"], np.zeros((1, 3)))[0].ravel())[0, 1] < 0.9


def test_a_structure_too_big_for_the_box_is_refused_by_name(blob):
    path, *_ = blob
    with pytest.raises(DataError, match=r"my_blob.pdb.gz: the structure reaches .* raise size or voxel size"):
        ProteinSimulator([path], size=8, resolution=8.0, voxel_size=2.0)


def test_unreadable_and_missing_structures_fail_clearly(tmp_path):
    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a structure\n")
    with pytest.raises(DataError, match=r"bad.pdb: no heavy atoms|bad.pdb: cannot read"):
        read_atoms(bad)
    with pytest.raises(DataError, match=r"nothere.pdb: no such structure file or folder"):
        structure_files([tmp_path / "nothere.pdb"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no structure files"):
        structure_files([tmp_path / "empty"])


def test_simulate_proteins_writes_the_anchor_layout(blob, tmp_path):
    from affvae.cli import main
    from affvae.data.io import load_folder

    path, xyz, els = blob
    other = write_pdb(tmp_path / "other.pdb", xyz[:60] * 0.5, els[:60])
    out = tmp_path / "maps"
    assert main(["simulate", "proteins", "--structures", str(path), str(other), "--out", str(out), "-n", "3",
                 "--size", "32", "--resolution", "8", "--voxel-size", "2.5", "--unseen", "other"]) == 0
    ds = load_folder(out)
    assert sorted(set(ds.labels.tolist())) == ["my-blob", "other"] and ds.classes == ["my-blob"]
    assert ds.x.shape == (6, 32, 32, 32) and set(ds.templates) == {"my-blob", "other"}


def test_a_proteins_config_builds_a_dataset_with_imaging_effects(blob, tmp_path):
    from affvae.config import build_config
    from affvae.data.sources import build_dataset

    path, xyz, els = blob
    other = write_pdb(tmp_path / "small.pdb", xyz[:40] * 0.4, els[:40])
    cfg = build_config({"data": {"source": "proteins", "structures": [str(path), str(other)], "size": 32,
                                 "resolution": 8.0, "voxel_size": 2.5, "n_per_class": 4, "snr": 1.0,
                                 "wedge": 60.0, "normalise": "standard"}})
    ds = build_dataset(cfg)
    assert ds.x.shape == (8, 32, 32, 32) and ds.classes == ["my-blob", "small"]
    assert np.allclose(ds.x.reshape(8, -1).std(1), 1.0, atol=1e-3)


def test_protein_maps_stream_with_ctf_wedge_and_noise(blob):
    from affvae.config import build_config
    from affvae.data.stream import local_batches, render_batch, simulated_table, spec_from_config

    path, *_ = blob
    data = {"source": "proteins", "structures": [str(path)], "size": 32, "resolution": 8.0, "voxel_size": 2.5,
            "stream": True, "normalise": "standard"}
    plain = spec_from_config(build_config({"data": data}), ["my-blob"])
    imaged = spec_from_config(build_config({"data": {**data, "ctf_defocus": 2.0, "wedge": 60.0, "snr": 1.0}}),
                              ["my-blob"])
    table = simulated_table(imaged, np.arange(4))
    a, b = render_batch(table, plain)["x"], render_batch(table, imaged)["x"]
    assert a.shape == b.shape == (4, 32, 32, 32) and np.isfinite(b).all()
    # same objects, degraded (the CTF inverts the low-frequency contrast, as in cryo-EM)
    assert 0.2 < abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.9
    again = render_batch({k: v[2:] for k, v in table.items()}, imaged)["x"]
    assert np.allclose(again, b[2:], atol=1e-5)  # an item renders the same in any batch
    assert sum(len(b["x"]) for b in local_batches(imaged, simulated_table(imaged, np.arange(6)), 4)) == 6


def test_mmcif_and_pdb_give_the_same_atoms(blob, tmp_path):
    import gemmi

    path, *_ = blob
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    cif = tmp_path / "my_blob.cif"
    st.make_mmcif_document().write_file(str(cif))
    a, b = read_atoms(path), read_atoms(cif)
    assert np.allclose(a.xyz, b.xyz) and np.array_equal(a.z, b.z)


def test_the_built_in_panel_reads_and_fits_the_default_box():
    sim = ProteinSimulator()  # the panel, 64^3 at 10 A
    assert len(sim.classes) >= 6
    sizes = {c: len(sim.atoms(c).z) for c in sim.classes}
    assert min(sizes.values()) >= 300 and max(sizes.values()) > 5 * min(sizes.values())


def test_the_fast_path_matches_the_exact_maps():
    from affvae.data.proteins import PANEL_DIR
    from affvae.transforms.poses import item_poses

    sim = ProteinSimulator(structures=[PANEL_DIR / "1ubi.pdb.gz", PANEL_DIR / "1pwc.pdb.gz"], size=24,
                           resolution=18.0, voxel_size=6.0)
    classes = ["1ubi", "1pwc"] * 4
    poses = item_poses(1, np.arange(8), 3)
    exact, fast = sim.render_exact(classes, poses), sim.render_fast(classes, poses)
    for a, b in zip(exact, fast):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert np.allclose(fast.sum((1, 2, 3)), exact.sum((1, 2, 3)), rtol=0.02)
