"""Tests for affvae.latent_html: the self-contained latent map page, in Python and in headless Chromium."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from affvae.errors import DataError
from affvae.latent_html import (
    MAX_POINTS,
    png_bytes,
    stratified_subset,
    thumbnails,
    write_latent_map_html,
)

URI = "data:image/png;base64,"


def _read_png(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S).group(1)
    return json.loads(blob)


def _example(n_per_class=8, shape=(20, 20, 20), seed=0):
    """Three classes, ``c`` unseen: (xy, labels, predicted, novelty, items, paths)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c"], n_per_class)
    xy = rng.normal(size=(len(labels), 2)) + np.repeat([[0, 0], [6, 0], [3, 5]], n_per_class, 0)
    predicted = np.where(labels == "c", "a", labels)
    novelty = np.where(labels == "c", 3.0, 0.5) + rng.random(len(labels))
    # a ball, a bar and a cross in noise, so that a screenshot shows which is which
    grid = np.indices(shape, dtype=np.float32) - (np.array(shape, np.float32) - 1).reshape(-1, *[1] * len(shape)) / 2
    r = min(shape) / 4
    ball = (grid ** 2).sum(0) < r ** 2
    bar = (np.abs(grid[-1]) < 1.6 * r) & (np.abs(grid[-2]) < r / 2)
    cross = bar | ((np.abs(grid[-2]) < 1.6 * r) & (np.abs(grid[-1]) < r / 2))
    shapes = {"a": ball, "b": bar, "c": cross}
    items = np.stack([shapes[lab] for lab in labels]).astype(np.float32)
    items += 0.3 * rng.random(items.shape, dtype=np.float32)
    return xy, labels, predicted, novelty, items, [f"{lab}_{i:04d}.mrc" for i, lab in enumerate(labels)]


def test_thumbnails_keep_2d_items_project_volumes_along_z_and_shrink_big_ones():
    rng = np.random.default_rng(1)
    img = rng.random((3, 16, 12))
    t = thumbnails(img)
    assert t.dtype == np.uint8 and t.shape == (3, 16, 12)
    assert (t.min(axis=(1, 2)) == 0).all() and (t.max(axis=(1, 2)) == 255).all()
    lo, hi = img[0].min(), img[0].max()
    np.testing.assert_array_equal(t[0], np.round((img[0] - lo) / (hi - lo) * 255))
    vol = rng.random((2, 5, 16, 12))
    np.testing.assert_array_equal(thumbnails(vol), thumbnails(vol.sum(axis=1)))  # projection along z
    np.testing.assert_array_equal(thumbnails(vol[:, None]), thumbnails(vol))  # a channel axis is fine
    big = thumbnails(rng.random((2, 200, 130)))
    assert big.shape == (2, 50, 32)  # 200 px in blocks of 4: at most 64 a side
    assert not thumbnails(np.ones((1, 8, 8))).any()  # a flat item is black, not a division by zero
    with pytest.raises(DataError, match="thumbnails need"):
        thumbnails(np.zeros((4, 4)))


def test_png_writer_round_trips_through_a_png_reader():
    img = np.random.default_rng(2).integers(0, 256, (7, 11), dtype=np.uint8)
    data = png_bytes(img)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(np.round(_read_png(data) * 255).astype(np.uint8), img)


def test_the_page_is_self_contained_with_one_point_per_item_and_unseen_classes_flagged(tmp_path):
    xy, labels, predicted, novelty, items, paths = _example()
    paths[0] = "weird </script><b>&.mrc"  # must neither end the data block nor become markup
    page = write_latent_map_html(tmp_path / "m.html", xy, labels, predicted, novelty, thumbnails(items), unseen=["c"],
                                 title="run <x>", paths=paths)
    text = page.read_text(encoding="utf-8")
    for ref in ("http://", "https://", 'src="//', "<link", "@import", "url("):
        assert ref not in text, ref
    assert re.findall(r"<script[^>]*>", text) == ['<script type="application/json" id="data">', "<script>"]
    assert text.count("</script>") == 2 and "run &lt;x&gt;" in text
    data = _page_data(page)
    assert len(data["x"]) == len(data["y"]) == len(data["img"]) == len(labels) == data["n_shown"]
    assert data["path"] == paths and data["pred"] == list(predicted)
    np.testing.assert_allclose(data["nov"], novelty, atol=1e-4)
    classes = data["classes"]
    assert [(c["name"], c["unseen"]) for c in classes] == [("a", False), ("b", False), ("c", True)]
    assert [classes[k]["name"] for k in data["c"]] == list(labels)
    from affvae.plots import class_colours

    from_plots = class_colours(["a", "b", "c"], ["c"])  # the PNG's colours
    assert [c["colour"] for c in classes] == ["#" + "".join(f"{round(255 * v):02x}" for v in from_plots[k][:3])
                                             for k in "abc"]
    # the layout keeps the embedding's shape: one scale for both axes
    u = np.c_[data["x"], data["y"]]
    np.testing.assert_allclose(u * np.ptp(xy, axis=0).max() + xy.min(axis=0), xy, atol=1e-3)
    for uri, want in zip(data["img"], thumbnails(items)):
        assert uri.startswith(URI)
        png = _read_png(base64.b64decode(uri[len(URI):]))
        assert png.shape == (20, 20)
        np.testing.assert_array_equal(np.round(png * 255).astype(np.uint8), want)


