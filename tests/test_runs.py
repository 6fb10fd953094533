"""Tests for affvae.runs: what a trained run writes, and evaluating it."""

import csv
import json

import numpy as np
import pytest

from affvae.config import build_config
from affvae.data.sources import build_dataset, resolve_affinity
from affvae.latent_map import LatentMap
from affvae.runs import read_embeddings, save_run
from affvae.train import train

SMALL = ["data.source=alphanumeric", "data.size=16", "data.glyphs=aeio", "data.unseen=[o]",
         "data.n_per_class=16", "model.filters=[4, 8]", "model.latent_dims=4", "train.batch_size=8",
         "train.epochs=3", "loss.gamma=1", "data.affinity_metric=ncc", "eval.figures=false"]


@pytest.fixture(scope="module", params=["euclidean", "cosine"])
def saved(request, tmp_path_factory):
    cfg = build_config(overrides=SMALL + [f"eval.distance={request.param}"])
    ds = build_dataset(cfg)
    res = train(cfg, ds, resolve_affinity(cfg, ds))
    run = tmp_path_factory.mktemp("run")
    return cfg, ds, res, run, save_run(res, ds, run)


def test_the_last_epochs_val_accuracy_is_the_final_evaluations(saved):
    # the per-epoch number a study ranks on is the latent map the run ends with, on the
    # validation split: eval mode, centres of the training split's mu
    cfg, ds, res, run, metrics = saved
    assert metrics["n_val"] == len(res.splits.val) > 0
    assert res.history[-1]["val_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-12)
    assert metrics["best_val_accuracy"] == max(h["val_accuracy"] for h in res.history)
    emb = read_embeddings(run / "embeddings.parquet")
    mu = emb[[c for c in emb.columns if c.startswith("mu_")]].to_numpy()
    lm = LatentMap.load(run / "latent_map.parquet")
    assert lm.metric == cfg.eval.distance
    val = (emb["split"] == "val").to_numpy()
    assert metrics["val_accuracy"] == pytest.approx(float((lm.predict(mu[val])[0] == emb["class"][val]).mean()))


def test_predictions_hold_the_per_item_novelty_the_auroc_ranks(saved):
    cfg, ds, res, run, metrics = saved
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert list(rows[0]) == ["path", "label", "predicted", "distance", "novelty"]
    emb = read_embeddings(run / "embeddings.parquet").set_index("path")
    lm = LatentMap.load(run / "latent_map.parquet")
    mu = emb.loc[[r["path"] for r in rows], [c for c in emb.columns if c.startswith("mu_")]].to_numpy()
    np.testing.assert_allclose([float(r["novelty"]) for r in rows], lm.novelty(mu), rtol=1e-5)
    from sklearn.metrics import roc_auc_score

    unseen = np.array([r["label"] == "o" for r in rows])
    auroc = roc_auc_score(unseen, [float(r["novelty"]) for r in rows])
    assert auroc == pytest.approx(json.loads((run / "metrics.json").read_text())["novelty_auroc"], abs=1e-4)


def test_the_mlp_classifier_is_evaluated_from_the_training_mu(tmp_path):
    cfg = build_config(overrides=SMALL + ["eval.classifier=mlp", "train.epochs=2"])
    ds = build_dataset(cfg)
    res = train(cfg, ds, resolve_affinity(cfg, ds))
    metrics = save_run(res, ds, tmp_path)
    assert metrics["classifier"] == "mlp"
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert {r["predicted"] for r in rows} <= {"a", "e", "i"}
    # an MLP fitted on the training split's mu (as written to embeddings.parquet) predicts each row
    from affvae.evaluate import mlp_classifier

    emb = read_embeddings(tmp_path / "embeddings.parquet").set_index("path")
    mu_cols = [c for c in emb.columns if c.startswith("mu_")]
    train_rows = emb[emb["split"] == "train"]
    expected = mlp_classifier(train_rows[mu_cols].to_numpy(), train_rows["class"].to_numpy(str),
                              emb.loc[[r["path"] for r in rows], mu_cols].to_numpy(), seed=cfg.seed)
    assert [r["predicted"] for r in rows] == expected.tolist()
    seen = [r for r in rows if r["label"] != "o"]
    assert metrics["n_seen"] == len(seen) == len(res.splits.test)
    assert metrics["accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in seen) / len(seen))


def test_an_evaluation_with_figures_writes_the_latent_map_page(tmp_path):
    # one point per evaluated item, with the predictions and novelty of predictions.csv
    import re

    import torch

    from affvae.model import AffinityVAE
    from affvae.runs import evaluate_items

    torch.manual_seed(0)
    model = AffinityVAE((16, 16), filters=(4, 8), latent_dims=3, pose_dims=1, batch_norm=False)
    rng = np.random.default_rng(0)
    x = rng.random((12, 16, 16)).astype(np.float32)
    labels = np.array(["a", "b", "c"] * 4)
    mu = model.encode(torch.from_numpy(x))[0].detach().numpy()
    lm = LatentMap.fit(mu, labels, ["a", "b"])
    paths = [f"{lab}_{i}.npy" for i, lab in enumerate(labels)]
    evaluate_items(model, lm, x, labels, paths, tmp_path, ["a", "b"], embedding="pca")
    page = tmp_path / "figures" / "latent_map.html"
    text = page.read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)[1])
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert data["path"] == [r["path"] for r in rows] == paths
    assert data["pred"] == [r["predicted"] for r in rows]
    np.testing.assert_allclose(data["nov"], [float(r["novelty"]) for r in rows], rtol=1e-3)
    assert [(c["name"], c["unseen"]) for c in data["classes"]] == [("a", False), ("b", False), ("c", True)]
    assert (tmp_path / "figures" / "embedding.png").is_file()
