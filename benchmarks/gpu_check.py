"""GPU check: ``train()`` on CUDA with and without mixed precision, and Ray Train on a GPU.

    python benchmarks/gpu_check.py [--config configs/tetramino.yaml] [--epochs 20]

Needs one CUDA GPU (CI has none; run it on a GPU machine).  Trains one config three ways,
each from the same seed, and prints the final losses, validation accuracy and samples/s:

  cuda fp32      train(), ``train.amp off``
  cuda amp       train(), ``train.amp on`` (float16 autocast and a gradient scaler)
  ray-train gpu  Ray Train's TorchTrainer, one worker holding the GPU (``use_gpu``), amp on

Exits 1 when CUDA is missing, a run fails, the Ray Train worker did not train with the
GPU's gradient scaler (its checkpoint holds the scaler's state only when it did), or the
mixed-precision runs end more than ``--tolerance`` (relative) above fp32's total loss.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path


def summary(name: str, history: list[dict], seconds: float) -> dict:
    last = history[-1]
    rates = [h["samples_per_second"] for h in history[1:] or history]
    row = {"run": name, "epochs": len(history), "train_total": last["train_total"],
           "val_total": last["val_total"], "val_accuracy": last.get("val_accuracy", math.nan),
           "samples_per_second": sorted(rates)[len(rates) // 2], "seconds": seconds}
    print(f"{name:14s} epochs {row['epochs']:3d}  train_total {row['train_total']:.4f}  "
          f"val_total {row['val_total']:.4f}  val_accuracy {row['val_accuracy']:.3f}  "
          f"{row['samples_per_second']:9.0f} samples/s  {seconds:6.1f} s", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tetramino.yaml")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=0.25,
                    help="largest relative excess of an amp run's final train_total over fp32's")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 1
    from affvae.config import load_config
    from affvae.data.sources import build_dataset, resolve_affinity
    from affvae.distributed import read_checkpoint, train_distributed
    from affvae.train import train

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    cfgs = {amp: load_config(args.config, overrides=[f"train.epochs={args.epochs}", "train.device=auto",
                                                     f"train.amp={amp}"]) for amp in ("off", "on")}
    t0 = time.perf_counter()
    data = build_dataset(cfgs["off"])
    affinity = resolve_affinity(cfgs["off"], data)
    print(f"data {data.x.shape} ({len(data.classes)} classes) and affinity in {time.perf_counter() - t0:.1f} s",
          flush=True)

    rows = []
    for name, amp in (("cuda fp32", "off"), ("cuda amp", "on")):
        t0 = time.perf_counter()
        res = train(cfgs[amp], data, affinity=affinity)
        rows.append(summary(name, res.history, time.perf_counter() - t0))

    storage = Path(tempfile.mkdtemp(prefix="affvae-gpu-check-"))
    t0 = time.perf_counter()
    res = train_distributed(cfgs["on"], data, workers=1, use_gpu=True, storage=storage, affinity=affinity)
    rows.append(summary("ray-train gpu", res.history, time.perf_counter() - t0))
    newest = max(storage.rglob("*.pt"), key=lambda p: p.stat().st_mtime)
    scaler = read_checkpoint(newest.parent).get("scaler")

    failures = []
    if not scaler:
        failures.append(f"{newest}: no gradient-scaler state, so the Ray Train worker did not train on CUDA with amp")
    ref = rows[0]["train_total"]
    for row in rows:
        if not math.isfinite(row["train_total"]):
            failures.append(f"{row['run']}: final train_total {row['train_total']}")
        elif row["run"] != "cuda fp32" and row["train_total"] > ref * (1 + args.tolerance):
            failures.append(f"{row['run']}: final train_total {row['train_total']:.4f} is more than "
                            f"{args.tolerance:.0%} above fp32's {ref:.4f}")
    if failures:
        print("gpu_check FAILED:\n  " + "\n  ".join(failures), flush=True)
        return 1
    print("gpu_check passed: CUDA training with and without amp, and a Ray Train GPU worker", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
