import pytest
import torch

from affvae.errors import ConfigError
from affvae.model import AffinityVAE


@pytest.mark.parametrize("shape, filters", [((32, 32), [8, 16, 32]), ((16, 16, 16), [4, 8]),
                                            ((32, 32, 32), [8, 16, 32])])
@pytest.mark.parametrize("pose_dims", [0, 3])
def test_encode_decode_shapes(shape, filters, pose_dims):
    m = AffinityVAE(shape, filters, latent_dims=6, pose_dims=pose_dims)
    x = torch.rand(5, *shape)
    mu, logvar, pose = m.encode(x)
    assert mu.shape == (5, 6) and logvar.shape == (5, 6) and pose.shape == (5, pose_dims)
    y = m.decode(mu, pose)
    assert y.shape == (5, *shape)
    assert float(y.min()) >= 0 and float(y.max()) <= 1  # sigmoid output
    recon, mu2, _, _, z = m(x, sample=False)
    assert torch.equal(z, mu2)


def test_pose_off_means_no_pose_head():
    m = AffinityVAE((16, 16), [4, 8], latent_dims=3, pose_dims=0)
    assert m.fc_pose is None
    assert m.fc_dec.in_features == 3
    m3 = AffinityVAE((16, 16), [4, 8], latent_dims=3, pose_dims=2)
    assert m3.fc_dec.in_features == 5


def test_pose_changes_the_decoding():
    torch.manual_seed(0)
    m = AffinityVAE((16, 16), [4, 8], latent_dims=3, pose_dims=1).eval()
    z = torch.zeros(1, 3)
    assert not torch.allclose(m.decode(z, torch.zeros(1, 1)), m.decode(z, torch.ones(1, 1)))


def test_box_not_divisible_by_depth_is_a_clear_error():
    with pytest.raises(ConfigError, match="divisible by 8"):
        AffinityVAE((20, 20), [4, 8, 16])


def test_linear_output_is_unbounded():
    torch.manual_seed(0)
    m = AffinityVAE((16, 16), [4, 8], output="linear")
    with torch.no_grad():
        m.fc_dec.bias.fill_(50.0)
    y = m.decode(torch.zeros(2, 8), torch.zeros(2, 1))
    assert float(y.abs().max()) > 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_folder_config_builds_for_images_and_volumes(ndim):
    """configs/mrc_folder.yaml serves 2D folders (the reference .npy glyphs) as well as 3D ones."""
    from pathlib import Path

    from affvae.config import load_config
    from affvae.model import build_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mrc_folder.yaml",
                      ["data.path=somewhere"])
    shape = (cfg.data.size,) * ndim
    m = build_model(cfg, shape)
    assert m.ndim == ndim
    recon, mu, _, pose, _ = m(torch.rand(2, *shape), sample=False)
    assert recon.shape == (2, *shape) and mu.shape == (2, cfg.model.latent_dims)
    assert pose.shape == (2, cfg.model.pose_dims)
