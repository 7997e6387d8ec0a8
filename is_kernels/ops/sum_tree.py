"""Sum and min trees over N changing values (docs/algorithms.md, "Weighted sampling";
docs/replay.md).

Public API: :class:`SumTree` (weighted sampling, range sums, lower-bound search over prefix
sums) and :class:`MinTree` (range minima). They wrap ``torch.ops.is_kernels`` custom ops, C++
on CPU (``csrc/sum_tree.cpp``, where the layout is described) and Triton on CUDA
(``is_kernels/ops/sum_tree_triton.py``), with fake kernels for ``torch.compile``:

- ``sum_tree_build(leaves) -> inner``: the float64 inner nodes of a tree with these leaves;
- ``sum_tree_update(leaves!, inner!, indices, values)``: batched update in place;
- ``sum_tree_sample(leaves, inner, u) -> indices``: one descent per float64 uniform ``u``;
- ``sum_tree_scan_lower_bound(leaves, inner, mass) -> indices``: one descent per float64
  mass (the leaf whose prefix-sum interval holds it);
- ``sum_tree_query(leaves, inner, start, end) -> sums``: float64 sums of leaf ranges;
- ``min_tree_build``, ``min_tree_update``, ``min_tree_query``: the same for minima (inner
  nodes in the leaf dtype);
- ``sum_tree_set_priorities(sum_leaves!, sum_inner!, min_leaves!, min_inner!, max_priority!,
  indices, priorities, alpha, eps, limit) -> max``: prioritized replay's update,
  ``(p + eps) ** alpha`` into a sum tree and a min tree at once (+inf in the min tree where it
  is 0), raising the float64 0-dim ``max_priority`` to the batch's largest ``p`` in place; on
  CUDA an invalid batch is dropped and its returned maximum is NaN;
- ``sum_tree_add_priorities(sum_leaves!, sum_inner!, min_leaves!, min_inner!, max_priority!,
  start, n, priorities?, alpha, eps) -> (slots, max)``: a ring buffer's add, the same update
  at the ``n`` slots ``(start + i) % capacity`` (returned), with the raw ``priorities`` or, if
  none, ``max_priority``;
- ``sum_tree_sample_weighted(sum_leaves, sum_inner, min_leaves, min_inner, n, beta,
  generator=None) -> (indices, weights)``: ``n`` draws with their importance weights
  ``(leaf / min) ** -beta``, from the uniforms ``torch.rand(n, dtype=float64,
  generator=generator)`` would give.

The ops never synchronise with the host on CUDA: the CUDA update kernels check the batch
themselves and drop one with an index out of range or an invalid value (they write nothing;
the trees' own update records its error code on the device), the CUDA builds do not check
their values, the CUDA queries return NaN for a range out of bounds and the CUDA
``sum_tree_scan_lower_bound`` returns -1 for a mass that is not finite and >= 0.
``sum_tree_sample`` and ``sum_tree_scan_lower_bound`` return -1 for every entry of an all-zero
tree (on every device). The C++ CPU kernels check everything and raise before mutating. When a
check costs a sync, the trees decide (``check_values``) whether to raise at once or to record
the error on the device for ``raise_errors()``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Union

import torch

from .. import _C  # noqa: F401  (registers the ops and their CPU kernels)
from .cuda_path import cuda_kernel, uses_cuda_path
from .._checks import (MAX_SIZE, WEIGHT_DTYPES, ErrorFlag, can_sync, canonical_device,
                       check_no_overlap, check_weight_dtype, int_at_least, max_leaf,
                       raise_invalid_weights, weights_valid)

__all__ = ["SumTree", "MinTree"]

Index = Union[int, torch.Tensor]


def heap_size(capacity: int) -> int:
    """Heap slots of a tree of ``capacity`` leaves: max(2, next power of two >= capacity)."""
    return max(2, 1 << (capacity - 1).bit_length())


def _check_leaves(op: str, leaves: torch.Tensor) -> None:
    check_weight_dtype(op, "leaves", leaves)
    if leaves.dim() != 1 or leaves.shape[0] < 1:
        raise ValueError(f"{op}: leaves must be a non-empty 1-D tensor, "
                         f"got shape {tuple(leaves.shape)}")
    if not leaves.is_contiguous():
        raise ValueError(f"{op}: leaves must be contiguous")


def _inner_dtype(leaves: torch.Tensor, is_min: bool) -> torch.dtype:
    """float64 for the sum tree's inner nodes, the leaf dtype for the min tree's."""
    return leaves.dtype if is_min else torch.float64


def check_tree(op: str, leaves: torch.Tensor, inner: torch.Tensor,
               is_min: bool = False) -> None:
    """Checks the leaves and inner nodes of a sum tree (or, with ``is_min``, a min tree)."""
    _check_leaves(op, leaves)
    p = heap_size(leaves.shape[0])
    if inner.dim() != 1 or inner.shape[0] != p:
        raise ValueError(f"{op}: inner must have shape [{p}] for {leaves.shape[0]} leaves, "
                         f"got {tuple(inner.shape)}")
    if inner.dtype != _inner_dtype(leaves, is_min):
        raise TypeError(f"{op}: inner must be {_inner_dtype(leaves, is_min)}, "
                        f"got {inner.dtype}")
    if inner.device != leaves.device:
        raise ValueError(f"{op}: inner and leaves must be on the same device, "
                         f"got {inner.device} and {leaves.device}")


def _check_index_tensor(op: str, name: str, t: torch.Tensor, leaves: torch.Tensor) -> None:
    if t.dtype != torch.int64:
        raise TypeError(f"{op}: {name} must be int64, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D, got shape {tuple(t.shape)}")
    if t.device != leaves.device:
        raise ValueError(f"{op}: {name} must be on the tree's device {leaves.device}, "
                         f"got {t.device}")


def _check_update(op: str, leaves, inner, indices, values, is_min: bool) -> None:
    check_tree(op, leaves, inner, is_min)
    _check_index_tensor(op, "indices", indices, leaves)
    if values.dtype != leaves.dtype:
        raise TypeError(f"{op}: values must have the dtype of the tree ({leaves.dtype}), "
                        f"got {values.dtype}")
    if values.shape != indices.shape:
        raise ValueError(f"{op}: values must have the shape of indices "
                         f"{tuple(indices.shape)}, got {tuple(values.shape)}")
    if values.device != leaves.device:
        raise ValueError(f"{op}: values must be on the tree's device {leaves.device}, "
                         f"got {values.device}")


def _check_query(op: str, leaves, inner, start, end, is_min: bool) -> None:
    check_tree(op, leaves, inner, is_min)
    _check_index_tensor(op, "start", start, leaves)
    _check_index_tensor(op, "end", end, leaves)
    if start.shape != end.shape:
        raise ValueError(f"{op}: start and end must have the same shape, "
                         f"got {tuple(start.shape)} and {tuple(end.shape)}")


def _check_descent(op: str, name: str, leaves, inner, x) -> None:
    check_tree(op, leaves, inner, False)
    if x.dtype != torch.float64 or x.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D float64, got {x.dtype} of shape "
                         f"{tuple(x.shape)}")
    if x.device != leaves.device:
        raise ValueError(f"{op}: {name} must be on the tree's device {leaves.device}, "
                         f"got {x.device}")


# ---- fake (meta) kernels ------------------------------------------------------------------

def _build_fake(op: str) -> Callable:
    def fake(leaves):
        _check_leaves(op, leaves)
        return leaves.new_empty((heap_size(leaves.shape[0]),),
                                dtype=_inner_dtype(leaves, op.startswith("min_tree")))
    return fake


def _update_fake(op: str) -> Callable:
    def fake(leaves, inner, indices, values):
        _check_update(op, leaves, inner, indices, values, op.startswith("min_tree"))
    return fake


def _query_fake(op: str) -> Callable:
    def fake(leaves, inner, start, end):
        is_min = op.startswith("min_tree")
        _check_query(op, leaves, inner, start, end, is_min)
        return start.new_empty(start.shape, dtype=_inner_dtype(leaves, is_min))
    return fake


for _tree in ("sum_tree", "min_tree"):
    torch.library.register_fake(f"is_kernels::{_tree}_build", _build_fake(f"{_tree}_build"))
    torch.library.register_fake(f"is_kernels::{_tree}_update", _update_fake(f"{_tree}_update"))
    torch.library.register_fake(f"is_kernels::{_tree}_query", _query_fake(f"{_tree}_query"))


@torch.library.register_fake("is_kernels::sum_tree_sample")
def _sample_fake(leaves, inner, u):
    _check_descent("sum_tree_sample", "u", leaves, inner, u)
    return u.new_empty(u.shape, dtype=torch.int64)


@torch.library.register_fake("is_kernels::sum_tree_scan_lower_bound")
def _scan_fake(leaves, inner, mass):
    _check_descent("sum_tree_scan_lower_bound", "mass", leaves, inner, mass)
    return mass.new_empty(mass.shape, dtype=torch.int64)


# ---- CUDA kernels: Triton, imported on first use ------------------------------------------

def _values_valid(op: str, values: torch.Tensor, capacity: int) -> torch.Tensor:
    """0-dim bool (no sync): sum tree weights finite, >= 0 and at most max_leaf; min tree
    values not NaN."""
    if op.startswith("min_tree"):
        return ~torch.isnan(values).any()
    return weights_valid(values, max_leaf(values.dtype, capacity))


def _build_cuda(op: str) -> Callable:
    def kernel(leaves):
        from . import sum_tree_triton

        _check_leaves(op, leaves)
        return sum_tree_triton.build(leaves, is_min=op.startswith("min_tree"))
    return kernel


def _update_cuda(op: str) -> Callable:
    def kernel(leaves, inner, indices, values):
        from . import sum_tree_triton

        _check_update(op, leaves, inner, indices, values, op.startswith("min_tree"))
        check_no_overlap(op, {"leaves": leaves, "inner": inner},
                         {"indices": indices, "values": values})
        sum_tree_triton.update(leaves, inner, indices, values,
                               is_min=op.startswith("min_tree"))
    return kernel


def _query_cuda(op: str) -> Callable:
    def kernel(leaves, inner, start, end):
        from . import sum_tree_triton

        _check_query(op, leaves, inner, start, end, op.startswith("min_tree"))
        return sum_tree_triton.query(leaves, inner, start, end,
                                     is_min=op.startswith("min_tree"))
    return kernel


for _tree in ("sum_tree", "min_tree"):
    cuda_kernel(f"is_kernels::{_tree}_build")(_build_cuda(f"{_tree}_build"))
    cuda_kernel(f"is_kernels::{_tree}_update")(_update_cuda(f"{_tree}_update"))
    cuda_kernel(f"is_kernels::{_tree}_query")(_query_cuda(f"{_tree}_query"))


@cuda_kernel("is_kernels::sum_tree_sample")
def _sample_cuda(leaves, inner, u):
    from . import sum_tree_triton

    _check_descent("sum_tree_sample", "u", leaves, inner, u)
    return sum_tree_triton.sample(leaves, inner, u)


@cuda_kernel("is_kernels::sum_tree_scan_lower_bound")
def _scan_cuda(leaves, inner, mass):
    from . import sum_tree_triton

    _check_descent("sum_tree_scan_lower_bound", "mass", leaves, inner, mass)
    return sum_tree_triton.scan_lower_bound(leaves, inner, mass)


# ---- prioritized replay: priorities into both trees, draws with their weights --------------

def _check_pair(op: str, sum_leaves, sum_inner, min_leaves, min_inner) -> None:
    check_tree(op, sum_leaves, sum_inner)
    check_tree(op, min_leaves, min_inner, is_min=True)
    if (min_leaves.shape != sum_leaves.shape or min_leaves.dtype != sum_leaves.dtype
            or min_leaves.device != sum_leaves.device):
        raise ValueError(f"{op}: the min tree must have the capacity, dtype and device of the "
                         "sum tree")


def _check_priority_args(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority):
    _check_pair(op, sum_leaves, sum_inner, min_leaves, min_inner)
    if (max_priority.dim() != 0 or max_priority.dtype != torch.float64
            or max_priority.device != sum_leaves.device):
        raise ValueError(f"{op}: max_priority must be a float64 0-dim tensor on the tree's "
                         f"device {sum_leaves.device}, got {max_priority.dtype} of shape "
                         f"{tuple(max_priority.shape)} on {max_priority.device}")


def _check_written(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority,
                   indices=None) -> None:
    """set_priorities and add_priorities on the CUDA path: the written tensors share no memory
    with each other or with ``indices`` (not in the fake kernels: fake tensors have no
    memory)."""
    check_no_overlap(op, {"sum_leaves": sum_leaves, "sum_inner": sum_inner,
                          "min_leaves": min_leaves, "min_inner": min_inner,
                          "max_priority": max_priority},
                     {} if indices is None else {"indices": indices})


def _check_raw_priorities(op: str, sum_leaves, priorities, shape) -> None:
    if priorities.dtype not in WEIGHT_DTYPES or priorities.shape != shape:
        raise ValueError(f"{op}: priorities must be float32 or float64 of the shape "
                         f"{tuple(shape)} of the slots, got {priorities.dtype} of shape "
                         f"{tuple(priorities.shape)}")
    if priorities.device != sum_leaves.device:
        raise ValueError(f"{op}: priorities must be on the tree's device {sum_leaves.device}, "
                         f"got {priorities.device}")


def _check_set_priorities(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, indices,
                          priorities):
    op = "sum_tree_set_priorities"
    _check_priority_args(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority)
    _check_index_tensor(op, "indices", indices, sum_leaves)
    _check_raw_priorities(op, sum_leaves, priorities, indices.shape)


@torch.library.register_fake("is_kernels::sum_tree_set_priorities")
def _set_priorities_fake(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, indices,
                         priorities, alpha, eps, limit):
    _check_set_priorities(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, indices,
                          priorities)
    return sum_leaves.new_empty((), dtype=torch.float64)


@cuda_kernel("is_kernels::sum_tree_set_priorities")
def _set_priorities_cuda(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, indices,
                         priorities, alpha, eps, limit):
    """The Triton priorities kernel, a sort and the two tree updates, no host sync: an
    invalid batch (an index out of [0, limit), a priority not finite and >= 0) becomes NaN
    values, which both update kernels drop, and its returned maximum is NaN (which leaves
    ``max_priority`` as it is)."""
    from . import sum_tree_triton

    _check_set_priorities(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, indices,
                          priorities)
    _check_written("sum_tree_set_priorities", sum_leaves, sum_inner, min_leaves, min_inner,
                   max_priority, indices)
    largest = sum_tree_triton.set_priorities(sum_leaves, sum_inner, min_leaves, min_inner,
                                             indices, priorities, alpha, eps, limit)[1]
    torch.fmax(max_priority, largest, out=max_priority)
    return largest


def _check_add_priorities(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, start, n,
                          priorities) -> None:
    op = "sum_tree_add_priorities"
    _check_priority_args(op, sum_leaves, sum_inner, min_leaves, min_inner, max_priority)
    capacity = sum_leaves.shape[0]
    if not 0 <= start < capacity:
        raise ValueError(f"{op}: start must be in [0, {capacity}), got {start}")
    if not 0 <= n <= capacity:
        raise ValueError(f"{op}: n must be in [0, {capacity}], got {n}")
    if priorities is not None:
        _check_raw_priorities(op, sum_leaves, priorities, (n,))


@torch.library.register_fake("is_kernels::sum_tree_add_priorities")
def _add_priorities_fake(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, start, n,
                         priorities, alpha, eps):
    _check_add_priorities(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, start, n,
                          priorities)
    return (sum_leaves.new_empty((n,), dtype=torch.int64),
            sum_leaves.new_empty((), dtype=torch.float64))


@cuda_kernel("is_kernels::sum_tree_add_priorities")
def _add_priorities_cuda(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, start, n,
                         priorities, alpha, eps):
    _check_add_priorities(sum_leaves, sum_inner, min_leaves, min_inner, max_priority, start, n,
                          priorities)
    _check_written("sum_tree_add_priorities", sum_leaves, sum_inner, min_leaves, min_inner,
                   max_priority)
    from . import sum_tree_triton

    raw = max_priority.expand(n) if priorities is None else priorities
    slots, largest = sum_tree_triton.set_priorities(sum_leaves, sum_inner, min_leaves,
                                                    min_inner, None, raw, alpha, eps,
                                                    sum_leaves.shape[0], first_slot=start)
    torch.fmax(max_priority, largest, out=max_priority)
    return slots, largest


def _check_sample_weighted(sum_leaves, sum_inner, min_leaves, min_inner, n) -> None:
    op = "sum_tree_sample_weighted"
    _check_pair(op, sum_leaves, sum_inner, min_leaves, min_inner)
    if not 0 <= n < 2**31:
        raise ValueError(f"{op}: n must be in [0, 2^31 - 1], got {n}")


@torch.library.register_fake("is_kernels::sum_tree_sample_weighted")
def _sample_weighted_fake(sum_leaves, sum_inner, min_leaves, min_inner, n, beta,
                          generator=None):
    _check_sample_weighted(sum_leaves, sum_inner, min_leaves, min_inner, n)
    return (sum_leaves.new_empty((n,), dtype=torch.int64),
            sum_leaves.new_empty((n,)))


@cuda_kernel("is_kernels::sum_tree_sample_weighted")
def _sample_weighted_cuda(sum_leaves, sum_inner, min_leaves, min_inner, n, beta,
                          generator=None):
    from . import sum_tree_triton

    _check_sample_weighted(sum_leaves, sum_inner, min_leaves, min_inner, n)
    u = torch.rand(n, generator=generator, device=sum_leaves.device, dtype=torch.float64)
    return sum_tree_triton.sample_weighted(sum_leaves, sum_inner, min_inner, u, beta)


# ---- error codes and their checks -----------------------------------------------------------

# Error codes of the trees' ErrorFlag.
_BAD_INDEX, _BAD_VALUE, _BAD_BUILD, _EMPTY, _BAD_RANGE, _BAD_MASS = 1, 2, 3, 4, 5, 6


def _update_code(op: str, indices: torch.Tensor, values: torch.Tensor, capacity: int) -> int:
    """Error code of a CPU update batch: 0 if valid, ``_BAD_INDEX`` if an index is out of
    range, else ``_BAD_VALUE`` if a value is invalid."""
    if not bool(((indices >= 0) & (indices < capacity)).all()):
        return _BAD_INDEX
    return 0 if bool(_values_valid(op, values, capacity)) else _BAD_VALUE


def _raise_invalid_values(op: str, name: str, values: torch.Tensor, capacity: int,
                          is_min: bool) -> None:
    """Raises the error naming the first invalid value (call only when there is one)."""
    if is_min:
        bad = int(torch.isnan(values).nonzero()[0, 0])
        raise RuntimeError(f"{op}: {name}[{bad}] = nan is not a valid value "
                           "(min tree values must not be NaN)")
    raise_invalid_weights(op, name, values, max_leaf(values.dtype, capacity))


def _raise_update_errors(op: str, indices: torch.Tensor, values: torch.Tensor,
                         capacity: int, is_min: bool) -> None:
    """Raises the error naming the first invalid entry of an update batch, if any (a sync)."""
    out = ~((indices >= 0) & (indices < capacity))
    if bool(out.any()):
        bad = int(out.nonzero()[0, 0])
        raise RuntimeError(f"{op}: indices[{bad}] = {int(indices[bad])} is out of range "
                           f"for a tree of capacity {capacity}")
    if not bool(_values_valid("min_tree" if is_min else "sum_tree", values, capacity)):
        _raise_invalid_values(op, "values", values, capacity, is_min)


def _range_error(start: torch.Tensor, end: torch.Tensor, capacity: int) -> torch.Tensor:
    """0-dim bool (no sync): whether some range is not within [0, capacity)."""
    return ~((start >= 0) & (start <= end) & (end <= capacity)).all()


def _raise_range_errors(op: str, start: torch.Tensor, end: torch.Tensor, capacity: int) -> None:
    bad = ~((start >= 0) & (start <= end) & (end <= capacity))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise RuntimeError(f"{op}: range [start[{i}], end[{i}]) = [{int(start[i])}, "
                           f"{int(end[i])}) is not within [0, {capacity}) (it needs "
                           "0 <= start <= end <= capacity)")


# ---- public API ---------------------------------------------------------------------------

_COMMON_MESSAGES = {
    _BAD_INDEX: "an update batch had an index out of range; that batch was dropped "
                "(the tree is unchanged by it)",
    _BAD_RANGE: "query() got a range that is not within [0, capacity) (0 <= start <= end "
                "<= capacity); its result is NaN",
}


def _as_index(op: str, name: str, x: Index, device: torch.device) -> torch.Tensor:
    """An int or integer tensor as an int64 tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: {name} must be an int or an int64/int32 tensor, "
                            f"got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{op}: {name} must be on the tree's device {device}, "
                             f"got {x.device}")
        return x.long()
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{op}: {name} must be an int or an integer tensor, "
                        f"got {type(x).__name__}")
    return torch.tensor(x, dtype=torch.int64, device=device)


