"""Evaluate a trained run on a dataset folder: predictions, metrics and figures.

Items are encoded, classified by the nearest class centre of the run's latent
map, and scored against the class in their file names (classes the run never saw
are evaluated as unseen: novelty AUROC and their nearest seen classes).  Writes
predictions.csv (path,label,predicted,distance,novelty), metrics.json and figures/ into
--out (default RUN_DIR/eval_<folder name>).  The results are written into a hidden
folder beside --out and swapped in whole at the end, so an interrupted evaluation
leaves the previous one untouched; --out must therefore be new, empty or an
earlier evaluation, never the run's own folder.  Items of another shape are
resized to the run's box, with a warning unless the run's training files had
their shape (data.size resized those alike).  With --lazy (the default for a run
trained with data.stream) the files are read in batches as they are encoded, so
a folder larger than memory can be evaluated; the figures read them once more.

  affvae evaluate runs/tetra data/new_tetraminos
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by affvae train")
    p.add_argument("data", help="dataset folder in the anchor layout")
    p.add_argument("--out", help="output folder (default RUN/eval_<data folder name>); new, empty or an "
                                 "earlier evaluation, which is replaced whole")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--lazy", action="store_true",
                   help="read the files in batches as they are encoded, never all at once (the default "
                        "when the run was trained with data.stream)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from affvae.data.io import load_folder
    from affvae.errors import DataError, warn
    from affvae.provenance import atomic_dir
    from affvae.runs import check_eval_out, evaluate_items, load_run, read_embeddings
    from affvae.transforms.imaging import Imaging, normalise

    run, data_dir = Path(args.run), Path(args.data)
    out = check_eval_out(Path(args.out) if args.out else run / f"eval_{data_dir.resolve().name}", run)
    cfg, model, lm, info = load_run(run)
    emb = read_embeddings(run / "embeddings.parquet")
    mu_cols = [c for c in emb.columns if c.startswith("mu_")]
    if len(mu_cols) != model.latent_dims:
        raise DataError(f"{run / 'embeddings.parquet'}: {len(mu_cols)} mu_* columns, but the model has "
                        f"{model.latent_dims} latent dimensions")
    shape = tuple(info["shape"])
    lazy = args.lazy or cfg.data.stream
    ds = load_folder(data_dir, affinity=False, progress=not lazy, lazy=lazy)
    if ds.ndim != len(shape):
        raise DataError(f"{data_dir}: {ds.ndim}D items, but the run was trained on {len(shape)}D")
    if ds.shape != shape:
        have, want = "x".join(map(str, ds.shape)), "x".join(map(str, shape))
        if len(set(shape)) != 1:
            raise DataError(f"{data_dir}: items of {have}, but the run was trained on {want}, which is not "
                            "a square or cube to resize them to")
        files = info.get("file_shape")
        if files != list(ds.shape):  # training resized files of this shape alike: nothing to tell
            origin = (f" (files of {'x'.join(map(str, files))} resized)"
                      if isinstance(files, list) and files != list(shape) else "")
            warn(f"{data_dir}: items of {have}, but the run was trained on {want}{origin}: resizing them "
                 f"to {want}")
        ds = load_folder(data_dir, affinity=False, size=shape[0], lazy=lazy)
    x = ds.x.imaged(Imaging(normalise=cfg.data.normalise), None) if lazy else normalise(ds.x, cfg.data.normalise)
    train_rows = emb[emb["split"] == "train"]
    # written into a hidden folder beside --out and swapped in whole: an interrupted or
    # failed evaluation leaves the previous one as it was
    with atomic_dir(out, replace=True) as tmp:
        metrics = evaluate_items(model, lm, x, ds.labels, ds.paths, tmp, info["classes"],
                                 classifier=cfg.eval.classifier,
                                 train_mu=train_rows[mu_cols].to_numpy(np.float32),
                                 train_labels=train_rows["class"].to_numpy(str), embedding=cfg.eval.embedding,
                                 figures=not args.no_figures, seed=cfg.seed)
    acc = metrics.get("accuracy")
    print(f"evaluated {len(ds)} items; seen-class accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}; results in {out}")
    return 0
