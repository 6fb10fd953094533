"""Run directories: what a trained run leaves on disk, and evaluating it.

A run directory holds::

    config.yaml          the fully resolved config
    provenance.json      affvae version, git commit, command line, seed, time
    run.json             input shape, classes, epochs done, wall time, device, and for
                         folder data the shape of the files before resizing (file_shape)
    model.pt             the state dict (load with weights_only=True)
    history.csv          one row per epoch: train_/val_ terms, val_accuracy, weights
    affinity.csv         the affinity matrix used (when gamma > 0)
    latent_map.parquet   class, n, spread, centre (from the training split's mu)
    embeddings.parquet   path, class, split, mu_*, pose_* (and the true pose if known)
    metrics.json         evaluation of the test split and the unseen classes
    predictions.csv      path,label,predicted,distance,novelty
    figures/             embedding, confusion, proximity, traversal, interpolation, pose sweep,
                         latent_map.html (the embedding to hover: thumbnail, class, prediction)
    checkpoints/         the newest training checkpoints

Everything is written atomically; evaluation is a pure function of the model,
the latent map and the items, so ``affvae evaluate`` on new data writes the same
files into its own folder.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from affvae.config import Config, load_config, save_config
from affvae.data.lazy import batched, is_lazy, subset
from affvae.errors import AffvaeError, one_line, warn
from affvae.latent_map import LatentMap
from affvae.provenance import atomic_save, atomic_write, save_torch, write_provenance

#: What an evaluation writes into its folder (``affvae evaluate`` replaces such a folder whole).
EVAL_OUTPUTS = ("predictions.csv", "metrics.json", "embedding_2d.parquet", "figures")
#: Columns every embeddings.parquet has (then mu_*, pose_*, and true_* when known).
EMBEDDING_COLUMNS = ("path", "class", "split")


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    with atomic_write(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_embeddings(path: Path, paths, labels, split, mu, pose, true_pose=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, Any] = {"path": list(map(str, paths)), "class": list(map(str, labels)),
                            "split": list(map(str, split))}
    for d in range(mu.shape[1]):
        cols[f"mu_{d}"] = mu[:, d].astype(np.float32)
    for d in range(pose.shape[1]):
        cols[f"pose_{d}"] = pose[:, d].astype(np.float32)
    if true_pose is not None:
        tp = np.asarray(true_pose, dtype=np.float32).reshape(len(mu), -1)
        names = ["angle"] if tp.shape[1] == 1 else ["rot", "tilt", "psi"]
        for d, n in enumerate(names):
            cols[f"true_{n}"] = tp[:, d]
    atomic_save(path, lambda tmp: pq.write_table(pa.table(cols), tmp))


def write_embedding_2d(path: Path, xy, labels, unseen) -> None:
    """The plotted 2-D embedding of evaluated items (x, y, class, unseen), for study grids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = list(map(str, labels))
    table = pa.table({"x": xy[:, 0], "y": xy[:, 1], "class": labels,
                      "unseen": [lab in set(unseen) for lab in labels]})
    atomic_save(path, lambda tmp: pq.write_table(table, tmp))


def read_embedding_2d(path: str | os.PathLike):
    """(xy, labels, unseen classes) written by :func:`write_embedding_2d`."""
    import pyarrow.parquet as pq

    df = pq.read_table(path).to_pandas()
    return df[["x", "y"]].to_numpy(), df["class"].to_numpy(), sorted(set(df.loc[df["unseen"], "class"]))


