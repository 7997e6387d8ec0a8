"""The CUDA implementation of every op, run on CPU tensors (for tests and development).

Each ``is_kernels`` op has a C++ CPU kernel and a CUDA kernel written in Python (Triton
kernels plus tensor ops). :func:`cuda_kernel` registers the CUDA one and remembers it, so that
:func:`cuda_path_on_cpu` can run it on CPU tensors too: inside that context every
``is_kernels`` op called with CPU tensors runs its CUDA implementation (the Triton kernels
under ``TRITON_INTERPRET=1``), and the Python wrappers (:class:`~is_kernels.SumTree`,
:class:`~is_kernels.AliasTable`, the autograd formulas) take their CUDA branches
(:func:`uses_cuda_path`): the same code, with the same (absence of) host syncs, as on a GPU.

Where CUDA leaves a result unspecified, the context picks one that the CPU would not:
``index_put_`` with a duplicated index keeps the *first* entry's value, a legal CUDA outcome
that the CPU's "last write wins" would hide.

:class:`LaunchCounter` counts what a piece of code costs on that path: Triton launches, aten
ops that launch a kernel (views and allocations do not) and aten ops that synchronise with
the host on CUDA (``.item()``, ``bool()``, ``nonzero``, ``torch.equal``, boolean indexing, ...).
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Callable, Dict, Iterator, Tuple, Union

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

__all__ = ["cuda_kernel", "cuda_path_on_cpu", "uses_cuda_path", "LaunchCounter",
           "in_foreign_dispatch_mode", "workspace", "float32_parts"]

# op name ("is_kernels::sum_tree_update") -> its CUDA implementation.
_CUDA_IMPLS: Dict[str, Callable] = {}
_enabled = False


def cuda_kernel(name: str) -> Callable[[Callable], Callable]:
    """Decorator: registers ``fn`` as the CUDA kernel of the op ``name`` and for
    :func:`cuda_path_on_cpu`."""
    def register(fn: Callable) -> Callable:
        torch.library.register_kernel(name, "cuda", fn)
        _CUDA_IMPLS[name] = fn
        return fn
    return register


def uses_cuda_path(t: Union[torch.Tensor, torch.device]) -> bool:
    """Whether code on ``t`` (a tensor, or a device) takes the CUDA path: CUDA, or the CPU
    inside :func:`cuda_path_on_cpu`."""
    device = t if isinstance(t, torch.device) else t.device
    return device.type == "cuda" or (_enabled and device.type == "cpu")


def _first_write_wins(func, args, kwargs):
    """``index_put_`` of distinct values at 1-D indices, applied so that, among duplicated
    indices, the first entry's value stays (CUDA leaves the choice open); None otherwise."""
    if func._schema.name not in ("aten::index_put_", "aten::index_put",
                                 "aten::_index_put_impl_"):
        return None
    indices, values = args[1], args[2]
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if accumulate or len(indices) != 1 or indices[0] is None or indices[0].dim() != 1 \
            or indices[0].dtype == torch.bool or values.dim() == 0 \
            or values.shape[0] != indices[0].shape[0]:
        return None
    return func(args[0], [indices[0].flip(0)], values.flip(0), *args[3:], **kwargs)


class _CudaPathMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = _CUDA_IMPLS.get(func._schema.name)
        if impl is not None:
            return impl(*args, **kwargs)
        reordered = _first_write_wins(func, args, kwargs)
        return reordered if reordered is not None else func(*args, **kwargs)


@contextlib.contextmanager
def cuda_path_on_cpu() -> Iterator[None]:
    """Inside this context, CPU tensors take the CUDA path of every ``is_kernels`` op and
    wrapper (see the module docstring). Needs ``TRITON_INTERPRET=1`` set before triton is
    first imported."""
    global _enabled
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("cuda_path_on_cpu: set TRITON_INTERPRET=1 before importing triton "
                           "(the Triton kernels run on CPU tensors only in the interpreter)")
    previous = _enabled
    _enabled = True
    try:
        with _CudaPathMode():
            yield
    finally:
        _enabled = previous


def float32_parts(x: float) -> Tuple[float, float, float]:
    """(hi, mid, lo), each a float32 value, with hi + mid + lo == x exactly in float64: how
    a float64 reaches a Triton kernel, whose float arguments are float32."""
    parts = []
    for _ in range(3):
        part = float(np.float32(x))
        parts.append(part)
        x -= part
    return parts[0], parts[1], parts[2]


_workspaces: Dict[Tuple[torch.device, int], torch.Tensor] = {}


