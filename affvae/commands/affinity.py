"""Compute the class-affinity matrix of a dataset folder and write it as CSV.

Each class is represented by its template_<class> file if there is one, else by
its medoid (of its first 32 files, the one most similar to the others).  The
matrix is computed over all classes in the folder (training classes first) and
written atomically in the anchor format: a header of class names, then the rows.
Results are cached by content hash under $AFFVAE_CACHE_DIR (~/.cache/affvae).

  affvae affinity tetra --metric fsc --out tetra/affinity.csv
  affvae affinity glyphs --metric soap --out glyphs/affinity_soap.csv
  affvae affinity tetra --metric fsc --align refine --out aligned.csv     # search SO(3) coarse to fine
  affvae affinity tetra --metric fsc --align 200 --ray --out aligned.csv  # best of 200 fixed rotations
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _align(value: str) -> int | str:
    if value in ("auto", "refine"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of rotations, refine or auto") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected 0 or more rotations")
    return n


def add_args(p: argparse.ArgumentParser) -> None:
    from affvae.affinity.metrics import METRICS

    p.add_argument("folder", help="dataset folder in the anchor layout")
    p.add_argument("--metric", default="fsc", choices=list(METRICS), help="similarity metric (default fsc)")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--align", type=_align, default="auto", metavar="N|refine|auto",
                   help="rotational alignment: auto (default: search SO(3) coarse to fine for 3D objects, "
                        "compare 2D ones as they lie), refine (search for 2D too), 0 (off) or N (the best "
                        "of N fixed rotations)")
    p.add_argument("--size", type=int, help="resize representatives to this box first")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")
    p.add_argument("--plot", action="store_true", help="also write a heatmap PNG beside the CSV")
    p.add_argument("--ray", action="store_true",
                   help="spread the pairs (or, with --align, the rotations) over Ray tasks: a local Ray, "
                        "or the cluster at --address / $RAY_ADDRESS")
    p.add_argument("--address", help="Ray cluster address (with --ray)")
    p.add_argument("--shards", type=int, help="number of Ray tasks (default: one per cluster CPU)")


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from affvae.affinity.matrix import compute_matrix, write_affinity_csv
    from affvae.data.io import index_folder
    from affvae.data.representatives import class_representatives
    from affvae.provenance import write_provenance

    index = index_folder(args.folder, affinity=False)
    classes, objects, source = class_representatives(index, args.metric, size=args.size)
    if args.ray:
        from affvae.raysession import ensure_ray

        ensure_ray(args.address)
    # the file behind each representative (a template, or "medoid of N: FILE"), to name a bad one
    files = [str(index.root / source[c].rsplit(": ", 1)[-1]) for c in classes]
    matrix = compute_matrix(classes, objects, args.metric, align=args.align, cache=not args.no_cache,
                            progress=True, use_ray=args.ray, shards=args.shards, sources=files)
    out = write_affinity_csv(matrix, args.out)
    params = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    params["representatives"] = source
    write_provenance(out.parent, params=params, name=f"{out.stem}.provenance.json")
    if args.plot:
        from affvae.plots import plot_affinity

        plot_affinity(matrix, Path(out).with_suffix(".png"), title=f"{args.metric} affinity")
    off = matrix.values[~np.eye(len(matrix), dtype=bool)] if len(matrix) > 1 else None
    span = f", off-diagonal {off.min():.3f} to {off.max():.3f}" if off is not None else ""
    print(f"wrote {len(matrix)}x{len(matrix)} {args.metric} affinity to {out}{span}")
    return 0

