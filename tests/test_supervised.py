"""Tests for affvae.supervised: the encoder with a softmax head, the latent map's bar."""

import numpy as np

from affvae.config import build_config
from affvae.data.sources import build_dataset
from affvae.deconv import Conv2x
from affvae.supervised import encoder_classifier, train_classifier

SMALL = ["data.source=tetramino", "data.size=16", "data.cube=3", "data.shapes=[I, O, T, L]", "data.n_per_class=24",
         "model.filters=[4, 8]", "train.batch_size=8", "train.epochs=10", "data.render=exact"]


def test_the_classifier_learns_the_classes_and_keeps_its_best_validation_epoch():
    cfg = build_config(overrides=SMALL)
    data = build_dataset(cfg)
    clf = train_classifier(cfg, data)
    val = [h["val_accuracy"] for h in clf.history]
    assert len(val) == 10 and clf.best_epoch == int(np.argmax(val)) + 1
    # the kept weights are the best epoch's: they score its validation accuracy again
    sp = clf.splits
    assert float((clf.predict(data.x[sp.val]) == data.labels[sp.val]).mean()) == max(val)
    test = float((clf.predict(data.x[sp.test]) == data.labels[sp.test]).mean())
    assert test > 0.5  # four tetracubes, chance 0.25
    assert set(clf.predict(data.x[:5])) <= set(data.classes)


def test_the_head_sits_on_the_configs_own_encoder():
    cfg = build_config(overrides=SMALL)
    net = encoder_classifier(cfg, (16, 16, 16), 4)
    convs = [m for m in net[0].modules() if isinstance(m, Conv2x)]
    assert [(c.nd, c.cout) for c in convs] == [(3, 4), (3, 8)] and net[1].out_features == 4
