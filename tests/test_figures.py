"""Decoded-object figures: what each panel is asked to decode."""

import numpy as np
import torch

from affvae.figures import pose_sweep


class PoseRecorder(torch.nn.Module):
    """A decoder that draws its first pose value and keeps every pose it was asked for."""

    pose_dims = 2
    shape = (8, 8)

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.asked: list[torch.Tensor] = []

    def decode(self, z, pose):
        self.asked.append(pose.clone())
        return torch.zeros(len(z), *self.shape) + pose[:, :1, None]


def test_pose_sweep_runs_each_class_along_its_own_pose_range(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.uniform(-2, 2, 200)
    # class a turns along pose dim 0 around (10, 0); class b along dim 1 around (0, -5)
    pose = np.concatenate([np.c_[10 + t, 0.01 * rng.normal(size=200)],
                           np.c_[0.01 * rng.normal(size=200), -5 + t]])
    labels = np.array(["a"] * 200 + ["b"] * 200)
    model = PoseRecorder()
    path = pose_sweep(model, np.zeros((2, 4)), ["a", "b"], pose, labels, tmp_path / "sweep.png", steps=5)
    assert path.exists()
    asked = torch.cat(model.asked).numpy().reshape(2, 5, 2)
    lo, hi = np.percentile(t, [2, 98])
    a, b = asked
    # a row stays inside its class: a's second pose value and b's first do not move
    assert np.allclose(np.abs(a[:, 0] - 10), np.abs(np.linspace(lo, hi, 5)), atol=0.05)  # axis sign is free
    assert np.abs(a[:, 1]).max() < 0.05 and np.abs(b[:, 0]).max() < 0.05
    assert np.allclose(np.abs(b[:, 1] + 5), np.abs(np.linspace(lo, hi, 5)), atol=0.05)  # axis sign is free


def test_pose_sweep_is_skipped_without_a_pose_head(tmp_path):
    assert pose_sweep(PoseRecorder(), np.zeros((1, 4)), ["a"], np.zeros((3, 0)), ["a"] * 3,
                      tmp_path / "sweep.png") is None
