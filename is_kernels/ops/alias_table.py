"""Alias table: O(N) build, O(1) i.i.d. draws from fixed weights (docs/algorithms.md,
"Weighted sampling").

Public API: :class:`AliasTable`. It wraps two ``torch.ops.is_kernels`` custom ops, C++ on
CPU (``csrc/alias_table.cpp``, where the method is described) and Triton on CUDA
(``is_kernels/ops/alias_table_triton.py``), with fake kernels for ``torch.compile``. The items
are taken in groups of ``group_size`` consecutive items; the alias table is built over the
``m = ceil(N / group_size)`` group sums, and a draw picks a group from it, then an item of
the group by a walk over its weights:

- ``alias_table_build(weights, group_size) -> (prob, alias, sums)``: the float64 ``[m]``
  acceptance thresholds and int32 ``[m]`` aliases of the groups, and their float64 ``[m]``
  sums (empty for ``group_size`` 1, whose draws need none);
- ``alias_table_sample(prob, alias, sums, weights, u, group_size) -> indices``: ``u`` is
  float64 ``[3, n]`` (row 0 picks the bucket, row 1 decides between the bucket's group and
  its alias, row 2 the item within the group).

The CUDA ops never sync (the CUDA build does not check its weights); the C++ CPU build
checks and raises. :class:`AliasTable` decides with ``check_values`` whether invalid
weights raise at once (a host sync on CUDA) or are recorded on the device.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _C  # noqa: F401  (registers the ops and their CPU kernels)
from .cuda_path import cuda_kernel, uses_cuda_path
from .._checks import (MAX_SIZE, ErrorFlag, can_sync, check_weight_dtype, int_at_least,
                       raise_invalid_weights, weights_valid)

__all__ = ["AliasTable"]


# Groups of 16 items: a walk reads one 64-byte line of float32 weights.
DEFAULT_GROUP_SIZE = 16
MAX_GROUP_SIZE = 1024


def num_groups(n: int, group_size: int) -> int:
    return -(-n // group_size)


def _check_group_size(op: str, group_size) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"{op}: group_size must be an int, got {type(group_size).__name__}")
    if not 1 <= group_size <= MAX_GROUP_SIZE:
        raise ValueError(f"{op}: group_size must be in [1, {MAX_GROUP_SIZE}], got {group_size}")


def _check_weights(op: str, weights: torch.Tensor, group_size: int) -> None:
    check_weight_dtype(op, "weights", weights)
    if weights.dim() != 1 or weights.shape[0] < 1:
        raise ValueError(f"{op}: weights must be a non-empty 1-D tensor, "
                         f"got shape {tuple(weights.shape)}")
    if weights.shape[0] > MAX_SIZE:
        raise ValueError(f"{op}: weights may have at most 2^31 - 1 entries, "
                         f"got {weights.shape[0]}")
    _check_group_size(op, group_size)


def _check_sample(op: str, prob, alias, sums, weights, u, group_size) -> None:
    _check_group_size(op, group_size)
    if prob.dim() != 1 or prob.shape[0] < 1 or prob.dtype != torch.float64:
        raise ValueError(f"{op}: prob must be a non-empty 1-D float64 tensor, got "
                         f"{prob.dtype} of shape {tuple(prob.shape)}")
    m = prob.shape[0]
    if alias.dtype != torch.int32 or alias.shape != prob.shape:
        raise ValueError(f"{op}: alias must be an int32 tensor of shape {tuple(prob.shape)}, "
                         f"got {alias.dtype} of shape {tuple(alias.shape)}")
    sums_size = 0 if group_size == 1 else m
    if sums.dtype != torch.float64 or tuple(sums.shape) != (sums_size,):
        raise ValueError(f"{op}: sums must be a float64 tensor of shape [{sums_size}], got "
                         f"{sums.dtype} of shape {tuple(sums.shape)}")
    check_weight_dtype(op, "weights", weights)
    if weights.dim() != 1 or num_groups(weights.shape[0], group_size) != m:
        raise ValueError(f"{op}: weights must be a 1-D tensor in {m} groups of {group_size}, "
                         f"got shape {tuple(weights.shape)}")
    if u.dtype != torch.float64 or u.dim() != 2 or u.shape[0] != 3:
        raise ValueError(f"{op}: u must be float64 of shape [3, n], got {u.dtype} of shape "
                         f"{tuple(u.shape)}")
    if any(t.device != prob.device for t in (alias, sums, weights, u)):
        raise ValueError(f"{op}: alias, sums, weights and u must be on the table's device "
                         f"{prob.device}, got {alias.device}, {sums.device}, "
                         f"{weights.device} and {u.device}")


@torch.library.register_fake("is_kernels::alias_table_build")
def _build_fake(weights, group_size):
    _check_weights("alias_table_build", weights, group_size)
    m = num_groups(weights.shape[0], group_size)
    return (weights.new_empty((m,), dtype=torch.float64),
            weights.new_empty((m,), dtype=torch.int32),
            weights.new_empty((0 if group_size == 1 else m,), dtype=torch.float64))


@torch.library.register_fake("is_kernels::alias_table_sample")
def _sample_fake(prob, alias, sums, weights, u, group_size):
    _check_sample("alias_table_sample", prob, alias, sums, weights, u, group_size)
    return u.new_empty((u.shape[1],), dtype=torch.int64)


@cuda_kernel("is_kernels::alias_table_build")
def _build_cuda(weights, group_size):
    from . import alias_table_triton

    _check_weights("alias_table_build", weights, group_size)
    return alias_table_triton.build(weights, group_size)[:3]


@cuda_kernel("is_kernels::alias_table_sample")
def _sample_cuda(prob, alias, sums, weights, u, group_size):
    from . import alias_table_triton

    _check_sample("alias_table_sample", prob, alias, sums, weights, u, group_size)
    return alias_table_triton.sample(prob, alias, sums, weights, u, group_size)


# Error codes of AliasTable's ErrorFlag.
_BAD_WEIGHT, _ALL_ZERO = 1, 2
_MESSAGES = {
    _BAD_WEIGHT: "the weights had an entry that is not finite and >= 0; every draw is -1",
    _ALL_ZERO: "all weights are zero, there is nothing to sample; every draw is -1",
}


class AliasTable:
    """Walker/Vose alias table of fixed weights: i.i.d. draws with ``P(i) = w_i / sum(w)``.

    The items are taken in groups of ``group_size``: the table is built in O(N / group_size)
    over the groups' sums (parallel, see ``csrc/alias_table.cpp``) after one pass over the
    weights, and a draw costs three uniforms, one table lookup and a walk over the weights
    of one group (a 64-byte line of float32 weights at the default 16). An item of weight 0
    is never drawn.

    The table keeps a reference to ``weights`` (no copy): modifying them in place afterwards
    makes :meth:`sample` raise. The check reads autograd's version counter, which writes
    through ``.data``, ``.numpy()`` or DLPack do not advance: after such a write the draws
    follow neither the old nor the new weights (they stay in ``[0, N)``), so build a new table
    instead.

    Args:
        weights: 1-D float32/float64 tensor of finite weights >= 0, not all 0, at most
            2**31 - 1 entries. The table lives on its device.
        group_size: items per group, in [1, 1024] (default 16). Larger groups make the build
            cheaper and the draws dearer; 1 is the plain alias table (the fastest draws).
        check_values: invalid weights (not finite and >= 0, or all 0) raise at once with
            ``True`` (a host sync on CUDA; during CUDA graph capture it falls back to
            ``False``). With ``False`` nothing syncs: every draw of such a table is -1 and
            the error is recorded on the device until :meth:`raise_errors` (a sync).
            ``None`` (default): ``True`` on CPU, ``False`` on CUDA.
    """

    def __init__(self, weights: torch.Tensor, *, group_size: int = DEFAULT_GROUP_SIZE,
                 check_values: Optional[bool] = None) -> None:
        op = "AliasTable"
        _check_weights(op, weights, group_size)
        if check_values is not None and not isinstance(check_values, bool):
            raise TypeError(f"{op}: check_values must be None or a bool, "
                            f"got {type(check_values).__name__}")
        self.check_values = not uses_cuda_path(weights) if check_values is None \
            else check_values
        self.group_size = group_size
        # Without immediate checks: the recorded error, and the table's status (a device
        # int, 0 if the weights are valid: the draws are -1 otherwise, without a sync).
        self._errors: Optional[ErrorFlag] = None
        self._status: Optional[torch.Tensor] = None
        weights = weights.detach().contiguous()
        self._weights = weights
        self._version = weights._version
        if self.check_values and can_sync(weights):
            if uses_cuda_path(weights):  # the C++ kernel checks (and raises) itself
                if not bool(weights_valid(weights)):
                    raise_invalid_weights(op, "weights", weights)
                if not bool(weights.sum() > 0):
                    raise RuntimeError(f"{op}: all weights are zero, there is nothing to "
                                       "sample")
        elif uses_cuda_path(weights):  # the build kernels check and record
            from . import alias_table_triton

            self._errors = ErrorFlag(op, _MESSAGES, weights.device)
            self._prob, self._alias, self._sums, self._status = alias_table_triton.build(
                weights, group_size, err=self._errors.code, codes=(_BAD_WEIGHT, _ALL_ZERO))
            return
        else:  # (reading a CPU tensor is no sync)
            code = 0 if bool(weights_valid(weights)) else _BAD_WEIGHT
            code = code or (0 if bool(weights.sum() > 0) else _ALL_ZERO)
            self._errors = ErrorFlag(op, _MESSAGES, weights.device)
            self._errors.record(torch.tensor(code))
            self._status = torch.tensor(code, dtype=torch.int32)
            # An invalid table is built from ones (its draws are all -1).
            weights = torch.ones_like(weights) if code else weights
        self._prob, self._alias, self._sums = torch.ops.is_kernels.alias_table_build(
            weights, group_size)

    @property
    def device(self) -> torch.device:
        """Where the table and its draws live."""
        return self._prob.device

    def __len__(self) -> int:
        """The number of items N."""
        return self._weights.shape[0]

    def _check_unmodified(self, op: str) -> None:
        if self._weights._version != self._version:
            raise RuntimeError(f"{op}: the weights were modified in place after the table "
                               "was built (the table reads them); build a new table")

    @property
    def probs(self) -> torch.Tensor:
        """The probabilities the draws follow (float64 ``[N]``): ``w / sum(w)`` up to float64
        rounding. Read from the table: bucket ``k`` gives ``prob[k] / m`` to group ``k`` and
        ``(1 - prob[k]) / m`` to group ``alias[k]``, and a group shares its mass among its
        items in proportion to their weights."""
        self._check_unmodified("AliasTable.probs")
        mass = self._prob.clone()
        mass.index_add_(0, self._alias, 1.0 - self._prob)
        mass /= self._prob.shape[0]
        if self.group_size == 1:
            return mass
        # A group of sum 0 has mass 0. Each weight's share of its group first: mass / sum
        # would overflow for subnormal sums.
        sums = self._sums.repeat_interleave(self.group_size)[:len(self)]
        share = torch.where(sums > 0, self._weights.double() / sums, 0.0)
        return share * mass.repeat_interleave(self.group_size)[:len(self)]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` i.i.d. indices (int64 ``[n]``; all -1 for a table of invalid weights, see
        ``check_values``). Uniforms come from ``generator`` (default: the device's default
        generator): the same seed gives the same draws on a device."""
        n = int_at_least("AliasTable.sample", "n", n, 0)
        self._check_unmodified("AliasTable.sample")
        u = torch.rand((3, n), generator=generator, device=self.device, dtype=torch.float64)
        if self._status is not None and uses_cuda_path(u):
            from . import alias_table_triton

            return alias_table_triton.sample(self._prob, self._alias, self._sums,
                                             self._weights, u, self.group_size, self._status)
        draws = torch.ops.is_kernels.alias_table_sample(
            self._prob, self._alias, self._sums, self._weights, u, self.group_size)
        return draws if self._status is None else torch.where(self._status == 0, draws, -1)

    def raise_errors(self) -> None:
        """Raises the error recorded at construction (with ``check_values=False``) and clears
        it (the draws stay -1). A host sync on CUDA."""
        if self._errors is not None:
            self._errors.raise_errors()

    def __repr__(self) -> str:
        return f"AliasTable(n={len(self)}, group_size={self.group_size}, device={self.device})"