def workspace(device: torch.device) -> torch.Tensor:
    """int32 [4] zeros on ``device``, one per device and stream, for kernels whose programs
    count themselves or OR flags in it (the last program resets what it used): [0] sum tree
    update flags, [1] its finished programs, [2] the cross-entropy's finished programs; [3]
    stays 0 (the status of an alias table built by the op alone)."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    ws = _workspaces.get((device, stream))
    if ws is None:
        ws = _workspaces[(device, stream)] = torch.zeros(4, dtype=torch.int32, device=device)
    return ws


# aten ops that launch no kernel: allocations, metadata, Python scalars wrapped as (CPU)
# tensors.
_NO_KERNEL = {"scalar_tensor", "empty", "empty_strided", "empty_like", "new_empty",
              "new_empty_strided", "detach", "lift_fresh", "alias", "_reshape_alias", "set_",
              "resize_",
              "_local_scalar_dense", "is_nonzero", "sym_size", "sym_stride", "sym_numel",
              "sym_storage_offset", "dim", "size", "stride", "is_same_size"}
# aten ops that synchronise with the host on CUDA (the data decides an output's size or a
# Python value).
_SYNCING = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select",
            "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
            "bincount", "histc", "allclose"}


def _syncs(func, args) -> bool:
    name = func._schema.name.split("::")[-1]
    if name in _SYNCING:
        return True
    if name == "repeat_interleave" and len(args) > 0 and isinstance(args[0], torch.Tensor) \
            and "output_size" not in str(func._schema):
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
    return False


def _copied(args, out) -> bool:
    """Whether an op that may alias its input (``to``, ``contiguous``, ``reshape``: seen
    whole, not decomposed, inside a CUDA implementation that the mode runs) copied it."""
    return isinstance(out, torch.Tensor) and len(args) > 0 \
        and isinstance(args[0], torch.Tensor) \
        and out.untyped_storage().data_ptr() != args[0].untyped_storage().data_ptr()


class LaunchCounter(TorchDispatchMode):
    """Counts, inside its context, the kernel launches and host syncs of the code run.

    Attributes (after the context): ``triton`` (Counter of Triton kernel names),
    ``aten`` (Counter of aten ops that launch a kernel), ``syncs`` (Counter of the syncing
    ops), and :attr:`launches` (Triton + aten). Use it around code on CUDA tensors, or as
    ``with LaunchCounter() as c, cuda_path_on_cpu():`` (the counter first): the counts are
    those of the CUDA path. Triton launches are counted under the interpreter only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.triton: Counter = Counter()
        self.aten: Counter = Counter()
        self.syncs: Counter = Counter()
        self._patched = None
        self._in_triton = False  # the interpreter's own copies of a launch's arguments

    @property
    def launches(self) -> int:
        return sum(self.triton.values()) + sum(self.aten.values())

    @property
    def num_syncs(self) -> int:
        return sum(self.syncs.values())

    def summary(self) -> Dict[str, object]:
        return {"launches": self.launches, "syncs": self.num_syncs,
                "triton": dict(self.triton), "aten": dict(self.aten),
                "sync_ops": dict(self.syncs)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        short = name.split("::")[-1]
        if _syncs(func, args):
            self.syncs[short] += 1
        out = func(*args, **kwargs)
        if name.startswith("aten::") and short not in _NO_KERNEL and not self._in_triton \
                and (not func.is_view or _copied(args, out)):
            self.aten[short] += 1
        return out

    def __enter__(self):
        try:
            from triton.runtime.interpreter import InterpretedFunction
        except ImportError:
            InterpretedFunction = None
        if InterpretedFunction is not None:
            run = InterpretedFunction.run
            counter = self

            def counted_run(fn_self, *args, **kwargs):
                counter.triton[fn_self.fn.__name__] += 1
                counter._in_triton = True
                try:
                    return run(fn_self, *args, **kwargs)
                finally:
                    counter._in_triton = False

            InterpretedFunction.run = counted_run
            self._patched = (InterpretedFunction, run)
        return super().__enter__()

    def __exit__(self, *exc):
        if self._patched is not None:
            cls, run = self._patched
            cls.run = run
            self._patched = None
        return super().__exit__(*exc)


def in_foreign_dispatch_mode() -> bool:
    """Whether a TorchDispatchMode other than this module's (e.g. a FakeTensorMode) is on."""
    return any(not isinstance(m, (_CudaPathMode, LaunchCounter))
               for m in _get_current_dispatch_mode_stack())
