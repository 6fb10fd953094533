"""Check a dataset folder in the anchor layout and summarise it.

Reads every file, as training would, and fails with one line naming the file,
class or value on: unreadable or truncated files, broken symbolic links, mixed
shapes, NaN/Inf voxels, a classes.csv none of whose classes has files (or a
--classes class without files), an affinity CSV that is not UTF-8, not square,
outside [-1, 1], without ones on the diagonal or missing a class, and the same
file problems in a test/ sub-folder (whose items must have the shape of the
folder's).  It warns, and goes on, about classes in classes.csv without files
(training uses the others) and an asymmetric affinity CSV (training uses
(A + A^T)/2; --strict refuses it, as data.affinity_strict does for training).

  affvae check data/ [--affinity data/affinity_fsc.csv] [--size 32] [--strict]
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="dataset folder in the anchor layout")
    p.add_argument("--affinity", help="affinity CSV (default: the folder's affinity*.csv, if any)")
    p.add_argument("--classes", help="comma-separated classes to train on (default: classes.csv)")
    p.add_argument("--size", type=int, help="also check resizing to this box")
    p.add_argument("--strict", action="store_true",
                   help="refuse an asymmetric affinity CSV (default: use (A + A^T)/2, with a warning)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affvae.data.io import TEST_FOLDER, has_test_folder, index_folder, load_folder
    from affvae.errors import DataError

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    ds = load_folder(args.folder, size=args.size, classes=classes, affinity=args.affinity,
                     progress=True, test_folder=True, strict=args.strict)
    counts = {c: int((ds.labels == c).sum()) for c in sorted(set(ds.labels.tolist()))}
    unseen = [c for c in counts if c not in ds.classes]
    print(f"{ds.root}: {len(ds)} items of shape {'x'.join(map(str, ds.shape))} ({ds.ndim}D)")
    print(f"  classes to train on ({len(ds.classes)}): "
          + ", ".join(f"{c} {counts[c]}" for c in ds.classes))
    if unseen:
        print(f"  held out ({len(unseen)}): " + ", ".join(f"{c} {counts[c]}" for c in unseen))
    print(f"  templates: {', '.join(sorted(ds.templates)) or 'none'}")
    print(f"  affinity: {'%dx%d' % (len(ds.affinity), len(ds.affinity)) if ds.affinity else 'none'}")
    if has_test_folder(args.folder):
        test = Path(args.folder) / TEST_FOLDER
        try:
            ti = index_folder(test, affinity=False)
        except DataError:  # no data files: warned about while loading
            pass
        else:
            tc = {c: int((ti.labels == c).sum()) for c in sorted(set(ti.labels.tolist()))}
            new = [c for c in tc if c not in ds.classes]
            print(f"  test/: {len(ti)} items ({', '.join(f'{c} {n}' for c, n in tc.items())})"
                  + (f", not trained on: {', '.join(new)} (evaluated as unseen)" if new else "")
                  + f"; evaluate them with affvae evaluate RUN {test}")
    return 0
