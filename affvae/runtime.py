"""Process-wide settings that make the numeric work faster: one idea, applied once per process.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB, its
dynamic ceiling on 64-bit) with a fresh ``mmap`` and unmaps it when freed, so each
tensor of that size faults in its pages anew: a batch of 32 volumes of 64^3 float32 is
33.5 MiB, and a 64^3 training step allocates several such activations and gradients
every step.  :func:`keep_large_blocks` raises the threshold so that freed large blocks
stay in the heap and are reused without page faults (measured on the 64^3 workload of
``benchmarks/train_throughput.py``: 16-24% more samples/s).  Peak memory is unchanged;
memory freed after a peak is kept by the process instead of returned to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done: list[bool] = []


def keep_large_blocks(threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap (glibc only); True if set.

    Idempotent and harmless elsewhere: on other C libraries it does nothing and says so.
    """
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
        except (OSError, AttributeError):  # not glibc (musl has no mallopt of these)
            ok = False
    _done.append(ok)
    return ok
