"""Benchmark: the Ray Data stream of augmented volumes against what training consumes.

For 32^3 and 64^3 tetracube volumes (random rotation over SO(3), noise at SNR 1 and
a +-60 degree missing wedge) it prints, measured in this run:

* stream   volumes per second delivered by the Ray Data stream with a local Ray of
           1 and 2 CPUs, and by the same functions in this process (no Ray);
* consume  samples per second of a training step (forward + backward + Adam) of the
           reference architectures (32^3: 8-16-32 filters, batch 32; 64^3: 3-6-12-24,
           batch 25) on data already in memory, with both cores;
* ratio    stream / consume: above 1 the trainer never waits on data (when the two
           share the cores, the split of the cores decides);
* memory   peak RSS (driver, Ray and its workers together) streaming 1x and 10x items,
           each in a fresh process; the stream should stay flat (target 10x / 1x <= 1.2).

    python benchmarks/stream.py [--items 1200] [--sizes 32,64] [--skip-memory]
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


def spec_for(size: int):
    from affvae.data.stream import StreamSpec

    sim = {"size": size, "shapes": ("I", "O", "T", "L", "S", "branch", "screwR", "screwL"),
           "cube": None, "elongation": 1.0, "fused": (), "fuse_mode": "union", "rotation": "uniform"}
    return StreamSpec("tetramino", sim["shapes"], seed=0, sim=sim, snr=1.0, wedge=60.0)


def batch_size_for(size: int) -> int:
    return 32 if size <= 32 else 25


def ray_rate(size: int, items: int, cpus: int) -> float:
    import ray

    from affvae.data.stream import ray_dataset
    from affvae.raysession import ensure_ray

    ensure_ray(num_cpus=cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        spec = spec_for(size)
        bs = batch_size_for(size)
        # warm-up: workers start and import torch once
        for _ in ray_dataset(spec, n_items=4 * bs, batch_size=bs).iter_batches(batch_size=bs):
            pass
        t0 = time.perf_counter()
        n = 0
        for b in ray_dataset(spec, n_items=items, batch_size=bs, offset=10**6).iter_batches(
                batch_size=bs, batch_format="numpy", prefetch_batches=4):
            n += len(b["x"])
        return n / (time.perf_counter() - t0)
    finally:
        ray.shutdown()


def local_rate(size: int, items: int) -> float:
    from affvae.data.stream import local_batches, simulated_table

    spec = spec_for(size)
    bs = batch_size_for(size)
    table = simulated_table(spec, np.arange(items))
    t0 = time.perf_counter()
    n = sum(len(b["x"]) for b in local_batches(spec, table, bs))
    return n / (time.perf_counter() - t0)


def consume_rate(size: int, steps: int = 20) -> float:
    import torch

    from affvae.losses import loss_terms
    from affvae.model import AffinityVAE

    torch.manual_seed(0)
    filters = [8, 16, 32] if size <= 32 else [3, 6, 12, 24]
    bs = batch_size_for(size)
    model = AffinityVAE((size,) * 3, filters, latent_dims=8, pose_dims=3)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(bs, size, size, size)
    y = torch.randint(0, 8, (bs,))
    A = torch.eye(8)

    def step():
        recon, mu, logvar, pose, z = model(x)
        total, _ = loss_terms(x, recon, mu, logvar, z, y, A, beta=1.0, gamma=1.0)
        opt.zero_grad()
        total.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * bs / (time.perf_counter() - t0)


def _tree_rss_kib(pid: int) -> int:
    """Summed VmRSS of a process and all its descendants, from /proc."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                stack.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


STREAM_BUFFER_MIB = 128


def memory_child(size: int, items: int) -> None:
    """Stream ``items`` volumes through Ray Data, print the peak RSS of the process tree."""
    import ray

    from affvae.data.stream import ray_dataset

    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kib(os.getpid()))
            time.sleep(0.05)

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             object_store_memory=512 * 2**20)
    from ray.data import DataContext

    from affvae.data.stream import bound_stream_memory

    # the stream's buffer of rendered blocks is bounded (as in training), so memory
    # does not grow with the number of items streamed
    bound_stream_memory(STREAM_BUFFER_MIB)
    DataContext.get_current().enable_progress_bars = False
    threading.Thread(target=sample, daemon=True).start()
    bs = batch_size_for(size)
    n = 0
    checksum = 0.0
    t0 = time.perf_counter()
    for b in ray_dataset(spec_for(size), n_items=items, batch_size=bs).iter_batches(
            batch_size=bs, batch_format="numpy", prefetch_batches=4):
        n += len(b["x"])
        checksum += float(b["x"][:, 0, 0, 0].sum())
    seconds = time.perf_counter() - t0
    done.set()
    ray.shutdown()
    print(json.dumps({"items": n, "peak_rss_mib": peak[0] / 1024, "seconds": seconds}))


def memory_run(size: int, items: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(items), "--sizes", str(size)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1200, help="volumes per throughput measurement")
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--memory-items", type=int, default=1000, help="items of the 1x memory run (32^3)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.memory_child:
        memory_child(sizes[0], args.memory_child)
        return

    for size in sizes:
        items = args.items if size <= 32 else max(args.items // 4, 100)
        consume = consume_rate(size)
        local = local_rate(size, min(items, 200))
        r1 = ray_rate(size, items, 1)
        r2 = ray_rate(size, items, 2)
        print(f"{size}^3 (noise SNR 1, wedge +-60, batch {batch_size_for(size)}):")
        print(f"  training step consumes   {consume:8.1f} samples/s")
        print(f"  local render (no Ray)    {local:8.1f} volumes/s   ratio {local / consume:5.2f}")
        print(f"  Ray Data, 1 CPU          {r1:8.1f} volumes/s   ratio {r1 / consume:5.2f}")
        print(f"  Ray Data, 2 CPUs         {r2:8.1f} volumes/s   ratio {r2 / consume:5.2f}", flush=True)
    if not args.skip_memory:
        one = memory_run(32, args.memory_items)
        ten = memory_run(32, 10 * args.memory_items)
        print(f"memory, 32^3 stream: 1x {one['items']} items peak {one['peak_rss_mib']:.0f} MiB "
              f"({one['seconds']:.0f} s); 10x {ten['items']} items peak {ten['peak_rss_mib']:.0f} MiB "
              f"({ten['seconds']:.0f} s); ratio {ten['peak_rss_mib'] / one['peak_rss_mib']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
