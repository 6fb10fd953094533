import numpy as np
import pytest

from affvae.config import build_config
from affvae.data.lazy import LazyItems, batched, subset
from affvae.data.simulate import TetraminoSimulator, write_dataset
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.errors import DataError
from affvae.train import train
from affvae.volumes import write_volume


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy") / "d"
    write_dataset(TetraminoSimulator(size=16, cube=3, shapes=["I", "O", "T"]), root, 10, progress=False)
    return root


def overrides(folder, stream: bool):
    return ["data.source=folder", f"data.path={folder}", f"data.stream={'true' if stream else 'false'}",
            "data.snr=1", "data.wedge=60", "data.normalise=standard", "model.filters=[4, 8]",
            "model.latent_dims=4", "train.batch_size=6", "train.epochs=2", "data.affinity_metric=ncc"]


def test_a_streamed_folder_is_read_lazily_and_images_items_as_the_whole_read(folder):
    whole = build_dataset(build_config(overrides=overrides(folder, False)))
    lazy = build_dataset(build_config(overrides=overrides(folder, True)))
    assert isinstance(lazy.x, LazyItems) and isinstance(whole.x, np.ndarray)
    assert lazy.x.shape == whole.x.shape == (30, 16, 16, 16) and len(lazy) == 30 and lazy.ndim == 3
    idx = np.array([29, 3, 17])
    np.testing.assert_allclose(lazy.x[idx], whole.x[idx], atol=1e-5)  # same noise: each item's own seed
    np.testing.assert_allclose(lazy.x[5], whole.x[5], atol=1e-5)
    np.testing.assert_allclose(subset(lazy.x, idx)[1:], whole.x[idx[1:]], atol=1e-5)
    np.testing.assert_allclose(np.concatenate(list(batched(lazy.x, 7))), whole.x, atol=1e-5)
    with pytest.raises(TypeError, match="in batches"):
        np.asarray(lazy.x)


def test_training_on_lazy_items_equals_training_in_memory(folder, tmp_path):
    # the same batches, read per batch from the files: the same losses and validation,
    # and the run folder's evaluation (encodings, figures' thumbnails) from lazy items too
    from affvae.runs import save_run

    cfg_mem = build_config(overrides=overrides(folder, False) + ["eval.embedding=pca"])
    whole = build_dataset(cfg_mem)
    lazy = build_dataset(build_config(overrides=overrides(folder, True)))
    a = train(cfg_mem, whole, resolve_affinity(cfg_mem, whole))
    b = train(cfg_mem, lazy, resolve_affinity(cfg_mem, lazy))
    for key in ("train_total", "val_total", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in a.history], [h[key] for h in b.history], rtol=1e-5)
    ma, mb = save_run(a, whole, tmp_path / "a"), save_run(b, lazy, tmp_path / "b")
    assert ma["n_items"] == mb["n_items"] > 0 and ma["accuracy"] == mb["accuracy"]
    assert (tmp_path / "b" / "figures" / "latent_map.html").is_file()


def test_a_file_of_another_shape_is_named_when_it_is_read(tmp_path):
    write_volume(tmp_path / "a_1.npy", np.zeros((8, 8, 8), np.float32))
    write_volume(tmp_path / "a_2.npy", np.zeros((8, 8, 6), np.float32))
    items = LazyItems([tmp_path / "a_1.npy", tmp_path / "a_2.npy"], (8, 8, 8))
    assert items[0].shape == (8, 8, 8)
    with pytest.raises(DataError, match=r"a_2\.npy: shape 8x8x6 differs from 8x8x8"):
        items[[0, 1]]
