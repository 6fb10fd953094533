"""Render a simulated dataset folder: rotated 2D glyphs, 3D tetracubes or protein density maps.

Writes the anchor layout: <class>_<index>.mrc per item, template_<class>.mrc (the
unrotated object), manifest.csv (file, class, pose, seed), classes.csv (the
classes to train on: all but --unseen) and provenance.json.  The folder is built
as a hidden .NAME.partial-* beside --out and renamed to --out when complete, so an
interrupted run leaves no half-written dataset.

  affvae simulate alphanumeric --out glyphs --glyphs aebdpijzkxu2 --unseen 2
  affvae simulate tetramino --out tetra --fuse L+T --unseen LT --rotation uniform
  affvae simulate proteins --out prot -n 50                        # the built-in PDB panel, 10 A, 64^3
  affvae simulate proteins --structures my_pdbs/ 1abc.cif.gz --resolution 15 --voxel-size 4 --out prot
  affvae simulate proteins --structures benchmark --size 32 --resolution 18 --voxel-size 6 -n 60 \
      --snr 1 --test 20 --test-unseen 30 --n-unseen 0 --unseen 4zhl,1us0,6flr,3pwp --out bench

Imaging effects (--ctf-defocus, --wedge, --snr) are applied in that order, as training
applies them, each item with its own noise; the files stay unnormalised.  --test N adds
a test/ folder with N more items of each class to train on (and --test-unseen of each
unseen class), for `affvae evaluate RUN DIR/test`.

Protein maps are molmap-style (a Gaussian per heavy atom, amplitude its atomic
number, sigma = 0.225 x resolution); each copy rotates the coordinates, not the map.
"""

from __future__ import annotations

import argparse

from affvae.errors import DataError

#: The smallest box side: the one ``data.size`` accepts (see affvae.config).
MIN_SIZE = 8


def _fused(value: str) -> tuple[str, str]:
    parts = value.split("+")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"{value!r}: expected two tetracubes joined by '+', e.g. L+T")
    return parts[0], parts[1]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["alphanumeric", "tetramino", "proteins"], help="what to simulate")
    p.add_argument("--out", required=True, help="output folder (must be empty or new)")
    p.add_argument("-n", "--n-per-class", type=int, default=100, help="items per class (default 100)")
    p.add_argument("--size", type=int, help="image side / volume edge (default 64 for glyphs, 32 for volumes)")
    p.add_argument("--seed", type=int, default=0, help="random seed of poses (default 0)")
    p.add_argument("--unseen", default="", help="comma-separated classes to leave out of classes.csv")
    p.add_argument("--format", choices=["mrc", "npy"], default="mrc", help="file format (default mrc)")
    p.add_argument("--test", type=int, default=0, metavar="N",
                   help="also write test/ with N more items of each class to train on (default 0: none)")
    p.add_argument("--test-unseen", type=int, metavar="M",
                   help="items of each unseen class in test/ (default: as --test)")
    p.add_argument("--n-unseen", type=int, metavar="K",
                   help="items of each unseen class in the folder itself (default: as -n; 0: only in test/)")
    g = p.add_argument_group("imaging (any 3D data; --ctf-defocus needs --voxel-size except for proteins)")
    g.add_argument("--snr", type=float, help="additive Gaussian noise at this signal-to-noise variance ratio")
    g.add_argument("--wedge", type=float, help="remove the missing wedge of a +-WEDGE degree tilt series")
    g.add_argument("--ctf-defocus", type=float, help="apply a CTF at this defocus (µm; 300 kV, Cs 2.7 mm)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out folder (its old contents are removed once the new "
                        "dataset is complete)")
    g = p.add_argument_group("alphanumeric")
    g.add_argument("--glyphs", default="aebdpijz2kxu",
                   help="glyphs to render, from a-z and 0-9 (default: the paper's aebdpijz2kxu)")
    g.add_argument("--max-angle", type=float, default=45.0,
                   help="rotations are integer degrees in (-A, A) (default 45)")
    g.add_argument("--glyph-size", choices=["natural", "box"], default="natural",
                   help="the font's relative sizes, or every glyph scaled to one box (default natural)")
    t = p.add_argument_group("tetramino")
    t.add_argument("--shapes", default="I,O,T,L,S,branch,screwR,screwL",
                   help="comma-separated tetracubes (default: all eight)")
    t.add_argument("--fuse", type=_fused, action="append", default=[],
                   help="add a fusion of two tetracubes as a class, e.g. L+T (class LT); repeatable")
    t.add_argument("--fuse-mode", choices=["blend", "union"], default="blend",
                   help="fused class: the mean of the parents' densities, or their union (default blend)")
    t.add_argument("--cube", type=float, help="cube edge in voxels (default size/6)")
    t.add_argument("--elongation", type=float, default=1.0, help="stretch cubes along x (default 1)")
    t.add_argument("--rotation", choices=["uniform", "grid", "none"], default="uniform",
                   help="uniform over SO(3), the paper's 10-degree grid, or none (default uniform)")
    t.add_argument("--supersample", type=int, default=2, help="points per voxel edge (default 2)")
    t.add_argument("--render", choices=["fast", "exact"], default="fast",
                   help="volumes: rotate templates rendered once on a grid twice as fine (default), or "
                        "render every item exactly")
    g = p.add_argument_group("proteins (uses --rotation too)")
    g.add_argument("--structures", nargs="+", default=["panel"],
                   help="PDB/mmCIF files or folders, plain or gzipped (default: the built-in panel)")
    g.add_argument("--resolution", type=float, default=10.0, help="map resolution in Å (default 10)")
    g.add_argument("--voxel-size", type=float, help="Å per voxel (proteins: default resolution / 3)")


