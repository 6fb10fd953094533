"""Evaluate a trained run on a dataset folder: predictions, metrics and figures.

Items are encoded, classified by the nearest class centre of the run's latent
map, and scored against the class in their file names (classes the run never saw
are evaluated as unseen: novelty AUROC and their nearest seen classes).  Writes
predictions.csv (path,label,predicted,distance), metrics.json and figures/ into
--out (default RUN_DIR/eval_<folder name>).

  affvae evaluate runs/tetra data/new_tetraminos
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by affvae train")
    p.add_argument("data", help="dataset folder in the anchor layout")
    p.add_argument("--out", help="output folder (default RUN/eval_<data folder name>)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from affvae.data.io import load_folder
    from affvae.runs import evaluate_items, load_run, read_embeddings
    from affvae.transforms.imaging import normalise

    cfg, model, lm, info = load_run(args.run)
    data_dir = Path(args.data)
    shape = tuple(info["shape"])
    ds = load_folder(data_dir, affinity=False, progress=True)
    if ds.ndim != len(shape):
        from affvae.errors import DataError

        raise DataError(f"{data_dir}: {ds.ndim}D items, but the run was trained on {len(shape)}D")
    if ds.shape != shape:
        ds = load_folder(data_dir, affinity=False, size=shape[0])
    x = normalise(ds.x, cfg.data.normalise)
    out = Path(args.out) if args.out else Path(args.run) / f"eval_{data_dir.resolve().name}"
    emb = read_embeddings(Path(args.run) / "embeddings.parquet")
    train_rows = emb[emb["split"] == "train"]
    mu_cols = [c for c in emb.columns if c.startswith("mu_")]
    metrics = evaluate_items(model, lm, x, ds.labels, ds.paths, out, info["classes"],
                             classifier=cfg.eval.classifier, train_mu=train_rows[mu_cols].to_numpy(np.float32),
                             train_labels=train_rows["class"].to_numpy(str), embedding=cfg.eval.embedding,
                             figures=not args.no_figures, seed=cfg.seed)
    acc = metrics.get("accuracy")
    print(f"evaluated {len(ds)} items; seen-class accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}; results in {out}")
    return 0