class _Tree:
    """What :class:`SumTree` and :class:`MinTree` share: storage, update, build, range
    queries, error handling and state_dict. Subclasses set the ops' prefix and the fill."""

    _PREFIX: str  # "sum_tree" or "min_tree"
    _FILL: float  # the value of every leaf at construction
    _MESSAGES: Dict[int, str]

    def __init__(self, capacity: int, *, device: Optional[torch.device | str] = None,
                 dtype: torch.dtype = torch.float32,
                 check_values: Optional[bool] = None) -> None:
        name = type(self).__name__
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"{name}: capacity must be an int, got {type(capacity).__name__}")
        if not 1 <= capacity <= MAX_SIZE:
            raise ValueError(f"{name}: capacity must be in [1, 2**31 - 1], got {capacity}")
        if dtype not in WEIGHT_DTYPES:
            raise TypeError(f"{name}: dtype must be float32 or float64, got {dtype}")
        if check_values is not None and not isinstance(check_values, bool):
            raise TypeError(f"{name}: check_values must be None or a bool, "
                            f"got {type(check_values).__name__}")
        device = canonical_device(name, device)
        self._leaves = torch.full((capacity,), self._FILL, dtype=dtype, device=device)
        self._inner = torch.full((heap_size(capacity),), self._FILL, device=device,
                                 dtype=dtype if self._is_min else torch.float64)
        self.check_values = (not uses_cuda_path(self._leaves) if check_values is None
                             else check_values)
        self._errors = ErrorFlag(name, self._MESSAGES, self.device)

    @property
    def _is_min(self) -> bool:
        return self._PREFIX == "min_tree"

    def _op(self, what: str):
        return getattr(torch.ops.is_kernels, f"{self._PREFIX}_{what}")

    def _raise_now(self) -> bool:
        """Whether invalid input raises at once (else it is recorded on the device)."""
        return self.check_values and can_sync(self._leaves)

    @property
    def capacity(self) -> int:
        """The number of leaves."""
        return self._leaves.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the tree lives."""
        return self._leaves.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the leaves."""
        return self._leaves.dtype

    @property
    def values(self) -> torch.Tensor:
        """The leaf values, ``[capacity]`` (the tree's own storage: do not modify it in
        place, use :meth:`update` or :meth:`build`)."""
        return self._leaves

    @property
    def inner_nodes(self) -> torch.Tensor:
        """The inner nodes, ``[P]`` (heap positions 1..P-1, layout in csrc/sum_tree.cpp), for
        the ops that take a tree (the tree's own storage: read only)."""
        return self._inner

    def update(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Sets ``values[indices] = values``; for a duplicated index the last one wins.

        Args:
            indices: 1-D integer tensor of leaf indices in ``[0, capacity)``, on the tree's
                device (int32 is widened to int64).
            values: values of the tree's dtype, shape of ``indices`` (see the class
                docstring for which are valid).

        Invalid input changes nothing; it raises or is recorded per ``check_values``.
        """
        op = f"{type(self).__name__}.update"
        update_op = self._op("update")
        cuda = uses_cuda_path(self._leaves)
        if (self.check_values and not cuda and type(indices) is torch.Tensor
                and indices.dtype == torch.int64):
            # CPU fast path: the C++ kernel checks every argument itself before it writes
            # anything. Only a call that fails goes on to the checks below, which raise the
            # same error as they would have without this path.
            try:
                update_op(self._leaves, self._inner, indices, values)
                return
            except (RuntimeError, TypeError, ValueError):
                pass
        if not isinstance(indices, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"{op}: indices and values must be tensors")
        if indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: indices must be int64 or int32, got {indices.dtype}")
        indices = indices.long()
        _check_update(op, self._leaves, self._inner, indices, values, self._is_min)
        if self._raise_now():
            if cuda:  # the C++ kernel checks (and raises) itself
                _raise_update_errors(op, indices, values, self.capacity, self._is_min)
        elif cuda:  # the kernels check the batch and record its error code
            from . import sum_tree_triton

            sum_tree_triton.update(self._leaves, self._inner, indices, values,
                                   err=self._errors.code, codes=(_BAD_INDEX, _BAD_VALUE),
                                   is_min=self._is_min)
            return
        else:  # (reading a CPU tensor is no sync)
            code = _update_code(self._PREFIX, indices, values, self.capacity)
            self._errors.record(torch.tensor(code))
            if code != 0:
                return
        update_op(self._leaves, self._inner, indices, values)

    def build(self, values: torch.Tensor) -> None:
        """Replaces all leaves at once (``values``: ``[capacity]``, tree's dtype and device).
        Invalid values are handled per ``check_values`` (see the class docstring)."""
        op = f"{type(self).__name__}.build"
        check_weight_dtype(op, "values", values)
        if values.shape != self._leaves.shape:
            raise ValueError(f"{op}: values must have shape [{self.capacity}], "
                             f"got {tuple(values.shape)}")
        if values.dtype != self.dtype:
            raise TypeError(f"{op}: values must have the tree's dtype {self.dtype}, "
                            f"got {values.dtype}")
        if values.device != self.device:
            raise ValueError(f"{op}: values must be on the tree's device {self.device}, "
                             f"got {values.device}")
        values = values.contiguous()
        guard = None  # on CUDA without immediate checks: whether the build may land
        if self._raise_now():
            if uses_cuda_path(values) and not bool(
                    _values_valid(self._PREFIX, values, self.capacity)):
                _raise_invalid_values(op, "values", values, self.capacity, self._is_min)
        else:
            ok = _values_valid(self._PREFIX, values, self.capacity)
            self._errors.record(torch.where(ok, 0, _BAD_BUILD))
            if not uses_cuda_path(values):
                if not bool(ok):  # reading a CPU tensor is no sync
                    return
            else:
                guard = ok
        inner = self._op("build")(values)  # the C++ kernel checks values
        if guard is None:
            self._leaves.copy_(values)
            self._inner.copy_(inner)
        else:
            self._leaves.copy_(torch.where(guard, values, self._leaves))
            self._inner.copy_(torch.where(guard, inner, self._inner))

    def query(self, start: Index, end: Index) -> torch.Tensor:
        """The combination (sum, or minimum) of the leaves ``[start, end)``, for every pair of
        ``start`` and ``end`` (ints or integer tensors on the tree's device, broadcast
        together): a tensor of their broadcast shape (0-dim for two ints), on the tree's
        device, no host sync on CUDA with ``check_values=False``. An empty range gives the
        identity (0, or +inf). A range must satisfy ``0 <= start <= end <= capacity``;
        otherwise it raises or (per ``check_values``) is recorded and gives NaN."""
        op = f"{type(self).__name__}.query"
        s = _as_index(op, "start", start, self.device)
        e = _as_index(op, "end", end, self.device)
        if s.shape != e.shape:
            try:
                s, e = torch.broadcast_tensors(s, e)
            except RuntimeError:
                raise ValueError(f"{op}: start and end must broadcast together, got shapes "
                                 f"{tuple(s.shape)} and {tuple(e.shape)}") from None
        shape = s.shape
        s, e = s.reshape(-1).contiguous(), e.reshape(-1).contiguous()
        if self._raise_now():
            if uses_cuda_path(s):  # the C++ kernel checks (and raises) itself
                _raise_range_errors(op, s, e, self.capacity)
        elif uses_cuda_path(s):  # one kernel: NaN for a bad range, and its code recorded
            from . import sum_tree_triton

            return sum_tree_triton.query(self._leaves, self._inner, s, e, is_min=self._is_min,
                                         err=self._errors.code,
                                         bad_code=_BAD_RANGE).reshape(shape)
        else:
            bad = _range_error(s, e, self.capacity)
            self._errors.record(torch.where(bad, _BAD_RANGE, 0))
            if bool(bad):
                nan = torch.full(shape, math.nan, dtype=self._inner.dtype)
                ok = (s >= 0) & (s <= e) & (e <= self.capacity)
                s, e = torch.where(ok, s, 0), torch.where(ok, e, 0)
                return torch.where(ok.reshape(shape),
                                   self._op("query")(self._leaves, self._inner, s, e)
                                   .reshape(shape), nan)
        return self._op("query")(self._leaves, self._inner, s, e).reshape(shape)

    def raise_errors(self) -> None:
        """Raises the first error recorded on the device since the last call (only with
        ``check_values=False``, see the class docstring) and clears it. A host sync on CUDA."""
        self._errors.raise_errors()

    def state_dict(self) -> Dict[str, Any]:
        """``{"capacity": int, "values": leaf values (a copy)}``. Calls :meth:`raise_errors`
        first."""
        self.raise_errors()
        return {"capacity": self.capacity, "values": self._leaves.clone()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the leaves of :meth:`state_dict` (moved to this tree's device) and
        rebuilds the inner nodes; capacity and dtype must match this tree."""
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{op}: state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"capacity", "values"} - set(state_dict)
        if missing:
            raise KeyError(f"{op}: state_dict lacks {sorted(missing)}")
        if type(state_dict["capacity"]) is not int or state_dict["capacity"] != self.capacity:
            raise ValueError(f"{op}: state_dict['capacity'] is {state_dict['capacity']!r}, this "
                             f"tree has {self.capacity}")
        values = state_dict["values"]
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"{op}: state_dict['values'] must be a torch.Tensor, "
                            f"got {type(values).__name__}")
        self.build(values.to(self.device))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(capacity={self.capacity}, device={self.device}, "
                f"dtype={self.dtype}, check_values={self.check_values})")


