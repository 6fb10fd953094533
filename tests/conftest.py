"""Shared test set-up: tests never touch the user's cache or display."""

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFVAE_CACHE_DIR", str(tmp_path / "affvae-cache"))
