"""A supervised classifier with the affinity-VAE's own encoder: the bar the latent map is held to.

The latent map classifies by the nearest class centre; how good is that?  The
fairest comparison is a network that sees the same items, the same augmentation
and the same encoder, and is trained for nothing but the labels: the encoder's
convolutional blocks with a linear softmax head, trained with cross-entropy.  The
weights of the epoch with the best validation accuracy are kept (choosing on the
validation split, never on test).  ``benchmarks/latent_map_vs_supervised.py`` puts
the two side by side.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from affvae.data.splits import Splits, splits_of
from affvae.model import build_model
from affvae.transforms.augment import octahedral_augment, random_octahedral


@dataclass(eq=False)
class Classifier:
    """The trained network, its classes (output order) and its training history."""

    net: nn.Module
    classes: list[str]
    splits: Splits
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    @torch.inference_mode()
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class names (str array) of items ``x`` (N, *shape)."""
        self.net.eval()
        out = []
        for s in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32)).unsqueeze(1)
            out.append(self.net(xb).argmax(1))
        idx = torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
        return np.asarray(self.classes, dtype=str)[idx]


def encoder_classifier(cfg, shape, n_classes: int) -> nn.Module:
    """The config's encoder blocks followed by a linear layer to ``n_classes`` logits."""
    model = build_model(cfg, shape)
    return nn.Sequential(model.encoder, nn.Linear(model.fc_mu.in_features, n_classes))


def _accuracy(clf: Classifier, x: np.ndarray, labels: np.ndarray) -> float:
    return float((clf.predict(x) == labels).mean()) if len(x) else float("nan")


def train_classifier(cfg, data, epochs: int | None = None) -> Classifier:
    """Train the encoder + softmax head on ``data``'s training split, as ``cfg`` trains the VAE.

    Same splits, batch size, learning rate, weight decay, epochs (``epochs`` to
    override) and ``data.augment``; the returned network has the weights of the
    epoch with the best validation accuracy (the last epoch without a validation
    split).
    """
    torch.manual_seed(cfg.seed)
    classes = list(data.classes)
    splits = splits_of(cfg, data)
    class_of = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([class_of.get(c, -1) for c in data.labels.tolist()], dtype=torch.long)
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)).unsqueeze(1)
    net = encoder_classifier(cfg, data.shape, len(classes))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    clf = Classifier(net, classes, splits)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx = torch.as_tensor(splits.train)
    best, best_state = -1.0, None
    t0 = time.perf_counter()
    for epoch in range(epochs or cfg.train.epochs):
        net.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), cfg.train.batch_size):
            idx = order[start:start + cfg.train.batch_size]
            if len(idx) < 2:  # batch norm needs two items
                continue
            xb = random_octahedral(x[idx], gen) if octahedral_augment(cfg.data.augment, data.ndim) else x[idx]
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = _accuracy(clf, data.x[splits.val], data.labels[splits.val])
        clf.history.append({"epoch": epoch + 1, "val_accuracy": val, "train_loss": float(loss.detach())})
        if not val <= best:  # NaN (no validation split) keeps the newest epoch
            best, best_state, clf.best_epoch = val, copy.deepcopy(net.state_dict()), epoch + 1
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    clf.seconds = time.perf_counter() - t0
    return clf