def read_embeddings(path: str | os.PathLike):
    """The embeddings table of a run; a missing, damaged or foreign file raises one AffvaeError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise AffvaeError(f"{path}: does not exist (a finished run writes its embeddings there)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise AffvaeError(f"{path}: not a readable Parquet file ({one_line(e, 200)})") from None
    missing = [c for c in EMBEDDING_COLUMNS if c not in table.column_names]
    if missing:
        raise AffvaeError(f"{path}: no column {missing[0]!r}; expected {', '.join(EMBEDDING_COLUMNS)}, "
                          "mu_0, ...")
    return table.to_pandas()


def evaluate_items(model, latent_map: LatentMap, x: np.ndarray, labels: np.ndarray, paths: Sequence[str],
                   out_dir: str | os.PathLike, seen_classes: Sequence[str], *, classifier: str = "nearest",
                   train_mu: np.ndarray | None = None, train_labels: np.ndarray | None = None,
                   angles: np.ndarray | None = None, embedding: str = "auto", figures: bool = True,
                   seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Encode ``x``, classify by the latent map and write metrics, predictions and figures."""
    from affvae.evaluate import evaluate_latents
    from affvae.model import encode_all

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xt = x if is_lazy(x) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mu, _, pose = encode_all(model.to(device), xt, torch.device(device))
    ang = None
    if angles is not None and model.ndim == 2:
        ang = np.asarray(angles, dtype=float)
    train_pair = (train_mu, train_labels) if classifier == "mlp" else None
    metrics, pred = evaluate_latents(mu, labels, latent_map, seen_classes, pose=pose if pose.shape[1] else None,
                                     angles=ang, classifier=classifier, train=train_pair, seed=seed)
    metrics["n_items"] = int(len(x))
    _write_csv(out / "predictions.csv", ["path", "label", "predicted", "distance", "novelty"],
               ([p, lab, pr, f"{d:.6g}", f"{nv:.6g}"] for p, lab, pr, d, nv in
                zip(paths, labels, pred["predicted"], pred["distance"], pred["novelty"])))
    if figures and len(x):
        metrics.update(_figures(model, latent_map, x, labels, paths, out, seen_classes, mu, pose, pred,
                                train_mu, train_labels, embedding, seed))
    _write_json(out / "metrics.json", metrics)
    return metrics


def _figures(model, latent_map: LatentMap, x, labels, paths, out: Path, seen_classes, mu, pose, pred,
             train_mu, train_labels, embedding: str, seed: int) -> dict[str, Any]:
    """An evaluation's figures; returns the silhouette of its 2-D embedding.

    The embedding pictures the geometry the latent map classifies in: unit vectors for a
    cosine map (the affinity term shapes directions only), mu itself for a Euclidean one.
    """
    from affvae import figures as F
    from affvae.embed import embed
    from affvae.evaluate import confusion, proximity_matrix, silhouette
    from affvae.latent_html import thumbnails, write_latent_map_html
    from affvae.latent_map import unit_rows
    from affvae.plots import plot_confusion, plot_embedding, plot_proximity

    fig = out / "figures"
    fig.mkdir(exist_ok=True)
    unseen = sorted(set(labels.tolist()) - set(seen_classes) - {""})
    ref_mu, ref_labels = (mu, labels) if train_mu is None else (train_mu, train_labels)
    pts, pts_labels = (mu, labels) if train_mu is None else \
        (np.concatenate([mu, train_mu]), np.concatenate([labels, train_labels]))
    geometry = "unit mu" if latent_map.metric == "cosine" else "mu"
    xy = embed(unit_rows(pts) if latent_map.metric == "cosine" else pts, method=embedding, ndim_data=model.ndim,
               seed=seed)
    write_embedding_2d(out / "embedding_2d.parquet", xy[:len(mu)], labels, unseen)
    plot_embedding(xy, pts_labels, fig / "embedding.png", unseen=unseen,
                   title=f"latent {geometry} ({embedding}); unseen: {', '.join(unseen) or 'none'}")
    write_latent_map_html(fig / "latent_map.html", xy[:len(mu)], labels, pred["predicted"], pred["novelty"],
                          np.concatenate([thumbnails(b) for b in batched(x)]), unseen=unseen, paths=paths, seed=seed,
                          title=f"{out.resolve().name}: latent {geometry} ({embedding}) of the evaluated items")
    cm, rows, cols = confusion(labels, pred["predicted"], seen_classes)
    plot_confusion(cm, rows, cols, fig / "confusion.png")
    plot_proximity(proximity_matrix(latent_map), latent_map.classes, fig / "proximity.png")
    ref_pose = pose if pose.shape[1] else np.zeros((len(mu), 0))
    F.traversal(model, mu, ref_pose, fig / "traversal.png")
    picks = [c for c in list(latent_map.classes) + unseen if (labels == c).any()][:4]
    if len(picks) == 4:  # the class means of mu: points the decoder knows (a cosine centre is a direction)
        corners = np.stack([mu[labels == c].mean(0) for c in picks])
        F.interpolation(model, corners, picks, ref_pose, fig / "interpolation.png")
    means = np.stack([ref_mu[ref_labels == c].mean(0) if (ref_labels == c).any() else latent_map.centres[k]
                      for k, c in enumerate(latent_map.classes)])
    F.pose_sweep(model, means, latent_map.classes, ref_pose, labels, fig / "pose_sweep.png")
    seen = np.isin(labels, list(seen_classes))
    return {"embedding_silhouette": silhouette(xy[:len(mu)][seen], labels[seen], seed=seed)}


