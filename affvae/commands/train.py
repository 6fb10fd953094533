"""Train an affinity-VAE and write a run directory (model, latent map, metrics, figures).

The config is YAML (see configs/); --set overrides any key with dotted names.
After training, the test split of the seen classes and all items of unseen
classes are evaluated into metrics.json, predictions.csv and figures/.

  affvae train --config configs/tetramino.yaml --out runs/tetra
  affvae train --config configs/alphanumeric.yaml --set loss.gamma=0 --set model.pose_dims=0 --out runs/beta_vae
  affvae train --config configs/tetramino.yaml --out runs/tetra --resume
  affvae train --config configs/tetramino.yaml --out runs/tetra2 --workers 2         # Ray Train, CPU
  affvae train --config configs/tetramino.yaml --out runs/tetra4 --workers 4 --gpu   # a GPU per worker

With --workers, training runs in Ray Train workers (DistributedDataParallel) on a
local Ray or the cluster at --address / $RAY_ADDRESS; a failed worker restarts the
group from the newest checkpoint, kept under RUN_DIR/ray.

--resume continues from the newest good checkpoint in RUN_DIR/checkpoints (a damaged
newer one is skipped, with a warning).  It refuses, before touching any file, a run
folder without a checkpoint and a config of another model (model.* or the input
shape); the run's config.yaml and results are written only after training succeeds.
With no test items (data.test_fraction=0) the test evaluation is skipped, saying so.
"""

from __future__ import annotations

import argparse
import sys


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. loss.gamma=3 (repeatable)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="train with N Ray Train workers (DDP: gloo on CPU, NCCL on GPU); default 0: this process")
    p.add_argument("--gpu", action="store_true", help="with --workers: one GPU per worker")
    p.add_argument("--address", help="with --workers: Ray cluster address (default $RAY_ADDRESS or a local Ray)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="with --workers: worker failures to recover from (default 2)")


def _log_epoch(m: dict, checkpoint) -> None:
    """One line per epoch when stderr is not a terminal (logs, nohup, CI)."""
    acc = m.get("val_accuracy")
    print(f"epoch {m['epoch']}: train_total {m['train_total']:.4g} val_total {m.get('val_total', float('nan')):.4g} "
          f"val_accuracy {acc if acc is None else round(acc, 4)} ({m['epoch_seconds']:.1f} s)",
          file=sys.stderr, flush=True)


def _resume_point(out, cfg):
    """The newest good checkpoint of the run ``out`` to resume from; refuses if there is none."""
    from affvae.checkpoints import check_matches, checkpoint_files, newest_good_checkpoint
    from affvae.errors import AffvaeError

    if not out.is_dir():
        raise AffvaeError(f"{out}: --resume needs an existing run folder, and there is none; "
                          "drop --resume to start a new run")
    ckpt = out / "checkpoints"
    if not checkpoint_files(ckpt):
        raise AffvaeError(f"{out}: no checkpoint to resume from (no {ckpt}/epoch_*.pt); "
                          "drop --resume to start a new run, or use another --out")
    path, state = newest_good_checkpoint(ckpt)
    check_matches(state, path, config=cfg.to_dict())
    return path, state


def _check_flags(args: argparse.Namespace) -> None:
    """Flags first: nothing is read, started or written for a command that cannot run."""
    from affvae.errors import AffvaeError

    if args.workers < 0:
        raise AffvaeError(f"--workers {args.workers}: expected 0 (train in this process) or a number "
                          "of Ray Train workers, at least 1")
    if args.max_failures < 0:
        raise AffvaeError(f"--max-failures {args.max_failures}: expected 0 or more")
    if args.gpu and not args.workers:
        raise AffvaeError("--gpu needs --workers N (a single process uses a GPU when train.device allows)")
    if args.workers and args.resume:
        raise AffvaeError("--resume with --workers: Ray Train resumes by itself after failures; "
                          "rerun without --workers to continue from RUN_DIR/checkpoints")


def _check_out(out, resume: bool, cfg):
    """The run folder may be written: a checkpoint of this model to resume from, or a new run."""
    from affvae.checkpoints import checkpoint_files
    from affvae.errors import AffvaeError

    if out.exists() and not out.is_dir():
        raise AffvaeError(f"{out}: exists and is not a folder; --out names the run folder to write")
    if resume:  # before any file of the run is touched
        return _resume_point(out, cfg)
    if (out / "model.pt").exists():
        raise AffvaeError(f"{out}: already holds a trained run; use --resume or another --out")
    if checkpoint_files(out / "checkpoints"):  # a fresh start would replace them one by one
        raise AffvaeError(f"{out}: holds an unfinished run ({checkpoint_files(out / 'checkpoints')[-1]}); "
                          "use --resume to continue it, or another --out")
    return None


def _fit(args: argparse.Namespace, cfg, data, out):
    """Train in this process or with Ray Train workers."""
    if args.workers:
        from affvae.distributed import train_distributed
        from affvae.raysession import ensure_ray

        if args.address:
            ensure_ray(args.address)
        return train_distributed(cfg, data, workers=args.workers, use_gpu=args.gpu,
                                 storage=out / "ray", max_failures=args.max_failures)
    from affvae.data.sources import resolve_affinity
    from affvae.data.stream import stream_batches
    from affvae.train import train

    batches = stream_batches(cfg, data) if cfg.data.stream else None
    return train(cfg, data, resolve_affinity(cfg, data), batches, checkpoint_dir=out / "checkpoints",
                 resume=args.resume, progress=sys.stderr.isatty(),
                 report=None if sys.stderr.isatty() else _log_epoch)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affvae.checkpoints import check_matches
    from affvae.config import load_config
    from affvae.data.sources import build_dataset
    from affvae.model import build_model
    from affvae.runs import save_run

    _check_flags(args)
    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    resume_from = _check_out(out, args.resume, cfg)
    data = build_dataset(cfg, progress=True)
    print(f"data: {len(data)} items of {'x'.join(map(str, data.shape))}, train on "
          f"{', '.join(data.classes)}; unseen: "
          f"{', '.join(sorted(set(data.labels.tolist()) - set(data.classes))) or 'none'}")
    if resume_from is not None:
        check_matches(resume_from[1], resume_from[0], model=build_model(cfg, data.shape))
    result = _fit(args, cfg, data, out)
    # config.yaml, model.pt and the rest are (re)written only now that training succeeded
    metrics = save_run(result, data, out)
    acc, val = metrics.get("accuracy"), metrics.get("val_accuracy")
    print(f"trained {result.epochs_done} epochs in {result.seconds:.0f} s"
          + (f"; validation accuracy {val:.3f}" if val is not None else "")
          + (f"; test accuracy {acc:.3f}" if acc is not None else ""))
    for cls, near in (metrics.get("nearest_seen") or {}).items():
        print(f"  unseen {cls}: nearest seen centres {', '.join(near)}")
    print(f"run directory: {out}")
    return 0
