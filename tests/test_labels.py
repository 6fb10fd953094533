"""Tests for affvae.labels."""

from affvae.labels import as_labels, index_of


def test_label_helpers():
    assert as_labels(["a", None, float("nan"), 3]).tolist() == ["a", "", "", "3"]
    assert index_of(["b", "x", "a"], ["a", "b"]).tolist() == [1, -1, 0]