class SumTree(_Tree):
    """A sum tree over ``capacity`` non-negative leaf weights (all 0 at construction).

    Draws are i.i.d. with ``P(i) = values[i] / total``; a leaf of weight 0 is never drawn.
    Inner nodes are float64, always recomputed from their children (never updated by
    deltas), so they equal a fresh rebuild bit for bit and cannot drift. Leaves are stored
    in ``dtype`` (float32 or float64). float64 leaves are at most float64 max /
    (2 capacity), so that no sum overflows (any finite float32 leaf is fine).

    :meth:`query` gives float64 range sums, :meth:`scan_lower_bound` the leaf whose
    prefix-sum interval holds a given mass (what cpprb and TorchRL call "find prefix sum
    index"; :meth:`sample` is it at ``u * total``).

    Invalid input (an index out of range, a weight that is not finite and >= 0 or above that
    bound, a range out of bounds, a mass that is not finite and >= 0, sampling an all-zero
    tree with ``empty="raise"``) is handled per ``check_values``:

    - ``True`` (the CPU default): it raises at once, naming the offending entry, and the
      tree is unchanged. On CUDA this check is a host sync per call (except during CUDA
      graph capture, where it falls back to the ``False`` behaviour).
    - ``False`` (the CUDA default): nothing syncs. An invalid update or build writes
      nothing (the tree is unchanged), an all-zero tree draws -1, a bad range sums to NaN,
      a bad mass finds -1, and the error is recorded on the device (the first one is kept)
      until :meth:`raise_errors` (a sync) raises and clears it; :meth:`state_dict` calls it
      too.

    Args:
        capacity: number of leaves, 1 <= capacity <= 2**31 - 1.
        device: where the tree lives (CPU: C++ kernels; CUDA: Triton kernels).
        dtype: dtype of the leaf weights, float32 or float64.
        check_values: see above; ``None`` means ``True`` on CPU and ``False`` on CUDA.
    """

    _PREFIX = "sum_tree"
    _FILL = 0.0
    _MESSAGES = {
        **_COMMON_MESSAGES,
        _BAD_VALUE: "an update batch had a weight that is not finite and >= 0 (or too large "
                    "for float64 sums); that batch was dropped (the tree is unchanged by it)",
        _BAD_BUILD: "build() got a weight that is not finite and >= 0 (or too large for "
                    "float64 sums); the build was dropped (the tree is unchanged by it)",
        _EMPTY: "sample() was called on a tree whose weights are all zero; those draws are -1",
        _BAD_MASS: "scan_lower_bound() got a mass that is not finite and >= 0; its index "
                   "is -1",
    }

    def total(self) -> torch.Tensor:
        """Sum of all weights: a float64 0-dim tensor on the tree's device (no host sync)."""
        return self._inner[1].clone()

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               empty: str = "raise") -> torch.Tensor:
        """``n`` i.i.d. leaf indices (int64 ``[n]``) with ``P(i) = values[i] / total``.

        Uniforms come from ``generator`` (default: the device's default generator), so the
        same seed gives the same draws on the same device.

        Args:
            empty: what an all-zero tree gives. ``"raise"``: an error, per ``check_values``
                (at once, a sync on CUDA; or -1 draws and a recorded error).
                ``"minus_one"``: every draw is -1, with no error and no sync on any device.
        """
        op = "SumTree.sample"
        n = int_at_least(op, "n", n, 0)
        if empty not in ("raise", "minus_one"):
            raise ValueError(f"{op}: empty must be 'raise' or 'minus_one', got {empty!r}")
        record = False  # whether the sample kernel records an all-zero tree
        if empty == "raise":
            if self._raise_now():
                if not self._inner[1].item() > 0:  # (fewer torch ops than bool(inner[1] > 0))
                    raise RuntimeError(f"{op}: all weights are zero, there is nothing to "
                                       "sample (pass empty='minus_one' to get -1 draws)")
            elif uses_cuda_path(self._leaves):
                record = True
            else:
                self._errors.record(torch.where(self._inner[1] > 0, 0, _EMPTY))
        u = torch.rand((n,), generator=generator, device=self.device, dtype=torch.float64)
        if record:
            from . import sum_tree_triton

            return sum_tree_triton.sample(self._leaves, self._inner, u, err=self._errors.code,
                                          empty_code=_EMPTY)
        return torch.ops.is_kernels.sum_tree_sample(self._leaves, self._inner, u)

    def scan_lower_bound(self, mass: Union[float, torch.Tensor]) -> torch.Tensor:
        """For every mass ``m`` (a float, or a real tensor on the tree's device, of any
        shape), the leaf ``i`` of weight > 0 with ``prefix(i - 1) <= m < prefix(i)``, where
        ``prefix(i)`` is the sum of the leaves ``0..i`` (the same descent as :meth:`sample`
        at ``m = u * total``). A mass ``>= total`` gives the last leaf of weight > 0 (so a
        mass rounded up to the total, as ``u * total`` in float32 can be, still finds a
        leaf); an all-zero tree gives -1. Returns int64 of the shape of ``mass`` (0-dim for
        a float). Masses must be finite and >= 0 (else: per ``check_values``)."""
        op = "SumTree.scan_lower_bound"
        if isinstance(mass, torch.Tensor):
            if not (mass.is_floating_point() or mass.dtype in (torch.int32, torch.int64)):
                raise TypeError(f"{op}: mass must be a real tensor, got {mass.dtype}")
            if mass.device != self.device:
                raise ValueError(f"{op}: mass must be on the tree's device {self.device}, "
                                 f"got {mass.device}")
            m = mass
        elif isinstance(mass, (int, float)) and not isinstance(mass, bool):
            m = torch.tensor(float(mass), dtype=torch.float64, device=self.device)
        else:
            raise TypeError(f"{op}: mass must be a float or a tensor, got "
                            f"{type(mass).__name__}")
        shape = m.shape
        if not self._raise_now() and uses_cuda_path(m):
            # One kernel: it reads any real dtype, and records a bad mass.
            from . import sum_tree_triton

            return sum_tree_triton.scan_lower_bound(
                self._leaves, self._inner, m.reshape(-1), err=self._errors.code,
                bad_code=_BAD_MASS).reshape(shape)
        m = m.to(torch.float64).reshape(-1).contiguous()
        if not self._raise_now():
            ok = (torch.isfinite(m) & (m >= 0)).all()
            self._errors.record(torch.where(ok, 0, _BAD_MASS))
            if not bool(ok):  # (no sync on CPU)
                good = torch.isfinite(m) & (m >= 0)
                out = torch.ops.is_kernels.sum_tree_scan_lower_bound(
                    self._leaves, self._inner, torch.where(good, m, 0.0))
                return torch.where(good, out, -1).reshape(shape)
        elif uses_cuda_path(m):  # the C++ kernel checks (and raises) itself
            bad = ~(torch.isfinite(m) & (m >= 0))
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise RuntimeError(f"{op}: mass[{i}] = {float(m[i])} is not finite and >= 0")
        return torch.ops.is_kernels.sum_tree_scan_lower_bound(self._leaves, self._inner,
                                                              m).reshape(shape)


