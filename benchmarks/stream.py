"""Benchmark: streamed training against in-memory training, for the same config, in one run.

For each shipped config (default ``configs/tetramino.yaml`` at 32^3 and
``configs/proteins.yaml`` at 64^3: SNR 1, +-60 degree wedge) it trains a few epochs
four ways through affvae's own ``train`` and prints the training samples/s of each
(items over training seconds, epochs after the first):

* memory, 1 process      the items rendered once, in memory (``data.stream: false``);
* stream, 1 process      fresh items every epoch, rendered in a thread of the training
                         process (``data.stream: true``, the local engine);
* memory, N workers      Ray Train, N DistributedDataParallel workers (``--workers N``);
* stream, N workers      the same with the workers' items rendered where
                         ``data.stream_engine: auto`` puts them on this machine (in the
                         workers when the trainers hold every core, else Ray Data tasks),
                         and by Ray Data tasks when auto did not pick them;

and the ratio stream / memory of each pair (target >= 0.75).  It also prints how many
volumes per second the renderer makes alone, and the peak memory (the summed PSS of the
driver, Ray and its workers: a page of Ray's object store counts once, not once per
process that maps it) of streaming 1x and 10x items through Ray Data, each in a fresh
process (target 10x / 1x <= 1.2).

``--folder GIB`` trains one epoch on folders of 32^3 files whose items total GIB and
10 x GIB, each in a fresh process whose data memory is capped at GIB (``RLIMIT_DATA``):
the folder is streamed and its validation split read lazily, so the 10x folder trains
within the cap with the same peak RSS (target 10x / 1x <= 1.2).

    python benchmarks/stream.py [--configs tetramino,proteins] [--epochs 4] [--workers 2]
                                [--skip-ray] [--skip-memory] [--memory-items 1000]
                                [--folder 1 --folder-dir /tmp/affvae-folders]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: items per class of each config here: enough batches per epoch for a steady rate
ITEMS = {"tetramino": 200, "proteins": 60}


def config_for(name: str, epochs: int, stream: bool, engine: str = "auto"):
    from affvae.config import load_config

    return load_config(ROOT / "configs" / f"{name}.yaml", overrides=[
        f"data.n_per_class={ITEMS.get(name, 100)}", f"train.epochs={epochs + 1}",
        f"data.stream={'true' if stream else 'false'}", f"data.stream_engine={engine}"])


def rate(history: list[dict]) -> float:
    """Training samples/s over the epochs after the first (allocator and worker warm-up)."""
    timed = history[1:] or history
    return sum(h["train_items"] for h in timed) / sum(h["train_seconds"] for h in timed)


def train_rate(name: str, epochs: int, stream: bool, workers: int, data, affinity,
               engine: str = "auto") -> float:
    from affvae.data.stream import stream_batches
    from affvae.train import train

    cfg = config_for(name, epochs, stream, engine)
    if workers > 1:
        from affvae.distributed import train_distributed

        return rate(train_distributed(cfg, data, workers=workers, affinity=affinity).history)
    batches = stream_batches(cfg, data) if stream else None
    return rate(train(cfg, data, affinity, batches).history)


def render_rate(name: str, items: int = 256) -> float:
    """Volumes/s of the stream's renderer alone in this process (pose, imaging, normalisation)."""
    from affvae.data.sources import make_simulator
    from affvae.data.stream import local_batches, simulated_table, spec_from_config

    cfg = config_for(name, 1, True)
    spec = spec_from_config(cfg, make_simulator(cfg.data).classes)
    table = simulated_table(spec, np.arange(items))
    next(local_batches(spec, {k: v[:8] for k, v in table.items()}, 8))  # templates, imports
    t0 = time.perf_counter()
    n = sum(len(b["x"]) for b in local_batches(spec, table, cfg.train.batch_size))
    return n / (time.perf_counter() - t0)


def compare(name: str, epochs: int, workers: list[int]) -> None:
    from affvae.data.sources import build_dataset, resolve_affinity

    cfg = config_for(name, epochs, False)
    data = build_dataset(cfg)
    affinity = resolve_affinity(cfg, data)
    size = cfg.data.size
    print(f"{name} ({size}^{len(data.shape)}, batch {cfg.train.batch_size}, {len(data)} items; "
          f"renderer alone {render_rate(name):.0f} volumes/s):", flush=True)
    from affvae.distributed import stream_engine

    for w in workers:
        memory = train_rate(name, epochs, False, w, data, affinity)
        # with workers, the engine data.stream_engine "auto" picks here, then Ray Data if it did not
        auto = stream_engine("auto", w)
        for engine in ["local"] if w == 1 else list(dict.fromkeys([auto, "ray"])):
            streamed = train_rate(name, epochs, True, w, data, affinity, engine)
            where = "1 process" if w == 1 else (
                f"{w} Ray Train workers, " + ("Ray Data" if engine == "ray" else "in-worker")
                + (" (auto)" if engine == auto else ""))
            print(f"  {where:38s} memory {memory:7.1f} samples/s   stream {streamed:7.1f}   "
                  f"ratio {streamed / memory:5.2f} (target >= 0.75)", flush=True)
        if w > 1:
            import ray

            ray.shutdown()


# ------------------------------------------------------------------------- memory


def memory_spec(size: int):
    """Tetracubes at SNR 1 with a +-60 degree wedge, the stream of the memory measurement."""
    from affvae.data.stream import StreamSpec
    from affvae.transforms.imaging import Imaging

    sim = {"size": size, "shapes": ("I", "O", "T", "L", "S", "branch", "screwR", "screwL"),
           "cube": None, "elongation": 1.0, "fused": (), "fuse_mode": "union", "rotation": "uniform",
           "fast": True}
    return StreamSpec("tetramino", sim["shapes"], seed=0, sim=sim,
                      imaging=Imaging(snr=1.0, wedge=60.0, normalise="minmax"))


