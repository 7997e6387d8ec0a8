"""Whether these tests can run the Triton kernels on CPU tensors, and a marker for them.

Without a GPU, conftest sets ``TRITON_INTERPRET=1`` and the Triton kernels run on CPU tensors
through the interpreter. With a GPU they are compiled and need CUDA tensors, so the tests that
launch them on CPU tensors skip there (the CUDA tests cover them). triton < 3.7 (torch 2.11
pins 3.6) has an interpreter whose loops over runtime bounds fail under numpy >= 2.4
(``int()`` of a 1-element array): those runs skip, naming the fix.
"""
from __future__ import annotations

import os
from typing import Optional

import pytest


def _release(version: str) -> tuple:
    """(major, minor) of a version string such as '3.6.0' or '2.4.0rc1'."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0)
                 for part in version.split(".")[:2])


def _skip_reason() -> Optional[str]:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels take CPU tensors only under TRITON_INTERPRET=1 (no GPU)"
    try:
        import numpy
        import triton
    except ImportError as e:
        return f"needs triton (pip install triton): {e}"
    if _release(triton.__version__) < (3, 7) and _release(numpy.__version__) >= (2, 4):
        return (f"the interpreter of triton {triton.__version__} fails under numpy "
                f"{numpy.__version__} (fixed in triton 3.7); install numpy<2.4 to run these")
    return None


INTERPRETER_SKIP_REASON = _skip_reason()
INTERPRETER_WORKS = INTERPRETER_SKIP_REASON is None
# Marks a test that launches the Triton kernels on CPU tensors.
interpreted = pytest.mark.skipif(not INTERPRETER_WORKS, reason=INTERPRETER_SKIP_REASON or "")
