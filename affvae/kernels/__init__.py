"""Hand-written CPU kernels, compiled on first use for the machine they run on.

Four places where torch's own kernels leave much of a CPU unused:

* ``stride2.cpp`` (:func:`stride2`): the decoder's last stride-2 transposed convolution
  of a 64^3 model, which draws the single output channel at full size (3 -> 1 channels,
  32^3 -> 64^3, batch 25: forward and backward 37 ms by phases against 14 ms here,
  about a quarter of the whole training step), with GCC's portable vector types
  (AVX-512, AVX2 or NEON, whatever ``-march=native`` offers).  Used by
  :mod:`affvae.deconv`.
* ``normals.cpp`` (:func:`normals`): the counter-based noise of
  :func:`affvae.transforms.poses.item_normals` in one pass (32 items of 64^3: 3-10
  against 17-30 ms in torch ops, a fifth of a streamed proteins batch's render);
* ``planes.cpp`` (:func:`planes`): one step of the rotation by planes of
  :func:`affvae.transforms.augment.rotate`, the slices of an item sharing one table of
  neighbours and weights (32 volumes of 64^3: 6-7 against 9-14 ms a step);
* ``octahedral.cpp`` (:func:`octahedral`): the random cube symmetries of
  :func:`affvae.transforms.augment.random_octahedral` in one pass over a batch (25 x 64^3:
  2.7 against 7.2 ms, 7% of a training step of the 64^3 tetracubes).

Each module is compiled once per machine kind (about 25 s; the build folder is keyed by
the source, torch version and CPU flags, under ``$AFFVAE_KERNEL_CACHE`` or
``~/.cache/affvae/kernels``).  Where it cannot be built (no GCC, ``AFFVAE_CPU_KERNELS=0``)
the function returns ``None`` and its caller uses a pure-torch path that computes the
same numbers.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).parent
#: module -> (source, extra compiler flags)
MODULES = {
    "stride2": ("stride2.cpp", ()),
    # glibc's vector logf, cosf and sinf are called only under fast-math; the code has
    # no NaN or infinity to lose (its logs are of numbers in (0, 1])
    "normals": ("normals.cpp", ("-ffast-math", "-mprefer-vector-width=512")),
    "planes": ("planes.cpp", ("-mprefer-vector-width=512",)),
    "octahedral": ("octahedral.cpp", ()),
}
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


def build_name(module: str = "stride2") -> str:
    """A module's build name: a hash of its source and flags, torch's version and this
    CPU's flags (a ``-march=native`` build must not be loaded on another CPU sharing the cache)."""
    import torch

    source, flags = MODULES[module]
    h = hashlib.sha256((HERE / source).read_bytes())
    h.update(" ".join(flags).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_flags().encode())
    return f"affvae_{module}_{h.hexdigest()[:16]}"


def cache_dir() -> Path:
    return Path(os.environ.get("AFFVAE_KERNEL_CACHE", Path.home() / ".cache" / "affvae" / "kernels"))


def stride2():
    """The compiled stride-2 kernels (``up``, ``down``), or ``None`` where unavailable."""
    return _module("stride2")


def normals():
    """The compiled noise kernel (``item_normals``), or ``None`` where unavailable."""
    return _module("normals")


def planes():
    """The compiled plane rotation (``rotate_slices``), or ``None`` where unavailable."""
    return _module("planes")


def octahedral():
    """The compiled cube-symmetry kernel (``octahedral``), or ``None`` where unavailable."""
    return _module("octahedral")


def _module(module: str):
    if module in _loaded:
        return _loaded[module]
    built = None
    if enabled():
        try:
            built = _build(module)
        except Exception as e:  # no compiler, no ninja, a read-only cache: fall back, say why once
            warnings.warn(f"affvae: CPU kernels not built ({type(e).__name__}: {str(e).strip()[:300]}); "
                          f"{module} uses its pure-torch path (same results, slower)", stacklevel=3)
    _loaded[module] = built
    return built


def _build(module: str):
    from torch.utils.cpp_extension import load

    source, flags = MODULES[module]
    name = build_name(module)
    where = cache_dir() / name
    where.mkdir(parents=True, exist_ok=True)
    if not (where / f"{name}.so").exists():
        print(f"affvae: compiling the {module} CPU kernel once for this machine (about 25 s) in {where}",
              file=sys.stderr, flush=True)
    return load(name=name, sources=[str(HERE / source)], build_directory=str(where),
                extra_cflags=["-O3", "-march=native", "-fopenmp", *flags], extra_ldflags=["-fopenmp"],
                verbose=False)
