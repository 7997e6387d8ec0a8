"""Benchmark session setup: glibc's allocator pinned (see ``allocator.py``)."""
from allocator import pin_glibc_allocator

PINNED = pin_glibc_allocator()