class MinTree(_Tree):
    """A min tree over ``capacity`` leaf values (all +inf at construction): range minima in
    O(log N), e.g. the smallest priority of a prioritized replay buffer.

    Inner nodes have the leaf dtype (a minimum is exact) and are always recomputed from their
    children, so they equal a fresh rebuild bit for bit. Any value but NaN is valid, +inf
    included (an empty slot). Same batched update (last duplicate wins), error handling
    (``check_values``), range :meth:`query` and state_dict as :class:`SumTree`.

    Args:
        capacity: number of leaves, 1 <= capacity <= 2**31 - 1.
        device: where the tree lives (CPU: C++ kernels; CUDA: Triton kernels).
        dtype: dtype of the leaf values, float32 or float64.
        check_values: as for :class:`SumTree`; ``None`` means ``True`` on CPU and ``False``
            on CUDA.
    """

    _PREFIX = "min_tree"
    _FILL = math.inf
    _MESSAGES = {
        **_COMMON_MESSAGES,
        _BAD_VALUE: "an update batch had a NaN value; that batch was dropped (the tree is "
                    "unchanged by it)",
        _BAD_BUILD: "build() got a NaN value; the build was dropped (the tree is unchanged "
                    "by it)",
    }

    def min(self) -> torch.Tensor:
        """Minimum of all values: a 0-dim tensor of the tree's dtype on its device (no host
        sync)."""
        return self._inner[1].clone()
