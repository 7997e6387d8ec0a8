"""The benchmarks' allocator pin (bench/allocator.py). Pinned, glibc serves a block of up to
32 MiB from its heap (below the program break, ``sbrk(0)``), where a freed temporary is
reused without page faults, and does not give the heap's top back to the system when the
block is freed. Unpinned, a fresh process maps such a block (mmap) and unmaps it on free,
so the next one is page-faulted in anew."""
import os
import platform
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")

# In a process of its own: the pin would otherwise hold for the rest of the test run.
SCRIPT = """
import ctypes, ctypes.util
from allocator import pin_glibc_allocator
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
libc.sbrk.argtypes = [ctypes.c_ssize_t]
assert pin_glibc_allocator()
block = libc.malloc(16 << 20)
top = libc.sbrk(0)
libc.free(block)
print(int(block < top), int(libc.sbrk(0) == top))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_pinned_blocks_come_from_the_heap_and_stay():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=BENCH, capture_output=True,
                         text=True, check=True)
    from_heap, kept = out.stdout.split()
    assert from_heap == "1", "a 16 MiB block was mapped, not taken from the heap"
    assert kept == "1", "freeing the block gave the heap's top back to the system"
