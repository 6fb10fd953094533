"""Train an affinity-VAE and write a run directory (model, latent map, metrics, figures).

The config is YAML (see configs/); --set overrides any key with dotted names.
After training, the test split of the seen classes and all items of unseen
classes are evaluated into metrics.json, predictions.csv and figures/.

  affvae train --config configs/tetramino.yaml --out runs/tetra
  affvae train --config configs/alphanumeric.yaml --set loss.gamma=0 --set model.pose_dims=0 --out runs/beta_vae
  affvae train --config configs/tetramino.yaml --out runs/tetra --resume
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


def _log_epoch(m: dict, checkpoint) -> None:
    """One line per epoch when stderr is not a terminal (logs, nohup, CI)."""
    acc = m.get("val_accuracy")
    print(f"epoch {m['epoch']}: train_total {m['train_total']:.4g} val_total {m.get('val_total', float('nan')):.4g} "
          f"val_accuracy {acc if acc is None else round(acc, 4)} ({m['epoch_seconds']:.1f} s)",
          file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affvae.config import load_config, save_config
    from affvae.data.sources import build_dataset
    from affvae.errors import AffvaeError
    from affvae.runs import save_run
    from affvae.train import train

    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    if (out / "model.pt").exists() and not args.resume:
        raise AffvaeError(f"{out}: already holds a trained run; use --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    data = build_dataset(cfg, progress=True)
    print(f"data: {len(data)} items of {'x'.join(map(str, data.shape))}, train on "
          f"{', '.join(data.classes)}; unseen: "
          f"{', '.join(sorted(set(data.labels.tolist()) - set(data.classes))) or 'none'}")
    result = train(cfg, data, checkpoint_dir=out / "checkpoints", resume=args.resume,
                   progress=sys.stderr.isatty(), report=None if sys.stderr.isatty() else _log_epoch)
    metrics = save_run(result, data, out)
    acc = metrics.get("accuracy")
    line = f"trained {result.epochs_done} epochs in {result.seconds:.0f} s; test accuracy {acc:.3f}" \
        if acc is not None else f"trained {result.epochs_done} epochs in {result.seconds:.0f} s"
    print(line)
    for cls, near in (metrics.get("nearest_seen") or {}).items():
        print(f"  unseen {cls}: nearest seen centres {', '.join(near)}")
    print(f"run directory: {out}")
    return 0
