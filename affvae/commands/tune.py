"""Run a Ray Tune study over any config keys, tracked in MLflow (the studies/ scripts use the same engine).

Grid values with --search, random ones with --choice / --uniform / --loguniform
(drawn --num-samples times, crossed with the grid).  ASHA stops trials that fall
behind on validation accuracy unless --scheduler fifo.  Each trial is a Ray Train
run with --workers workers; every trial is a child run of the study's MLflow run.

  affvae tune --config configs/alphanumeric.yaml --search loss.beta=1,4 --search loss.gamma=0,2,10 --out runs/bg
  affvae tune --config configs/tetramino.yaml --search model.latent_dims=8,16 --search model.pose_dims=0,3 --out runs/dims
  affvae tune --config configs/alphanumeric.yaml --loguniform train.lr=1e-4:1e-2 --num-samples 8 --out runs/lr
  affvae tune --config configs/alphanumeric.yaml --choice data.affinity_metric=fsc,mean-diff,soap --num-samples 3 --out runs/m
  affvae tune ... --out runs/bg --resume        # continue an interrupted study
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="base YAML config (default: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config key")
    p.add_argument("--search", action="append", default=[], metavar="KEY=V1,V2,...", help="grid over values")
    p.add_argument("--choice", action="append", default=[], metavar="KEY=V1,V2,...", help="random choice")
    p.add_argument("--uniform", action="append", default=[], metavar="KEY=LO:HI", help="uniform in [LO, HI]")
    p.add_argument("--loguniform", action="append", default=[], metavar="KEY=LO:HI", help="log-uniform in [LO, HI]")
    p.add_argument("--num-samples", type=int, default=1, help="samples of the random keys (x the grid)")
    p.add_argument("--name", help="study (MLflow experiment) name (default: the --out folder's name)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    p.add_argument("--grace-period", type=int,
                   help="ASHA: epochs before a trial can be stopped (default: a third of train.epochs)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///OUT/mlflow.db)")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS or a local Ray)")
    p.add_argument("--storage", help="Ray storage shared by all nodes (NFS path or s3://...; default OUT)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: as CPUs allow)")
    p.add_argument("--max-failures", type=int, default=0, help="worker failures a trial recovers from")


def _values(raw: str):
    from affvae.config import parse_override

    return [parse_override(f"v={v}")[1] for v in raw.split(",") if v.strip()]


def build_space(args) -> dict:
    from ray import tune

    from affvae.config import parse_override
    from affvae.errors import ConfigError

    space: dict = {}

    def key_raw(item: str, flag: str) -> tuple[str, str]:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUES, e.g. loss.gamma=0,2,10")
        if key in space:
            raise ConfigError(f"{flag} {item!r}: {key} is searched twice")
        return key.strip(), raw

    for item in args.search:
        key, raw = key_raw(item, "--search")
        space[key] = tune.grid_search(_values(raw))
    for item in args.choice:
        key, raw = key_raw(item, "--choice")
        space[key] = tune.choice(_values(raw))
    for flag, items, dist in (("--uniform", args.uniform, tune.uniform),
                              ("--loguniform", args.loguniform, tune.loguniform)):
        for item in items:
            key, raw = key_raw(item, flag)
            try:
                lo, hi = (float(parse_override(f"v={v}")[1]) for v in raw.split(":"))
            except (ValueError, TypeError):
                raise ConfigError(f"{flag} {item!r}: expected KEY=LO:HI with numbers, e.g. train.lr=1e-4:1e-2") \
                    from None
            if not lo < hi or (dist is tune.loguniform and lo <= 0):
                raise ConfigError(f"{flag} {item!r}: need 0 < LO < HI" if dist is tune.loguniform else
                                  f"{flag} {item!r}: need LO < HI")
            space[key] = dist(lo, hi)
    if not space:
        raise ConfigError("nothing to search: give at least one --search, --choice, --uniform or --loguniform")
    return space


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affvae.config import build_config, load_config
    from affvae.errors import ConfigError
    from affvae.tune import StudySpec, print_summary, run_study

    for flag, value, least in (("--workers", args.workers, 1), ("--num-samples", args.num_samples, 1),
                               ("--max-concurrent", args.max_concurrent, 0),
                               ("--max-failures", args.max_failures, 0), ("--grace-period", args.grace_period, 1)):
        if value is not None and value < least:  # before Ray starts
            raise ConfigError(f"{flag} {value}: expected at least {least}")
    base = load_config(args.config, args.set).to_dict()
    base["train"]["checkpoint_every"] = 1
    space = build_space(args)
    for key, dom in space.items():  # every searched value must make a valid config, before Ray starts
        if key == "trial.workers":
            continue
        values = dom["grid_search"] if isinstance(dom, dict) else [dom.sample()] if hasattr(dom, "sample") else [dom]
        for v in values:
            build_config(base, {key: v}, source=f"--search {key}={v}")
    grid = [k for k, v in space.items() if isinstance(v, dict) and "grid_search" in v]
    out = Path(args.out)
    spec = StudySpec(args.name or out.resolve().name, base, space, scheduler=args.scheduler,
                     grace_period=args.grace_period, num_samples=args.num_samples, workers=args.workers,
                     use_gpu=args.gpu, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                     rows=grid[0] if len(grid) > 1 else None, cols=grid[-1] if grid else None,
                     description="affvae tune " + " ".join(args.search + args.choice))
    res = run_study(spec, out, resume=args.resume, tracking_uri=args.tracking_uri, address=args.address,
                    storage=args.storage)
    print_summary(spec, res)
    return 0
