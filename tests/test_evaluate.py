import json
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from affvae.evaluate import (
    classification_report,
    confusion,
    evaluate_latents,
    mlp_classifier,
    nearest_seen_classes,
    novelty_auroc,
    pose_angle_correlation,
    proximity_matrix,
    silhouette,
    to_jsonable,
)
from affvae.latent_map import LatentMap
from affvae.plots import plot_confusion, plot_proximity

SEEN = ["a", "b", "c"]
LABELS = ["a", "a", "a", "b", "b", "c", "u", "u", ""]
PRED = ["a", "a", "b", "b", "c", "c", "a", "b", "a"]


def test_report_matches_hand_computation():
    r = classification_report(LABELS, PRED, SEEN)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    # a: TP 2, FN 1 -> 4/5; b: TP 1, FP 1, FN 1 -> 2/4; c: TP 1, FP 1 -> 2/3
    assert r["f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 2 / 3})
    assert r["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["support"] == {"a": 3, "b": 2, "c": 1}
    sk = f1_score(LABELS[:6], PRED[:6], labels=SEEN, average=None)
    np.testing.assert_allclose(list(r["f1"].values()), sk)


def test_report_class_absent_and_never_predicted_is_left_out_of_macro():
    r = classification_report(["a", "a", "b"], ["a", "a", "b"], ["a", "b", "c"])
    assert math.isnan(r["f1"]["c"]) and r["f1_macro"] == 1.0 and r["accuracy"] == 1.0
    empty = classification_report(["u"], ["a"], ["a"])
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])


def test_confusion_has_unseen_rows_and_skips_unknown():
    m, rows, cols = confusion(LABELS, PRED, SEEN)
    assert rows == ["a", "b", "c", "u"] and cols == SEEN
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="'z'"):
        confusion(["a"], ["z"], ["a"])


def test_proximity_is_scaled_to_100_with_zero_diagonal():
    lm = LatentMap(["a", "b", "c"], np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]),
                   np.ones(3), np.ones(3))
    p = proximity_matrix(lm)
    np.testing.assert_allclose(np.diag(p), 0.0)
    assert p.max() == pytest.approx(100.0)
    np.testing.assert_allclose(p, p.T)
    assert p[0, 1] == pytest.approx(60.0) and p[0, 2] == pytest.approx(80.0)
    assert p[1, 2] == pytest.approx(100.0)
    one = LatentMap(["a"], np.zeros((1, 2)), [1], [1.0])
    assert proximity_matrix(one).tolist() == [[0.0]]


