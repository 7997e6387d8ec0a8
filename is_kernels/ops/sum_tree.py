"""Sum tree: weighted sampling of indices from N changing weights (docs/algorithms.md,
"Weighted sampling").

Public API: :class:`SumTree`. It wraps three ``torch.ops.is_kernels`` custom ops, C++ on CPU
(``csrc/sum_tree.cpp``, where the layout is described) and Triton on CUDA
(``is_kernels/ops/sum_tree_triton.py``), with fake kernels for ``torch.compile``:

- ``sum_tree_build(leaves) -> inner``: the float64 inner nodes of a tree with these leaves;
- ``sum_tree_update(leaves!, inner!, indices, values)``: batched update in place;
- ``sum_tree_sample(leaves, inner, u) -> indices``: one descent per float64 uniform ``u``.

The ops never synchronise with the host on CUDA: the CUDA update kernel drops a batch with an
index out of range or an invalid value (it writes nothing), the CUDA build does not check
its values, and ``sum_tree_sample`` returns -1 for every draw of an all-zero tree (on every
device). The C++ CPU kernels check everything and raise before mutating. When a check costs
a sync, :class:`SumTree` decides (``check_values``) whether to raise at once or to record
the error on the device for :meth:`SumTree.raise_errors`.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .. import _C  # noqa: F401  (registers the ops and their CPU kernels)
from .cuda_path import cuda_kernel, uses_cuda_path
from .._checks import (MAX_SIZE, WEIGHT_DTYPES, ErrorFlag, can_sync, check_num_draws,
                       check_weight_dtype, max_leaf, raise_invalid_weights, weights_valid)

__all__ = ["SumTree"]


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


def check_tree(op: str, leaves: torch.Tensor, inner: torch.Tensor) -> None:
    _check_leaves(op, leaves)
    p = heap_size(leaves.shape[0])
    if inner.dim() != 1 or inner.shape[0] != p:
        raise ValueError(f"{op}: inner must have shape [{p}] for {leaves.shape[0]} leaves, "
                         f"got {tuple(inner.shape)}")
    if inner.dtype != torch.float64:
        raise TypeError(f"{op}: inner must be float64, got {inner.dtype}")
    if inner.device != leaves.device:
        raise ValueError(f"{op}: inner and leaves must be on the same device, "
                         f"got {inner.device} and {leaves.device}")


def _check_update(op: str, leaves, inner, indices, values) -> None:
    check_tree(op, leaves, inner)
    if indices.dtype != torch.int64:
        raise TypeError(f"{op}: indices must be int64, got {indices.dtype}")
    if indices.dim() != 1:
        raise ValueError(f"{op}: indices must be 1-D, got shape {tuple(indices.shape)}")
    if values.dtype != leaves.dtype:
        raise TypeError(f"{op}: values must have the dtype of the tree ({leaves.dtype}), "
                        f"got {values.dtype}")
    if values.shape != indices.shape:
        raise ValueError(f"{op}: values must have the shape of indices "
                         f"{tuple(indices.shape)}, got {tuple(values.shape)}")
    if indices.device != leaves.device or values.device != leaves.device:
        raise ValueError(f"{op}: indices and values must be on the tree's device "
                         f"{leaves.device}, got {indices.device} and {values.device}")


def _check_sample(op: str, leaves, inner, u) -> None:
    check_tree(op, leaves, inner)
    if u.dtype != torch.float64 or u.dim() != 1:
        raise ValueError(f"{op}: u must be 1-D float64, got {u.dtype} of shape "
                         f"{tuple(u.shape)}")
    if u.device != leaves.device:
        raise ValueError(f"{op}: u must be on the tree's device {leaves.device}, "
                         f"got {u.device}")


# ---- fake (meta) kernels ------------------------------------------------------------------

@torch.library.register_fake("is_kernels::sum_tree_build")
def _build_fake(leaves):
    _check_leaves("sum_tree_build", leaves)
    return leaves.new_empty((heap_size(leaves.shape[0]),), dtype=torch.float64)


@torch.library.register_fake("is_kernels::sum_tree_update")
def _update_fake(leaves, inner, indices, values):
    _check_update("sum_tree_update", leaves, inner, indices, values)


@torch.library.register_fake("is_kernels::sum_tree_sample")
def _sample_fake(leaves, inner, u):
    _check_sample("sum_tree_sample", leaves, inner, u)
    return u.new_empty(u.shape, dtype=torch.int64)


# ---- CUDA kernels: Triton, imported on first use ------------------------------------------

@cuda_kernel("is_kernels::sum_tree_build")
def _build_cuda(leaves):
    from . import sum_tree_triton

    _check_leaves("sum_tree_build", leaves)
    return sum_tree_triton.build(leaves)


def _update_code(indices: torch.Tensor, values: torch.Tensor, capacity: int) -> int:
    """Error code of a CPU update batch: 0 if valid, ``_BAD_INDEX`` if an index is out of
    range, else ``_BAD_VALUE`` if a value is invalid."""
    if not bool(((indices >= 0) & (indices < capacity)).all()):
        return _BAD_INDEX
    return 0 if bool(weights_valid(values, max_leaf(values.dtype, capacity))) else _BAD_VALUE


def _raise_update_errors(op: str, indices: torch.Tensor, values: torch.Tensor,
                         capacity: int) -> None:
    """Raises the error naming the first invalid entry of an update batch, if any (a sync)."""
    out = ~((indices >= 0) & (indices < capacity))
    if bool(out.any()):
        bad = int(out.nonzero()[0, 0])
        raise RuntimeError(f"{op}: indices[{bad}] = {int(indices[bad])} is out of range "
                           f"for a tree of capacity {capacity}")
    limit = max_leaf(values.dtype, capacity)
    if not bool(weights_valid(values, limit)):
        raise_invalid_weights(op, "values", values, limit)


@cuda_kernel("is_kernels::sum_tree_update")
def _update_cuda(leaves, inner, indices, values):
    from . import sum_tree_triton

    _check_update("sum_tree_update", leaves, inner, indices, values)
    sum_tree_triton.update(leaves, inner, indices, values)


@cuda_kernel("is_kernels::sum_tree_sample")
def _sample_cuda(leaves, inner, u):
    from . import sum_tree_triton

    _check_sample("sum_tree_sample", leaves, inner, u)
    return sum_tree_triton.sample(leaves, inner, u)


# ---- public API ---------------------------------------------------------------------------

# Error codes of SumTree's ErrorFlag.
_BAD_INDEX, _BAD_VALUE, _BAD_BUILD, _EMPTY = 1, 2, 3, 4
_MESSAGES = {
    _BAD_INDEX: "an update batch had an index out of range; that batch was dropped "
                "(the tree is unchanged by it)",
    _BAD_VALUE: "an update batch had a weight that is not finite and >= 0 (or too large for "
                "float64 sums); that batch was dropped (the tree is unchanged by it)",
    _BAD_BUILD: "build() got a weight that is not finite and >= 0 (or too large for float64 "
                "sums); the build was dropped (the tree is unchanged by it)",
    _EMPTY: "sample() was called on a tree whose weights are all zero; those draws are -1",
}


class SumTree:
    """A sum tree over ``capacity`` non-negative leaf weights (all 0 at construction).

    Draws are i.i.d. with ``P(i) = values[i] / total``; a leaf of weight 0 is never drawn.
    Inner nodes are float64, always recomputed from their children (never updated by
    deltas), so they equal a fresh rebuild bit for bit and cannot drift. Leaves are stored
    in ``dtype`` (float32 or float64). float64 leaves are at most float64 max /
    (2 capacity), so that no sum overflows (any finite float32 leaf is fine).

    Invalid input (an index out of range, a weight that is not finite and >= 0 or above that
    bound, sampling an all-zero tree with ``empty="raise"``) is handled per ``check_values``:

    - ``True`` (the CPU default): it raises at once, naming the offending entry, and the
      tree is unchanged. On CUDA this check is a host sync per call (except during CUDA
      graph capture, where it falls back to the ``False`` behaviour).
    - ``False`` (the CUDA default): nothing syncs. An invalid update or build writes
      nothing (the tree is unchanged), an all-zero tree draws -1, and the error is
      recorded on the device (the first one is kept) until :meth:`raise_errors` (a sync)
      raises and clears it; :meth:`state_dict` calls it too.

    Args:
        capacity: number of leaves, 1 <= capacity <= 2**31 - 1.
        device: where the tree lives (CPU: C++ kernels; CUDA: Triton kernels).
        dtype: dtype of the leaf weights, float32 or float64.
        check_values: see above; ``None`` means ``True`` on CPU and ``False`` on CUDA.
    """

    def __init__(self, capacity: int, *, device: Optional[torch.device | str] = None,
                 dtype: torch.dtype = torch.float32,
                 check_values: Optional[bool] = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"SumTree: capacity must be an int, got {type(capacity).__name__}")
        if not 1 <= capacity <= MAX_SIZE:
            raise ValueError(f"SumTree: capacity must be in [1, 2**31 - 1], got {capacity}")
        if dtype not in WEIGHT_DTYPES:
            raise TypeError(f"SumTree: dtype must be float32 or float64, got {dtype}")
        if check_values is not None and not isinstance(check_values, bool):
            raise TypeError(f"SumTree: check_values must be None or a bool, "
                            f"got {type(check_values).__name__}")
        self._leaves = torch.zeros(capacity, dtype=dtype, device=device)
        self._inner = torch.zeros(heap_size(capacity), dtype=torch.float64, device=device)
        self.check_values = (not uses_cuda_path(self._leaves) if check_values is None
                             else check_values)
        self._errors = ErrorFlag("SumTree", _MESSAGES, self.device)

    def _raise_now(self) -> bool:
        """Whether invalid input raises at once (else it is recorded on the device)."""
        return self.check_values and can_sync(self._leaves)

    @property
    def capacity(self) -> int:
        return self._leaves.shape[0]

    @property
    def device(self) -> torch.device:
        return self._leaves.device

    @property
    def dtype(self) -> torch.dtype:
        return self._leaves.dtype

    @property
    def values(self) -> torch.Tensor:
        """The leaf weights, ``[capacity]`` (the tree's own storage: do not modify it in
        place, use :meth:`update` or :meth:`build`)."""
        return self._leaves

    def update(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Sets ``values[indices] = values``; for a duplicated index the last one wins.

        Args:
            indices: 1-D integer tensor of leaf indices in ``[0, capacity)``, on the tree's
                device (int32 is widened to int64).
            values: weights (finite, >= 0) of the tree's dtype, shape of ``indices``.

        Invalid input changes nothing; it raises or is recorded per ``check_values``.
        """
        op = "SumTree.update"
        cuda = uses_cuda_path(self._leaves)
        if (self.check_values and not cuda and type(indices) is torch.Tensor
                and indices.dtype == torch.int64):
            # CPU fast path: the C++ kernel checks every argument itself before it writes
            # anything. Only a call that fails goes on to the checks below, which raise the
            # same error as they would have without this path.
            try:
                torch.ops.is_kernels.sum_tree_update(self._leaves, self._inner, indices, values)
                return
            except (RuntimeError, TypeError, ValueError):
                pass
        if not isinstance(indices, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"{op}: indices and values must be tensors")
        if indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: indices must be int64 or int32, got {indices.dtype}")
        indices = indices.long()
        _check_update(op, self._leaves, self._inner, indices, values)
        if self._raise_now():
            if cuda:  # the C++ kernel checks (and raises) itself
                _raise_update_errors(op, indices, values, self.capacity)
        elif cuda:  # the kernels check the batch and record its error code
            from . import sum_tree_triton

            sum_tree_triton.update(self._leaves, self._inner, indices, values,
                                   err=self._errors.code, codes=(_BAD_INDEX, _BAD_VALUE))
            return
        else:  # (reading a CPU tensor is no sync)
            code = _update_code(indices, values, self.capacity)
            self._errors.record(torch.tensor(code))
            if code != 0:
                return
        torch.ops.is_kernels.sum_tree_update(self._leaves, self._inner, indices, values)

    def build(self, values: torch.Tensor) -> None:
        """Replaces all leaves at once (``values``: ``[capacity]``, tree's dtype and device).
        Invalid weights are handled per ``check_values`` (see the class docstring)."""
        op = "SumTree.build"
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
        limit = max_leaf(self.dtype, self.capacity)
        if self._raise_now():
            if uses_cuda_path(values) and not bool(weights_valid(values, limit)):
                raise_invalid_weights(op, "values", values, limit)
        else:
            ok = weights_valid(values, limit)
            self._errors.record(torch.where(ok, 0, _BAD_BUILD))
            if not uses_cuda_path(values):
                if not bool(ok):  # reading a CPU tensor is no sync
                    return
            else:
                guard = ok
        inner = torch.ops.is_kernels.sum_tree_build(values)  # the C++ kernel checks values
        if guard is None:
            self._leaves.copy_(values)
            self._inner.copy_(inner)
        else:
            self._leaves.copy_(torch.where(guard, values, self._leaves))
            self._inner.copy_(torch.where(guard, inner, self._inner))

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
        check_num_draws(op, n)
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
        u = torch.rand(n, generator=generator, device=self.device, dtype=torch.float64)
        if record:
            from . import sum_tree_triton

            return sum_tree_triton.sample(self._leaves, self._inner, u, err=self._errors.code,
                                          empty_code=_EMPTY)
        return torch.ops.is_kernels.sum_tree_sample(self._leaves, self._inner, u)

    def raise_errors(self) -> None:
        """Raises the first error recorded on the device since the last call (only with
        ``check_values=False``, see the class docstring) and clears it. A host sync on CUDA."""
        self._errors.raise_errors()

    def state_dict(self) -> Dict[str, Any]:
        """``{"capacity": int, "values": leaf weights (a copy)}``. Calls :meth:`raise_errors`
        first."""
        self.raise_errors()
        return {"capacity": self.capacity, "values": self._leaves.clone()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the leaves of :meth:`state_dict` (moved to this tree's device) and
        rebuilds the inner nodes; capacity and dtype must match this tree."""
        op = "SumTree.load_state_dict"
        missing = {"capacity", "values"} - set(state_dict)
        if missing:
            raise KeyError(f"{op}: state_dict lacks {sorted(missing)}")
        if state_dict["capacity"] != self.capacity:
            raise ValueError(f"{op}: state_dict capacity {state_dict['capacity']} != this "
                             f"tree's capacity {self.capacity}")
        self.build(state_dict["values"].to(self.device))

    def __repr__(self) -> str:
        return (f"SumTree(capacity={self.capacity}, device={self.device}, dtype={self.dtype}, "
                f"check_values={self.check_values})")
