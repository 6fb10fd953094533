import numpy as np
import pytest
import torch

from affvae.transforms.augment import apply_ctf, missing_wedge
from affvae.transforms.imaging import Imaging, image


def test_ctf_and_wedge_together_are_the_one_then_the_other():
    # applied as their product in one pair of FFTs: the same as each in turn
    torch.manual_seed(2)
    x = torch.randn(4, 16, 16, 16)
    im = Imaging(ctf_defocus=2.0, voxel_size=4.0, wedge=50.0)
    want = missing_wedge(apply_ctf(x.clone(), 4.0, 2.0), 50.0)
    got = image(x.clone(), im)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, missing_wedge(x.clone(), 50.0), atol=1e-3)  # the CTF did act


def test_imaging_is_the_documented_order_and_normalises_each_item():
    torch.manual_seed(3)
    x = torch.rand(3, 12, 12, 12) + 2.0
    seeds = np.array([11, 12, 13])
    im = Imaging(ctf_defocus=1.5, voxel_size=5.0, wedge=60.0, snr=2.0, normalise="standard")
    got = image(x.clone(), im, seeds)
    from affvae.transforms.augment import add_noise
    from affvae.transforms.poses import item_normals

    signal = missing_wedge(apply_ctf(x.clone(), 5.0, 1.5), 60.0)
    noisy = add_noise(signal, 2.0, noise=item_normals(seeds, 12 ** 3).view(x.shape))
    flat = noisy.flatten(1).double()
    want = (flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=False, keepdim=True)
    assert torch.allclose(got.flatten(1).double(), want, atol=1e-4)
    # item by item: the same in any batch
    assert torch.allclose(image(x[1:2].clone(), im, seeds[1:2]), got[1:2], atol=1e-5)


def test_a_wedge_on_images_is_refused_by_name():
    with pytest.raises(Exception, match="data.wedge"):
        image(torch.zeros(2, 8, 8), Imaging(wedge=60.0))
