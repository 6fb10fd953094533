import csv

import numpy as np
import pytest

from affvae.data.io import load_folder
from affvae.data.simulate import (
    ALL_GLYPHS,
    PAPER_GLYPHS,
    TETRACUBES,
    AlphanumericSimulator,
    TetraminoSimulator,
    write_dataset,
)
from affvae.errors import DataError
from affvae.transforms.augment import euler_to_matrix, rotate
from affvae.transforms.poses import item_poses


@pytest.mark.parametrize("shape", list(TETRACUBES))
def test_tetracube_has_exactly_four_cubes_of_volume(shape):
    sim = TetraminoSimulator(size=32, cube=5)
    vol = sim.template(shape)
    assert vol.sum() == 4 * 5**3
    assert set(np.unique(vol)) <= {0.0, 1.0}


def test_rotated_tetracube_keeps_its_volume_and_matches_rotating_the_template():
    sim = TetraminoSimulator(size=32, cube=5, supersample=3)
    poses = item_poses(3, np.arange(6), 3)
    vols = sim.render(["L"] * 6, poses)
    # partial-volume rendering: total occupancy within 1% of 4 cubes
    assert np.allclose(vols.sum((1, 2, 3)), 500, rtol=0.01)
    rotated = rotate(np.repeat(sim.template("L")[None], 6, 0), euler_to_matrix(poses))
    for a, b in zip(vols, rotated):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_tetracubes_are_distinct_and_screws_are_mirror_images():
    sim = TetraminoSimulator(size=32, cube=5)
    t = {c: sim.template(c) for c in sim.classes}
    for a in t:
        for b in t:
            if a < b:
                assert not np.array_equal(t[a], t[b]), (a, b)
    # the right screw mirrored in z is a rotation of the left one: same sorted
    # distances between occupied voxels
    def dists(v):
        p = np.argwhere(v > 0.5).astype(float)
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
        return np.sort(d.ravel())
    assert np.allclose(dists(t["screwR"]), dists(t["screwL"]))


def test_fused_class_is_union_of_parents_and_elongation_scales_volume():
    sim = TetraminoSimulator(size=32, cube=4, fused=[("L", "T")], fuse_mode="union")
    assert "LT" in sim.classes
    assert sim.template("LT").sum() == 5 * 4**3  # L and T share three cubes
    long = TetraminoSimulator(size=32, cube=4, elongation=1.5)
    assert long.template("O").sum() == 4 * 6 * 4 * 4


def test_too_large_piece_is_refused():
    with pytest.raises(DataError, match="does not fit"):
        TetraminoSimulator(size=16, cube=8)


def test_glyphs_binary_centred_and_distinct():
    sim = AlphanumericSimulator(size=64, glyphs=ALL_GLYPHS)
    imgs = np.stack([sim.template(g) for g in ALL_GLYPHS])
    assert set(np.unique(imgs)) == {0.0, 1.0}
    assert (imgs.sum((1, 2)) > 30).all()
    # nothing touches the border, so rotations by up to 45 degrees stay inside
    assert imgs[:, [0, -1], :].sum() == 0 and imgs[:, :, [0, -1]].sum() == 0
    flat = imgs.reshape(len(imgs), -1)
    assert len({row.tobytes() for row in flat}) == len(ALL_GLYPHS)
    # 'o' has a hole: the centre pixel is background
    o = sim.template("o")
    assert o[32, 32] == 0 and o.sum() > 100


def test_rendering_is_a_deterministic_function_of_the_spec():
    sim = AlphanumericSimulator(size=32)
    a = sim.specs(3, seed=7)
    b = sim.specs(3, seed=7)
    assert a == b
    assert sim.specs(3, seed=8) != a
    x1 = sim.render_specs(a[5:9])
    x2 = sim.render_specs(a)[5:9]
    assert np.array_equal(x1, x2)


def test_rotated_glyph_is_the_template_rotated():
    sim = AlphanumericSimulator(size=64)
    img = sim.render(["k"], np.array([90.0]))[0]
    ref = np.rot90(sim.template("k"), k=-1)  # +90 degrees in (x, y) with rows going down
    assert (img != ref).mean() < 0.01


def test_write_dataset_anchor_layout(tmp_path):
    sim = TetraminoSimulator(size=16, cube=2, shapes=["I", "O", "T"], fused=[("I", "T")])
    out = write_dataset(sim, tmp_path / "d", n_per_class=3, seed=1, unseen=["IT"], progress=False)
    ds = load_folder(out)
    assert len(ds) == 12 and ds.shape == (16, 16, 16)
    assert ds.classes == ["I", "O", "T"]
    assert sorted(ds.templates) == ["I", "IT", "O", "T"]
    assert np.array_equal(ds.templates["O"], sim.template("O"))
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 12
    first = rows[0]
    again = sim.render([first["class"]], np.array([[float(first[k]) for k in ("rot", "tilt", "psi")]]))
    i = ds.paths.index(first["file"])
    assert np.allclose(ds.x[i], again[0], atol=1e-4)
    assert (out / "provenance.json").is_file()


