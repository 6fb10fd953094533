import ctypes
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# allocate, touch and free a 48 MiB tensor 20 times; print the page faults that took
# (torch's CPU allocator is glibc's malloc; numpy asks for huge pages, which hide the effect)
CHILD = """
import resource, sys
import torch
from affvae.runtime import keep_large_blocks
first = keep_large_blocks() if sys.argv[1] == "keep" else None
again = keep_large_blocks() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = torch.empty(12 * 2**20).fill_(1.0); del a
print(first, again, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_large_blocks_are_reused_without_page_faults():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        return out.stdout.split()

    kept, plain = run("keep"), run("plain")
    assert kept[:2] == ["True", "True"]  # set once; the second call says the same
    # 48 MiB is 12,288 pages, faulted in 20 times over by default (an mmap per block);
    # kept in the heap, far fewer (measured: 245,825 against 98,337)
    assert int(plain[2]) > 15 * 12288 and int(kept[2]) < 0.6 * int(plain[2])