def test_novelty_auroc():
    assert novelty_auroc([0.1, 0.5, 0.9, 3, 4], [0, 0, 0, 1, 1]) == 1.0
    assert novelty_auroc([3, 4, 0.1], [0, 0, 1]) == 0.0
    assert novelty_auroc([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert math.isnan(novelty_auroc([1.0, 2.0], [0, 0]))


def test_pose_correlation():
    rng = np.random.default_rng(0)
    angles = rng.uniform(-45, 45, 400)
    pose = np.stack([angles * 2 + rng.normal(0, 1, 400), rng.normal(size=400),
                     -angles + rng.normal(0, 1, 400)], axis=1)
    r = pose_angle_correlation(pose, angles)
    assert r.shape == (3,)
    assert r[0] > 0.99 and abs(r[1]) < 0.15 and r[2] < -0.99
    np.testing.assert_allclose(pose_angle_correlation(pose, angles, "abs"), np.abs(r))
    # 3D: several angles give a (P, K) matrix
    assert pose_angle_correlation(pose, np.stack([angles, angles], 1)).shape == (3, 2)
    # full circle: a pose dimension tracking cos(angle) is invisible linearly but not circularly
    full = rng.uniform(-180, 180, 400)
    circ_pose = np.cos(np.deg2rad(full))[:, None] + rng.normal(0, 0.05, (400, 1))
    assert abs(pose_angle_correlation(circ_pose, full)[0]) < 0.2
    assert pose_angle_correlation(circ_pose, full, "circular")[0] > 0.98
    assert np.isnan(pose_angle_correlation(np.ones((5, 1)), np.arange(5.0))[0])


def clusters(names, n=50, dim=6, seed=0, scale=8.0):
    rng = np.random.default_rng(seed)
    means = scale * rng.standard_normal((len(names), dim))
    labels = np.repeat(np.array(names), n)
    return means.repeat(n, axis=0) + rng.standard_normal((labels.size, dim)), labels, means


def test_mlp_classifier_on_separable_clusters():
    mu, y, _ = clusters(["a", "b", "c", "d"], seed=1)
    test_mu, test_y, _ = clusters(["a", "b", "c", "d"], seed=1, n=20)
    test_mu = test_mu + np.random.default_rng(5).normal(0, 0.1, test_mu.shape)
    pred = mlp_classifier(mu, y, test_mu)
    assert (pred == test_y).mean() > 0.9
    assert np.array_equal(pred, mlp_classifier(mu, y, test_mu))  # fixed seed


def test_silhouette_and_nearest_seen():
    mu, y, means = clusters(["a", "b", "c"])
    assert silhouette(mu, y) > 0.5
    assert math.isnan(silhouette(mu, np.full(y.size, "a")))
    # centres on a line at 0, 10, 20; the new class sits at 13: nearest b, then c
    line = np.array([[0.0], [10.0], [20.0]]) * np.eye(6)[0]
    lm = LatentMap(["a", "b", "c"], line, [1, 1, 1], [1.0, 1.0, 1.0])
    new = 13 * np.eye(6)[0] + np.random.default_rng(3).normal(0, 0.3, (10, 6))
    got = nearest_seen_classes(lm, np.vstack([line, new]), ["a", "b", "c"] + ["n"] * 10, "n", by="euclidean")
    assert got == ["b", "c"]
    assert nearest_seen_classes(lm, new, ["n"] * 10, "n", k=3, by="euclidean") == ["b", "c", "a"]
    # by direction: centres a (long, along x), b (short, 45 degrees), c (along y); the new
    # class points 20 degrees from x at a small norm, as the mean of scattered members is
    lm = LatentMap(["a", "b", "c"], np.array([[3.0, 0.0], [0.3, 0.3], [0.0, 3.0]]), [1, 1, 1], [1.0] * 3)
    new = 0.4 * np.array([[np.cos(np.radians(20)), np.sin(np.radians(20))]])
    assert nearest_seen_classes(lm, new, ["n"], "n", k=3) == ["a", "b", "c"]
    assert nearest_seen_classes(lm, new, ["n"], "n", k=3, by="euclidean") == ["b", "a", "c"]


def test_evaluate_latents_bundle_is_json_and_right():
    mu, y, means = clusters(["a", "b", "c"])
    lm = LatentMap.fit(mu, y)
    test_mu, test_y, _ = clusters(["a", "b", "c"], n=20)
    far = 60.0 + np.random.default_rng(2).standard_normal((15, 6))
    mu_all = np.vstack([test_mu, far])
    y_all = np.concatenate([test_y, ["x"] * 15])
    angles = np.random.default_rng(4).uniform(-45, 45, y_all.size)
    pose = np.stack([angles + np.random.default_rng(5).normal(0, 1, y_all.size),
                     np.zeros(y_all.size)], 1)
    metrics, pred = evaluate_latents(mu_all, y_all, lm, ["a", "b", "c"], pose=pose, angles=angles)
    json.dumps(metrics, allow_nan=False)
    assert metrics["accuracy"] == 1.0 and metrics["f1_macro"] == 1.0
    assert metrics["n_seen"] == 60 and metrics["n_unseen"] == 15
    assert metrics["novelty_auroc"] == 1.0
    assert metrics["novelty_median_unseen"] > 10 * metrics["novelty_median_seen"]
    assert metrics["confusion"]["rows"] == ["a", "b", "c", "x"]
    assert sum(metrics["confusion"]["matrix"][3]) == 15
    assert set(metrics["nearest_seen"]) == {"x"} and len(metrics["nearest_seen"]["x"]) == 2
    assert 0 < metrics["mean_offdiag_proximity"] <= 100
    assert metrics["pose_angle_r"][0] > 0.98 and metrics["pose_angle_r"][1] is None  # constant
    assert metrics["pose_angle_best_abs_r"] > 0.98
    assert set(pred) == {"predicted", "distance", "novelty"}
    assert (pred["predicted"][:60] == test_y).all()
    np.testing.assert_allclose(pred["distance"], lm.predict(mu_all)[1])
    # the per-item novelty is the score the AUROC ranks: the unseen x all score above the seen
    np.testing.assert_allclose(pred["novelty"], lm.novelty(mu_all))
    assert pred["novelty"][60:].min() > pred["novelty"][:60].max()

    m2, p2 = evaluate_latents(test_mu, test_y, lm, classifier="mlp", train=(mu, y))
    assert m2["accuracy"] > 0.9 and "novelty_auroc" not in m2
    json.dumps(m2, allow_nan=False)
    with pytest.raises(ValueError, match="train"):
        evaluate_latents(test_mu, test_y, lm, classifier="mlp")


def test_to_jsonable():
    out = to_jsonable({"a": np.float32(1.5), "b": [np.nan, np.int64(3)], "c": np.array([[1, 2]]),
                       "d": {1: np.inf}, "e": np.bool_(True)})
    assert out == {"a": 1.5, "b": [None, 3], "c": [[1, 2]], "d": {"1": None}, "e": True}


def test_confusion_and_proximity_figures(tmp_path, png):
    from matplotlib import colormaps

    m, rows, cols = confusion(LABELS, PRED, SEEN)
    lm = LatentMap(["a", "b", "c"], np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]),
                   np.ones(3), np.ones(3))
    conf = png(plot_confusion(m, rows, cols, tmp_path / "confusion.png"))
    prox = png(plot_proximity(proximity_matrix(lm), lm.classes, tmp_path / "proximity.png"))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["confusion.png", "proximity.png"]
    # 4 x 3.5 inches at 120 dpi, trimmed to the drawing
    assert 300 < conf.shape[0] < 500 and 300 < conf.shape[1] < 560 and conf.shape[2] == 4
    # cells coloured by the row fraction: one full row (c) here, three when every item is right
    full = colormaps["Blues"](1.0)
    perfect = png(plot_confusion(*confusion(["a", "b", "c", "u"], ["a", "b", "c", "a"], SEEN),
                                 tmp_path / "perfect.png"))
    assert png.share(perfect, full) > 2.5 * png.share(conf, full) > 0.05
    # proximity: the three zeros of the diagonal in the 0 colour, the 100 pair (b, c) in the top one
    zero, top = png.share(prox, colormaps["RdBu_r"](0.0)), png.share(prox, colormaps["RdBu_r"](1.0))
    assert zero > top > 0.05 and zero / top == pytest.approx(3 / 2, rel=0.25)


def test_decoded_centres_identify_their_classes_only_when_they_differ():
    from affvae.evaluate import decoded_identification
    from affvae.transforms.augment import angle_to_matrix, rotate
    from affvae.transforms.glyphs import render_glyphs

    refs = render_glyphs(list("kaxz"), np.zeros(4), 32)
    turned = rotate(refs, angle_to_matrix([30.0, -20.0, 10.0, 45.0]))  # decoded in other poses
    good = decoded_identification(turned, refs, list("kaxz"), metric="ncc")
    assert good["decoded_identification"] == 1.0
    assert good["decoded_best_reference"] == {c: c for c in "kaxz"}
    blob = np.repeat(refs[1:2], 4, axis=0)  # a decoder that ignores z: one object for every class
    bad = decoded_identification(blob, refs, list("kaxz"), metric="ncc")
    assert bad["decoded_identification"] == 0.25 and set(bad["decoded_best_reference"].values()) == {"a"}
