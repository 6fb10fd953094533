"""The SOAP numbers quoted in affvae/affinity/soap.py and docs/soap.md, and their heatmap.

  .venv/bin/python benchmarks/soap_glyphs.py [docs/soap_glyphs.png]

Prints the raw and normalised off-diagonal statistics of the 12 paper glyphs
(64x64, default parameters), a few named pairs, and each glyph's similarity to its
own 30-degree rotated copy against the best other glyph.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from affvae.affinity.soap import DEFAULT_PARAMS, soap_cross, soap_descriptors
from affvae.transforms.glyphs import PAPER_GLYPHS, render_glyphs


def main(plot: str | None = None) -> None:
    g = list(PAPER_GLYPHS)
    n = len(g)
    upright = render_glyphs(g, np.zeros(n), 64)
    off = ~np.eye(n, dtype=bool)
    t = time.perf_counter()
    M = soap_cross(upright)
    dt = time.perf_counter() - t
    D = soap_descriptors(upright)
    U = D / np.linalg.norm(D, axis=1, keepdims=True)
    raw = (U @ U.T)[off]
    print(f"parameters: {DEFAULT_PARAMS.as_dict()}")
    print(f"raw cosine off-diagonal: min {raw.min():.3f} max {raw.max():.3f} mean {raw.mean():.3f}")
    o = M[off]
    print(f"normalised off-diagonal: min {o.min():.3f} max {o.max():.3f} mean {o.mean():.3f} "
          f"std {o.std():.3f}  ({dt:.2f} s)")
    ix = {c: i for i, c in enumerate(g)}
    for a, b in [("b", "d"), ("b", "p"), ("b", "x"), ("a", "e"), ("i", "j"), ("z", "x")]:
        print(f"  {a}-{b}: {M[ix[a], ix[b]]:.3f}")
    turned = render_glyphs(g, np.full(n, 30.0), 64)
    M2 = soap_cross(np.concatenate([upright, turned]))
    for i, c in enumerate(g):
        group = {"b", "d", "p"} if c in "bdp" else {c}
        others = [j for j in range(n) if g[j] not in group]
        best = max(M2[i, others].max(), M2[i, [n + j for j in others]].max())
        print(f"  {c} vs own 30-degree copy {M2[i, n + i]:.3f}, best other {best:.3f}")
    if plot:
        from affvae.plots import plot_matrix

        plot_matrix(M, g, plot, title="SOAP similarity, 12 paper glyphs (64x64, defaults)",
                    annotate=True, colorbar_label="similarity")
        print(f"wrote {plot}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
