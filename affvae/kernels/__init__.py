"""Hand-written CPU kernels, compiled on first use for the machine they run on.

oneDNN's convolutions are slow for one layer of the 64^3 models: the decoder's last
stride-2 transposed convolution, which draws the single output channel at full size
(3 -> 1 channels, 32^3 -> 64^3, batch 25: forward and backward 37 ms by phases against
14 ms here, about a quarter of the whole training step).  ``stride2.cpp`` computes that
layer directly, with the compiler's portable vector types (AVX-512, AVX2 or NEON,
whatever ``-march=native`` offers).  See :mod:`affvae.deconv` for where it is used.

:func:`stride2` compiles the source once per machine kind (about 25 s; the build folder
is keyed by the source, torch version and CPU flags, under ``$AFFVAE_KERNEL_CACHE`` or
``~/.cache/affvae/kernels``) and returns the module, or ``None`` where it cannot be
built (no C++ compiler, ``AFFVAE_CPU_KERNELS=0``): callers then use their pure-torch
path, which computes the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("stride2.cpp")
_loaded: dict[str, object] = {}


def enabled() -> bool:
    """False when ``AFFVAE_CPU_KERNELS`` is ``0`` (or ``false``/``no``/``off``)."""
    return os.environ.get("AFFVAE_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def build_name() -> str:
    """The module's name: a hash of the source, torch's version and this CPU's flags (a
    ``-march=native`` build must not be loaded on another CPU sharing the cache)."""
    import torch

    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(torch.__version__.encode())
    h.update(_cpu_flags().encode())
    return f"affvae_stride2_{h.hexdigest()[:16]}"


def cache_dir() -> Path:
    return Path(os.environ.get("AFFVAE_KERNEL_CACHE", Path.home() / ".cache" / "affvae" / "kernels"))


def stride2():
    """The compiled stride-2 kernels (``up``, ``down``), or ``None`` where unavailable."""
    if "stride2" in _loaded:
        return _loaded["stride2"]
    module = None
    if enabled():
        try:
            module = _build()
        except Exception as e:  # no compiler, no ninja, a read-only cache: fall back, say why once
            warnings.warn(f"affvae: CPU kernels not built ({type(e).__name__}: {str(e).strip()[:300]}); "
                          "using the pure-torch layers (same results, slower at 64^3)", stacklevel=2)
    _loaded["stride2"] = module
    return module


def _build():
    from torch.utils.cpp_extension import load

    name = build_name()
    where = cache_dir() / name
    where.mkdir(parents=True, exist_ok=True)
    if not (where / f"{name}.so").exists():
        print(f"affvae: compiling the CPU kernels once for this machine (about 25 s) in {where}",
              file=sys.stderr, flush=True)
    return load(name=name, sources=[str(SOURCE)], build_directory=str(where),
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                verbose=False)