def test_write_dataset_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty"):
        write_dataset(AlphanumericSimulator(size=16, glyphs="ab"), tmp_path, 1, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_unknown_glyph_and_shape_are_rejected():
    with pytest.raises(DataError, match="'#'"):
        AlphanumericSimulator(glyphs=["a", "#"])
    with pytest.raises(DataError, match="'Q'"):
        TetraminoSimulator(shapes=["Q"])


def test_the_default_glyphs_are_the_papers_as_the_readme_says():
    # README: default the paper's `aebdpijz2kxu`; the simulator and the config agree
    from affvae.config import build_config

    assert list(AlphanumericSimulator(size=16).classes) == list("aebdpijz2kxu") == list(PAPER_GLYPHS)
    assert sorted(build_config().data.glyphs) == sorted("aebdpijz2kxu")  # the same glyphs (2 last)


def test_blend_fusion_averages_the_parents():
    sim = TetraminoSimulator(size=32, cube=4, fused=[("L", "T")], fuse_mode="blend")
    lt = sim.template("LT")
    assert lt.sum() == 4 * 4**3  # mean of two 4-cube pieces
    assert set(np.unique(lt)) == {0.0, 0.5, 1.0}
    assert np.allclose(lt, (sim.template("L") + sim.template("T")) / 2)


def test_box_glyph_size_scales_every_glyph_to_one_box():
    natural = AlphanumericSimulator(size=64, glyphs=["z", "2", "i"])
    box = AlphanumericSimulator(size=64, glyphs=["z", "2", "i"], glyph_size="box")

    def height(img):
        rows = np.flatnonzero(img.any(axis=1))
        return rows[-1] - rows[0] + 1

    # natural: the lower-case z is shorter than the digit; box: the same height
    assert height(natural.template("z")) < 0.85 * height(natural.template("2"))
    assert abs(int(height(box.template("z"))) - int(height(box.template("2")))) <= 1
    assert height(box.template("2")) == height(natural.template("2"))  # a digit is cap height already
    with pytest.raises(DataError, match="glyph_size 'huge'"):
        AlphanumericSimulator(glyphs=["a"], glyph_size="huge")


def test_an_interrupted_write_leaves_no_dataset_folder(tmp_path, monkeypatch):
    sim = TetraminoSimulator(size=16, cube=2, shapes=["I", "O"])
    calls = []

    def render_then_interrupt(specs):
        calls.append(len(specs))
        if len(calls) == 2:  # after one batch of files is on disk
            raise KeyboardInterrupt
        return TetraminoSimulator.render_specs(sim, specs)

    monkeypatch.setattr(sim, "render_specs", render_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(sim, tmp_path / "d", n_per_class=8, batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []  # no d, no hidden partial folder


def test_overwrite_replaces_the_folder_only_once_complete(tmp_path, monkeypatch):
    sim = TetraminoSimulator(size=16, cube=2, shapes=["I", "O"])
    out = write_dataset(sim, tmp_path / "d", n_per_class=3, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    def interrupt(cls):  # a Ctrl-C after the items, while the templates are written
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "template", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(sim, out, n_per_class=1, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    write_dataset(sim, out, n_per_class=1, overwrite=True, progress=False)
    assert sorted(p.name for p in out.glob("*_*.mrc") if not p.name.startswith("template")) == \
        ["I_00000.mrc", "O_00001.mrc"]  # the old items are gone, not mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_dataset_files_and_folder_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        out = write_dataset(TetraminoSimulator(size=16, cube=2, shapes=["I"]), tmp_path / "d", 1, progress=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_the_fast_path_matches_the_exact_rendering():
    # rotating each class's exact template (three bilinear plane rotations of a sharpened
    # template) against the exact render of every item, and against a finer exact render
    # (measured at 32^3: mean 0.991 and 0.993; the exact render's own to the finer one 0.998)
    sim = TetraminoSimulator(size=32)
    fine = TetraminoSimulator(size=32, supersample=4)  # a finer exact render
    classes = [sim.classes[i % len(sim.classes)] for i in range(16)]
    poses = item_poses(0, np.arange(16), 3)
    exact, fast, truth = sim.render_exact(classes, poses), sim.render_fast(classes, poses), fine.render_exact(classes, poses)

    def corr(a, b):
        return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)])

    assert corr(fast, exact).mean() > 0.99 and corr(fast, truth).mean() > 0.99
    assert corr(fast, exact).min() > 0.98
    assert TetraminoSimulator(size=32, fast=True).render(classes[:2], poses[:2]).shape == (2, 32, 32, 32)
    assert np.allclose(fast.sum((1, 2, 3)), exact.sum((1, 2, 3)), rtol=0.02)  # the same volume of cubes
