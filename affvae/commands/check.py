"""Check a dataset folder in the anchor layout and summarise it.

Reads every file, as training would, and fails with one line naming the file,
class or value on: unreadable or truncated files, mixed shapes, NaN/Inf voxels,
classes in classes.csv without files, and an affinity CSV that is not square, not
symmetric, outside [-1, 1] or missing a class.

  affvae check data/ [--affinity data/affinity_fsc.csv] [--size 32]
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="dataset folder in the anchor layout")
    p.add_argument("--affinity", help="affinity CSV (default: the folder's affinity*.csv, if any)")
    p.add_argument("--classes", help="comma-separated classes to train on (default: classes.csv)")
    p.add_argument("--size", type=int, help="also check resizing to this box")


def main(args: argparse.Namespace) -> int:
    from affvae.data.io import has_test_folder, load_folder

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    ds = load_folder(args.folder, size=args.size, classes=classes, affinity=args.affinity,
                     progress=True)
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
        print("  test/ subfolder present")
    return 0
