"""Benchmark: the batched FSC affinity matrix against a naive per-pair loop.

Workload (default): 50 classes of 64^3 volumes (smoothed random objects), the full
50x50 matrix of shell-weighted mean FSC.  Three timings in the same process:

* batched   affvae's path: each volume transformed once, per-shell cross-spectra
            as one matrix product per shell (affvae.affinity.metrics);
* naive     a per-pair loop as one would first write it: for each pair i < j,
            FFT both volumes and sum the FSC shell by shell with bincount;
* floor     the 50 forward FFTs alone (batched rfftn), which any method needs.

Prints the times, batched vs naive speed-up and batched / floor.  Targets: at
least 10x faster than naive, within 3x of the floor.

    python benchmarks/affinity.py [--classes 50] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def make_objects(n: int, size: int, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size, size, size))
    return np.stack([gaussian_filter(v, 2.0) for v in x])


def naive_fsc_matrix(X: np.ndarray) -> np.ndarray:
    n, size = len(X), X.shape[1]
    f = np.fft.fftfreq(size, 1.0 / size)
    r = np.sqrt(sum(g**2 for g in np.meshgrid(f, f, f, indexing="ij")))
    shell = np.round(r).astype(int).ravel()
    keep = shell <= size // 2
    shell = shell[keep]
    counts = np.bincount(shell)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            a = np.fft.fftn(X[i]).ravel()[keep]
            b = np.fft.fftn(X[j]).ravel()[keep]
            num = np.bincount(shell, (a * b.conj()).real)
            den = np.sqrt(np.bincount(shell, np.abs(a) ** 2) * np.bincount(shell, np.abs(b) ** 2))
            out[i, j] = out[j, i] = np.sum(counts * num / den) / counts.sum()
    return out


def best_of(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from affvae.affinity.metrics import similarity_matrix

    X = make_objects(args.classes, args.size)
    Xt = torch.from_numpy(X)
    print(f"{args.classes} classes of {args.size}^3, torch threads {torch.get_num_threads()}")

    t_floor, _ = best_of(lambda: torch.fft.rfftn(Xt, dim=(1, 2, 3)), args.repeats)
    t_batched, A = best_of(lambda: similarity_matrix(X, metric="fsc"), args.repeats)
    t_naive, B = best_of(lambda: naive_fsc_matrix(X), 1)
    err = float(np.abs(A - B).max())

    print(f"floor   ({args.classes} FFTs): {t_floor:8.3f} s")
    print(f"batched matrix     : {t_batched:8.3f} s")
    print(f"naive per-pair loop: {t_naive:8.3f} s")
    print(f"speed-up batched vs naive: {t_naive / t_batched:6.1f}x   (target >= 10x)")
    print(f"batched / floor          : {t_batched / t_floor:6.2f}x   (target <= 3x)")
    print(f"max |batched - naive|    : {err:.2e}")


if __name__ == "__main__":
    main()