def _imaging(args: argparse.Namespace, sim):
    """The imaging effects of the flags (unnormalised), or None without any."""
    from affvae.transforms.imaging import Imaging

    for flag, value, ok in (("--snr", args.snr, lambda v: v > 0), ("--wedge", args.wedge, lambda v: 0 < v < 90),
                            ("--ctf-defocus", args.ctf_defocus, lambda v: 0 < v <= 20)):
        if value is not None and not ok(value):
            raise DataError(f"{flag} {value:g}: out of range (snr > 0, 0 < wedge < 90, 0 < defocus <= 20 µm)")
    if args.wedge is not None and sim.ndim != 3:
        raise DataError("--wedge: a missing wedge applies to 3D volumes only")
    voxel = getattr(sim, "voxel_size", None) or args.voxel_size
    if args.ctf_defocus is not None and not voxel:
        raise DataError("--ctf-defocus needs --voxel-size (Å per voxel)")
    im = Imaging(args.ctf_defocus, voxel, args.wedge, args.snr)
    return im if im.effects else None


def main(args: argparse.Namespace) -> int:
    from affvae.data.simulate import AlphanumericSimulator, TetraminoSimulator, write_dataset

    if args.size is not None and args.size < MIN_SIZE:
        raise DataError(f"--size {args.size}: expected at least {MIN_SIZE} voxels per side (the smallest "
                        "box data.size accepts for training)")
    if args.n_per_class < 1:
        raise DataError(f"-n {args.n_per_class}: expected at least 1 item per class")
    if min(args.test, args.test_unseen or 0, args.n_unseen or 0) < 0:
        raise DataError("--test, --test-unseen and --n-unseen: expected 0 or more items per class")
    if args.cube is not None and args.cube <= 0:
        raise DataError(f"--cube {args.cube:g}: expected a positive cube edge in voxels")
    if args.elongation <= 0:
        raise DataError(f"--elongation {args.elongation:g}: expected a positive stretch factor")

    if args.kind == "proteins":
        from affvae.data.proteins import ProteinSimulator

        sim = ProteinSimulator(structures=args.structures, size=args.size or 64, resolution=args.resolution,
                               voxel_size=args.voxel_size,
                               rotation=args.rotation if args.rotation != "grid" else "uniform",
                               fast=args.render == "fast")
    elif args.kind == "alphanumeric":
        glyphs = [g for g in args.glyphs.replace(",", "") if not g.isspace()]
        sim = AlphanumericSimulator(size=args.size or 64, glyphs=glyphs, max_angle=args.max_angle,
                                    glyph_size=args.glyph_size)
    else:
        shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
        sim = TetraminoSimulator(size=args.size or 32, shapes=shapes, cube=args.cube,
                                 elongation=args.elongation, fused=args.fuse, fuse_mode=args.fuse_mode,
                                 rotation=args.rotation, supersample=args.supersample, fast=args.render == "fast")
    unseen = [u.strip() for u in args.unseen.split(",") if u.strip()]
    if len(unseen) >= len(sim.classes):
        raise DataError(f"--unseen {args.unseen!r} leaves no class to train on")
    params = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    out = write_dataset(sim, args.out, args.n_per_class, seed=args.seed, unseen=unseen,
                        ext=f".{args.format}", overwrite=args.overwrite, params=params,
                        imaging=_imaging(args, sim), n_test=args.test, n_test_unseen=args.test_unseen,
                        n_unseen=args.n_unseen)
    print(f"wrote {args.n_per_class * len(sim.classes)} items of {len(sim.classes)} classes to {out}")
    return 0