def _tree_rss_kib(pid: int) -> int:
    """Memory of a process and all its descendants, from /proc: their summed proportional
    set sizes (PSS), which count a page shared by k processes (Ray's object store, mapped
    by the driver and every worker) once in all, not k times; VmRSS where PSS is not shown."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup")
            source, key = (rollup, "Pss:") if rollup.exists() else (Path(f"/proc/{p}/status"), "VmRSS:")
            total += sum(int(line.split()[1]) for line in source.read_text().splitlines() if line.startswith(key))
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                stack.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


STREAM_BUFFER_MIB = 128


def memory_child(size: int, items: int) -> None:
    """Stream ``items`` volumes through Ray Data, print the peak memory (PSS) of the process tree."""
    import ray
    from ray.data import DataContext

    from affvae.data.stream import bound_stream_memory, ray_dataset

    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kib(os.getpid()))
            time.sleep(0.05)

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             object_store_memory=512 * 2**20)
    # the stream's buffer of rendered blocks is bounded (as in training), so memory
    # does not grow with the number of items streamed
    bound_stream_memory(STREAM_BUFFER_MIB)
    DataContext.get_current().enable_progress_bars = False
    threading.Thread(target=sample, daemon=True).start()
    n, bs = 0, 32
    t0 = time.perf_counter()
    for b in ray_dataset(memory_spec(size), n_items=items, batch_size=bs).iter_batches(
            batch_size=bs, batch_format="numpy", prefetch_batches=4):
        n += len(b["x"])
    seconds = time.perf_counter() - t0
    done.set()
    ray.shutdown()
    print(json.dumps({"items": n, "peak_rss_mib": peak[0] / 1024, "seconds": seconds}))


def memory_run(size: int, items: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(items)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ folder larger than memory


def write_folder(root: Path, gib: float) -> Path:
    """A folder of 32^3 tetracube files (fast render, .npy) whose items total ``gib`` GiB."""
    from affvae.data.simulate import TetraminoSimulator, write_dataset

    sim = TetraminoSimulator(size=32, fast=True)
    per_class = max(2, int(gib * 2**30 / (32**3 * 4) / len(sim.classes)))
    out = root / f"tetracubes_{gib:g}gib"
    if not (out / "manifest.csv").is_file():
        write_dataset(sim, out, per_class, ext=".npy", overwrite=True, batch_size=256, progress=True)
    return out


def folder_child(path: str, cap_gib: float) -> None:
    """Train one epoch streaming ``path`` under a data-memory cap; print the peak RSS."""
    import resource

    cap = int(cap_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    from affvae.config import build_config
    from affvae.data.sources import build_dataset
    from affvae.data.stream import stream_batches
    from affvae.train import train

    cfg = build_config(overrides={"data.source": "folder", "data.path": path, "data.stream": True,
                                  "loss.gamma": 0.0, "train.epochs": 1, "train.batch_size": 32,
                                  "model.filters": [8, 16, 32], "model.pose_dims": 3})
    t0 = time.perf_counter()
    data = build_dataset(cfg)
    res = train(cfg, data, None, stream_batches(cfg, data))
    h = res.history[-1]
    print(json.dumps({"items": len(data), "item_gib": len(data) * 32**3 * 4 / 2**30, "train_items": h["train_items"],
                      "val_accuracy": h["val_accuracy"], "seconds": time.perf_counter() - t0,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def folder_run(path: Path, cap_gib: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--folder-child", str(path), "--folder", str(cap_gib)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"training on {path} under a {cap_gib:g} GiB cap failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tetramino,proteins", help="names of configs/*.yaml")
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs after one warm-up epoch")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers of the distributed pair")
    ap.add_argument("--skip-ray", action="store_true", help="only the single-process pair")
    ap.add_argument("--memory-items", type=int, default=1000, help="items of the 1x memory run (32^3)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--folder", type=float, help="GiB of items of the 1x folder, and the memory cap")
    ap.add_argument("--folder-dir", default="/tmp/affvae-folders", help="where the folders are written")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(32, args.memory_child)
        return
    if args.folder_child:
        folder_child(args.folder_child, args.folder)
        return
    if args.folder:
        root = Path(args.folder_dir)
        runs = [folder_run(write_folder(root, g), args.folder) for g in (args.folder, 10 * args.folder)]
        for r in runs:
            print(f"folder of {r['items']} items ({r['item_gib']:.1f} GiB) under a {args.folder:g} GiB cap: "
                  f"trained {r['train_items']} items in {r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
        print(f"peak RSS 10x / 1x {runs[1]['peak_rss_mib'] / runs[0]['peak_rss_mib']:.2f} (target <= 1.2)")
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}")
    workers = [1] if args.skip_ray else [1, args.workers]
    for name in args.configs.split(","):
        compare(name, args.epochs, workers)
    if not args.skip_memory:
        one = memory_run(32, args.memory_items)
        ten = memory_run(32, 10 * args.memory_items)
        print(f"memory, 32^3 Ray Data stream: 1x {one['items']} items peak {one['peak_rss_mib']:.0f} MiB "
              f"({one['seconds']:.0f} s); 10x {ten['items']} items peak {ten['peak_rss_mib']:.0f} MiB "
              f"({ten['seconds']:.0f} s); ratio {ten['peak_rss_mib'] / one['peak_rss_mib']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
