"""Benchmark setup: glibc's allocator pinned (see ``allocator.py``)."""
import warnings

from allocator import pin_glibc_allocator

if not pin_glibc_allocator():
    warnings.warn("the allocator is not pinned (libc is not glibc, or mallopt refused): "
                  "times may depend on the heap's history")