def save_run(result, data, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Write a trained run's directory and evaluate its test split and unseen classes."""
    from affvae.affinity.matrix import write_affinity_csv
    from affvae.model import encode_all

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg: Config = result.cfg
    model = result.model
    save_config(cfg, run / "config.yaml")
    write_provenance(run, params=cfg.to_dict(), seed=cfg.seed)
    save_torch(run / "model.pt", model.state_dict())
    _write_json(run / "run.json", {
        "shape": list(model.shape), "classes": result.classes, "epochs_done": result.epochs_done,
        "seconds": result.seconds, "stopped_early": result.stopped_early,
        "output": model.output, "n_items": len(data),
        **({"file_shape": list(data.file_shape)} if getattr(data, "file_shape", None) else {}),
    })
    if result.history:
        keys = list(dict.fromkeys(k for h in result.history for k in h))
        _write_csv(run / "history.csv", keys, ([h.get(k, "") for k in keys] for h in result.history))
    if result.affinity is not None:
        write_affinity_csv(result.affinity, run / "affinity.csv")

    sp = result.splits
    xt = data.x if is_lazy(data.x) else torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    mu, _, pose = encode_all(model, xt, torch.device("cpu"))
    split = sp.name_of(len(data))
    write_embeddings(run / "embeddings.parquet", data.paths, data.labels, split, mu, pose, data.poses)
    lm = LatentMap.fit(mu[sp.train], data.labels[sp.train], result.classes, metric=cfg.eval.distance)
    lm.save(run / "latent_map.parquet")
    val_predicted, _ = lm.predict(mu[sp.val])

    ev = np.concatenate([sp.test, sp.unseen])
    if len(sp.test) == 0:
        warn(_no_test_items(cfg, data, run, len(sp.unseen)))
    if len(ev):
        angles = None if data.poses is None or model.ndim != 2 else data.poses[ev]
        metrics = evaluate_items(
            model, lm, subset(data.x, ev), data.labels[ev], [data.paths[i] for i in ev], run, result.classes,
            classifier=cfg.eval.classifier, train_mu=mu[sp.train], train_labels=data.labels[sp.train],
            angles=angles, embedding=cfg.eval.embedding, figures=cfg.eval.figures, seed=cfg.seed)
    else:
        metrics = {"n_items": 0, "evaluated": False,
                   "skipped": f"no test items (data.test_fraction = {cfg.data.test_fraction:g}) "
                              "and no unseen classes"}
    if cfg.eval.decoded_identification:
        metrics.update(decoded_centres(cfg, model, mu, pose, data, sp, result.classes))
    metrics["train_seconds"] = result.seconds
    metrics["epochs_done"] = result.epochs_done
    # the validation split, scored by the map written above: what a study chooses on
    metrics["val_accuracy"] = float((val_predicted == data.labels[sp.val]).mean()) if len(sp.val) else None
    metrics["n_val"] = int(len(sp.val))
    val_curve = [h["val_accuracy"] for h in result.history if h.get("val_accuracy") is not None]
    metrics["best_val_accuracy"] = float(np.nanmax(val_curve)) if val_curve else None
    # the last epoch's validation reconstruction loss: a study's tie-break between trials
    metrics["val_recon"] = result.history[-1].get("val_recon") if result.history else None
    _write_json(run / "metrics.json", metrics)
    return metrics


def decoded_centres(cfg, model, mu: np.ndarray, pose: np.ndarray, data, splits, classes,
                    metric: str = "ncc") -> dict[str, Any]:
    """How well the decoder's output at each class centre identifies the class (see
    :func:`affvae.evaluate.decoded_identification`).

    A centre is the mean mu of the class's training items, decoded in the pose of the member
    nearest it; its reference is the class template, else the medoid of its first 32
    training items.  They are compared by the real-space correlation (NCC) after alignment:
    a decoder trained on noisy items draws their mean, a smooth map, and FSC's count-weighted
    shells would weigh most where such a map has no power.
    """
    from affvae.affinity.matrix import medoid_index
    from affvae.evaluate import decoded_identification
    from affvae.figures import decode

    tr = splits.train
    members = {c: tr[data.labels[tr] == c] for c in classes}
    centres = np.stack([mu[members[c]].mean(0) for c in classes])
    # each centre decoded in a pose the decoder has seen: that of the class member nearest the
    # centre (a mean of poses can be a pose of no item)
    typical = [members[c][np.argmin(((mu[members[c]] - centres[k]) ** 2).sum(1))] for k, c in enumerate(classes)]
    p = pose[typical] if pose.shape[1] else None
    refs = []
    for c in classes:
        if c in data.templates:
            refs.append(data.templates[c])
        else:
            stack = data.x[members[c][:32]]
            refs.append(stack[medoid_index(stack, metric)])
    return decoded_identification(decode(model, centres, p), np.stack(refs), classes, metric)


def _no_test_items(cfg, data, run: Path, n_unseen: int) -> str:
    """The warning of a run whose test split is empty."""
    from affvae.data.io import has_test_folder

    root = data.root if cfg.data.source == "folder" else None
    folder = f"{Path(root) / 'test'}" if root is not None and has_test_folder(root) else "DIR"
    what = (f"evaluating the {n_unseen} items of unseen classes only" if n_unseen
            else "skipping the test evaluation")
    return (f"no test items (data.test_fraction = {cfg.data.test_fraction:g}): {what}; evaluate a "
            f"test folder with: affvae evaluate {run} {folder}")


def check_eval_out(out: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Refuse an evaluation folder that is the run itself or holds other files.

    ``affvae evaluate`` writes its results into a new folder and swaps it in whole,
    so ``--out`` must be new, empty or an earlier evaluation (only the files an
    evaluation writes); the run's own folder would lose the metrics and predictions
    of its test split.
    """
    out, run = Path(out), Path(run_dir)
    if out.exists() and run.exists() and out.resolve() == run.resolve():
        raise AffvaeError(f"--out {out}: the run's own folder; evaluating into it would replace the "
                          "metrics.json and predictions.csv of its test split; leave --out out "
                          f"(default {run / 'eval_<data folder name>'}) or give another folder")
    if out.exists() and not out.is_dir():
        raise AffvaeError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in EVAL_OUTPUTS)
        if other:
            raise AffvaeError(
                f"--out {out}: holds {other[0]}{f' and {len(other) - 1} more' if len(other) > 1 else ''}, "
                "which an evaluation does not write; an evaluation replaces its folder whole, so give "
                "a new or empty folder, or an earlier evaluation's")
    return out


def _read_run_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise AffvaeError(f"{path}: cannot read ({one_line(getattr(e, 'strerror', None) or e)})") from None
    except json.JSONDecodeError as e:
        raise AffvaeError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                          "the run folder is damaged") from None
    if not isinstance(info, dict):
        raise AffvaeError(f"{path}: expected a JSON object with shape, classes and output")
    for key in ("shape", "classes", "output"):
        if key not in info:
            raise AffvaeError(f"{path}: no {key!r}; expected the shape, classes and output a run records")
    shape, classes = info["shape"], info["classes"]
    if (not isinstance(shape, list) or len(shape) not in (2, 3)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in shape)):
        raise AffvaeError(f"{path}: shape {shape!r}: expected 2 or 3 sides of at least 2")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise AffvaeError(f"{path}: classes {classes!r}: expected a non-empty list of class names")
    if info["output"] not in ("sigmoid", "linear"):
        raise AffvaeError(f"{path}: output {info['output']!r}: expected sigmoid or linear")
    return info


def load_run(run_dir: str | os.PathLike):
    """(cfg, model, latent_map, run_info) of a finished run directory."""
    from affvae.model import AffinityVAE

    run = Path(run_dir)
    for name in ("config.yaml", "run.json", "model.pt", "latent_map.parquet"):
        if not (run / name).is_file():
            raise AffvaeError(f"{run}: not a finished run directory (missing {name})")
    cfg = load_config(run / "config.yaml")
    info = _read_run_json(run / "run.json")
    m = cfg.model
    model = AffinityVAE(info["shape"], m.filters, m.latent_dims, m.pose_dims, m.batch_norm, info["output"])
    try:
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the same user problem
        raise AffvaeError(f"{run / 'model.pt'}: cannot load the model ({e.__class__.__name__}: "
                          f"{one_line(e, 200)})") from None
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - a state dict of another model
        raise AffvaeError(f"{run / 'model.pt'}: does not fit the model of {run / 'config.yaml'} and "
                          f"run.json ({one_line(e, 200)})") from None
    model.eval()
    return cfg, model, LatentMap.load(run / "latent_map.parquet"), info
