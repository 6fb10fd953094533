"""Tests for affvae.transforms.poses: the one pose sampler and counter-based random numbers."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from affvae.transforms.poses import (
    item_normals,
    item_normals_torch,
    item_poses,
    item_seeds,
    uniforms,
)


def test_uniforms_are_a_pure_function_of_seed_and_id():
    a = uniforms(3, np.arange(100), 4)
    assert np.array_equal(a, uniforms(3, np.arange(100), 4))
    assert np.array_equal(a[40:60], uniforms(3, np.arange(40, 60), 4))  # independent of the chunk
    assert not np.array_equal(a, uniforms(4, np.arange(100), 4))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean() - 0.5) < 0.05


def test_glyph_rotation_angles_are_integers_in_the_open_interval():
    poses = item_poses(0, np.arange(5000), 2, max_angle=45)
    assert np.all(poses == np.round(poses))
    assert poses.min() == -44 and poses.max() == 44


def test_volume_poses_are_uniform_over_so3():
    # for rotations uniform over SO(3), the mean rotation matrix is zero and the cosine
    # of the rotation angle has density (1 + c)^... : E[trace R] = 0
    R = Rotation.from_euler("ZYZ", item_poses(1, np.arange(20000), 3), degrees=True).as_matrix()
    assert np.abs(R.mean(0)).max() < 0.02
    angle = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    # P(angle <= pi/2) = (pi/2 - 1) / pi for the Haar measure
    assert abs((angle <= np.pi / 2).mean() - (np.pi / 2 - 1) / np.pi) < 0.01


def test_grid_rotations_are_multiples_of_ten_degrees():
    poses = item_poses(1, np.arange(50), 3, rotation="grid")
    xyz = Rotation.from_euler("ZYZ", poses, degrees=True).as_euler("xyz", degrees=True)
    # stored as ZYZ, but each is three 10-degree steps about x, y and z
    assert np.allclose(xyz / 10, np.round(xyz / 10), atol=1e-6)


@pytest.mark.parametrize("normals", [item_normals, item_normals_torch])  # the kernel where it builds, torch
def test_item_noise_is_splitmix64_and_box_muller(normals):
    # the torch int64 hash has the bits of the uint64 SplitMix64 of each counter; each
    # tile of 512 hashes is 1,024 little-endian 32-bit words, the first 512 giving u1,
    # the rest u2, from their low 23 bits
    from affvae.transforms.poses import splitmix64

    seeds, n = np.array([3, 2**40 + 17, 2**62 - 5]), 1500  # two tiles, the second partly used
    pairs = 1024
    with np.errstate(over="ignore"):
        h = splitmix64(seeds.astype(np.uint64)[:, None] * np.uint64(0xD1B54A32D192ED03)
                       + np.arange(pairs, dtype=np.uint64)[None])
    words = np.stack([h & np.uint64(0xFFFFFFFF), h >> np.uint64(32)], -1).reshape(3, 2, 1024)
    mantissa = (words & np.uint64(0x7FFFFF)).astype(np.float64) / 2**23
    u1, u2 = 1 - mantissa[..., :512].reshape(3, -1), mantissa[..., 512:].reshape(3, -1)
    r = np.sqrt(-2 * np.log(u1))
    want = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], 1)[:, :n]
    assert np.allclose(normals(seeds, n).numpy(), want, atol=1e-5)


def test_item_noise_and_seeds_depend_on_the_item_not_the_batch():
    z = item_normals(np.array([5, 6, 7]), 10001)
    assert np.array_equal(z[1:], item_normals(np.array([6, 7]), 10001))
    # hashed in passes of a block of counters shared by the batch's items: 1024 and
    # 2048 counters an item here (whole tiles of 512), the rows the same
    many = item_normals_torch(np.array([5, 6, 7]), 5001, block=4096)
    assert np.array_equal(many[1:], item_normals_torch(np.array([6, 7]), 5001, block=4096))
    assert np.array_equal(many, item_normals_torch(np.array([5, 6, 7]), 5001))
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert abs(np.corrcoef(z[0], z[1])[0, 1]) < 0.05
    s = item_seeds(0, np.arange(10))
    assert np.array_equal(s[3:], item_seeds(0, np.arange(3, 10))) and len(set(s.tolist())) == 10