def test_unknown_labels_get_their_own_grey_entry(tmp_path):
    xy, labels, predicted, novelty, items, _ = _example(n_per_class=3, shape=(6, 6))
    labels[:2] = ""
    data = _page_data(write_latent_map_html(tmp_path / "m.html", xy, labels, predicted, novelty, items))
    assert data["classes"][-1] == {"name": "unknown", "colour": "#b3b3b3", "unseen": False, "unknown": True}
    assert data["c"][:2] == [len(data["classes"]) - 1] * 2
    assert data["path"][0] == "item 0"


def test_mismatched_inputs_are_refused(tmp_path):
    xy, labels, predicted, novelty, items, paths = _example(n_per_class=2, shape=(4, 4))
    with pytest.raises(DataError, match="6 labels but xy"):
        write_latent_map_html(tmp_path / "m.html", xy, labels, predicted[:-1], novelty, items)
    assert not (tmp_path / "m.html").exists()


def test_a_stratified_subset_keeps_every_class_in_proportion():
    labels = np.array(["a"] * 6000 + ["b"] * 3000 + ["rare"] * 2)
    keep = stratified_subset(labels, 900, seed=3)
    assert len(keep) <= 900 and len(set(keep)) == len(keep) and (np.diff(keep) > 0).all()
    counts = {c: int((labels[keep] == c).sum()) for c in ("a", "b", "rare")}
    assert abs(counts["a"] - 600) <= 1 and abs(counts["b"] - 300) <= 1 and counts["rare"] >= 1
    np.testing.assert_array_equal(keep, stratified_subset(labels, 900, seed=3))
    np.testing.assert_array_equal(stratified_subset(labels[:50], 900), np.arange(50))


def test_a_large_evaluation_is_capped_and_says_so(tmp_path):
    n = MAX_POINTS + 1000
    rng = np.random.default_rng(4)
    labels = np.array([f"k{i % 5}" for i in range(n - 3)] + ["new"] * 3)
    images = rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
    page = write_latent_map_html(tmp_path / "m.html", rng.normal(size=(n, 2)), labels, labels,
                                 rng.random(n), images, unseen=["new"])
    data = _page_data(page)
    assert data["n_shown"] == len(data["x"]) == MAX_POINTS and data["n_total"] == n
    shown = {data["classes"][k]["name"] for k in data["c"]}
    assert shown == {"k0", "k1", "k2", "k3", "k4", "new"}  # the 3 unseen items survive the sample
    text = page.read_text(encoding="utf-8")
    assert f"showing {MAX_POINTS:,} of {n:,} items" in text and "thumbnails reduced to 32 x 32 px" in text
    assert _read_png(base64.b64decode(data["img"][0][len(URI):])).shape == (32, 32)
    assert page.stat().st_size < 8_000_000  # incompressible noise thumbnails, still a few MB


# -- headless Chromium ----------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000"]


def _chromium() -> str:
    for exe in ("/usr/bin/chromium", shutil.which("chromium")):
        if exe and Path(exe).is_file():
            return exe
    pytest.skip("chromium not installed: the latent-map page is not checked in a browser "
                "(apt-get install chromium; .ci/run installs it where it can)")


def _browse(exe: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_the_page_draws_every_point_and_its_tooltip_in_headless_chromium(tmp_path):
    exe = _chromium()
    xy, labels, predicted, novelty, items, paths = _example()
    page = write_latent_map_html(tmp_path / "latent_map.html", xy, labels, predicted, novelty,
                                 thumbnails(items), unseen=["c"], title="selftest", paths=paths)
    url = page.resolve().as_uri() + "#selftest"
    done = _browse(exe, url, tmp_path / "profile-dom", "--dump-dom")
    dom = done.stdout
    assert done.returncode == 0 and "<body" in dom, done.stderr[-2000:]
    assert re.search(r'<body[^>]*data-points="(\d+)"', dom).group(1) == str(len(labels))  # the script ran
    assert re.search(r'<body[^>]*data-selftest="done"', dom), "the selftest did not finish"
    report = json.loads(re.search(r'<pre id="selftest"[^>]*>(.*?)</pre>', dom, re.S).group(1))
    i = report["index"]
    assert labels[i] == "c"  # the selftest hovers a star: an unseen item
    assert report["shown"] and report["img_loaded"]
    assert (report["img_width"], report["img_height"]) == (20, 20)
    assert report["class"] == "c (unseen)" and report["predicted"] == predicted[i] == "a"
    assert report["novelty"] == f"{novelty[i]:.2f}" and report["path"] == paths[i]

    shot = tmp_path / "latent_map.png"
    done = _browse(exe, url, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,900")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = _read_png(shot.read_bytes())
    assert pixels.shape[:2] == (900, 1200)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # points in several colours, text, a thumbnail: not a blank page
