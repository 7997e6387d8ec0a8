"""glibc's allocator pinned, so that no op's time depends on the heap's history.

By default glibc moves its mmap threshold and trims the top of the heap as memory is freed,
so whether a call's fresh multi-MB temporary (``torch.multinomial``'s cumulative sums, an
eager gradient) is page-faulted in anew on every call depends on what was allocated and
freed before. Seen here: ``torch.multinomial`` at N = 2^20 took ~7.4 ms with ~1000 page
faults per call when timed alternately with another op, and ~3.6 ms without faults alone.
Pinned (allocations up to 32 MiB come from the heap, which is never trimmed below 1 GiB),
such temporaries are faulted in once and reused, so every benchmark, ours and the
alternatives alike, times the work rather than the allocator's state. Allocations above
32 MiB (glibc's limit for the threshold) are still mapped and faulted in on every call.
"""
import ctypes
import ctypes.util
import platform

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def pin_glibc_allocator() -> bool:
    """Sets glibc's mmap and trim thresholds (``mallopt``); False where libc is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
                and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))

