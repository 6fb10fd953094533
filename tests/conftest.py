"""Shared test set-up: tests never touch the user's cache or display."""

import matplotlib
import pytest

matplotlib.use("Agg")


def pytest_collection_modifyitems(config, items):
    """Keep the tiers honest: a test that starts the Ray cluster must be marked ``slow``.

    ``pytest -m "not slow"`` is the fast tier; one unmarked Ray test would start a
    three-node cluster in it.
    """
    unmarked = [item.nodeid for item in items
                if "ray_cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("tests using ray_cluster must be marked slow: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFVAE_CACHE_DIR", str(tmp_path / "affvae-cache"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One simulated multi-node Ray cluster for the whole test session.

    A head and two worker nodes, all on this machine (``ray.cluster_utils.Cluster``),
    with more logical CPUs than cores so Ray Train workers and Ray Data tasks fit
    side by side.  Every Ray test connects to it; Ray starts once per session.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "object_store_memory": 300 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=300 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size, options="")``: a real tmpfs of that size, to fill up or make read-only.

    Mounting needs root (the CI container runs tests as root); elsewhere the test
    is skipped, saying why.
    """
    import subprocess

    mounted = []

    def mount(size="300k", options=""):
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}); "
                        "a full disk or read-only folder needs root to simulate")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


class _Png:
    """``png(path)``: the pixels (H, W, RGBA, floats in [0, 1]) of a PNG file, read back
    with matplotlib; ``png.share(pixels, colour)``: the fraction of pixels of that colour."""

    def __call__(self, path):
        import matplotlib.image as mpimg

        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG file"
        return mpimg.imread(path)

    @staticmethod
    def share(pixels, colour, tol=2 / 255):
        import numpy as np

        return float((np.abs(pixels[..., :3] - np.asarray(colour)[:3]).max(-1) < tol).mean())


@pytest.fixture
def png():
    return _Png()
