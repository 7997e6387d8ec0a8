"""Alias table: O(N) build, O(1) i.i.d. draws from fixed weights (ALGORITHMS.md section 5).

Public API: :class:`AliasTable`. It wraps two ``torch.ops.is_kernels`` custom ops, C++ on
CPU (``csrc/alias_table.cpp``, where the method is described) and Triton on CUDA
(``is_kernels/alias_table_triton.py``), with fake kernels for ``torch.compile``:

- ``alias_table_build(weights) -> (prob, alias)``: float64 ``[N]`` acceptance thresholds
  and int32 ``[N]`` aliases;
- ``alias_table_sample(prob, alias, u) -> indices``: ``u`` is float64 ``[2, n]`` (row 0
  picks the bucket, row 1 decides between the bucket's item and its alias).

The CUDA ops never sync (the CUDA build does not check its weights); the C++ CPU build
checks and raises. :class:`AliasTable` decides with ``check_values`` whether invalid
weights raise at once (a host sync on CUDA) or are recorded on the device.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _C  # noqa: F401  (registers the ops and their CPU kernels)
from ._weights import (MAX_SIZE, ErrorFlag, can_sync, check_num_draws, check_weight_dtype,
                       raise_invalid_weights, uniforms, weights_valid)

__all__ = ["AliasTable"]


def _check_weights(op: str, weights: torch.Tensor) -> None:
    check_weight_dtype(op, "weights", weights)
    if weights.dim() != 1 or weights.shape[0] < 1:
        raise ValueError(f"{op}: weights must be a non-empty 1-D tensor, "
                         f"got shape {tuple(weights.shape)}")
    if weights.shape[0] > MAX_SIZE:
        raise ValueError(f"{op}: weights may have at most 2^31 - 1 entries, "
                         f"got {weights.shape[0]}")


def _check_sample(op: str, prob, alias, u) -> None:
    if prob.dim() != 1 or prob.shape[0] < 1 or prob.dtype != torch.float64:
        raise ValueError(f"{op}: prob must be a non-empty 1-D float64 tensor, got "
                         f"{prob.dtype} of shape {tuple(prob.shape)}")
    if alias.dtype != torch.int32 or alias.shape != prob.shape:
        raise ValueError(f"{op}: alias must be an int32 tensor of shape {tuple(prob.shape)}, "
                         f"got {alias.dtype} of shape {tuple(alias.shape)}")
    if u.dtype != torch.float64 or u.dim() != 2 or u.shape[0] != 2:
        raise ValueError(f"{op}: u must be float64 of shape [2, n], got {u.dtype} of shape "
                         f"{tuple(u.shape)}")
    if alias.device != prob.device or u.device != prob.device:
        raise ValueError(f"{op}: alias and u must be on the table's device {prob.device}, "
                         f"got {alias.device} and {u.device}")


@torch.library.register_fake("is_kernels::alias_table_build")
def _build_fake(weights):
    _check_weights("alias_table_build", weights)
    n = weights.shape[0]
    return (weights.new_empty((n,), dtype=torch.float64),
            weights.new_empty((n,), dtype=torch.int32))


@torch.library.register_fake("is_kernels::alias_table_sample")
def _sample_fake(prob, alias, u):
    _check_sample("alias_table_sample", prob, alias, u)
    return u.new_empty((u.shape[1],), dtype=torch.int64)


@torch.library.register_kernel("is_kernels::alias_table_build", "cuda")
def _build_cuda(weights):
    from . import alias_table_triton

    _check_weights("alias_table_build", weights)
    return alias_table_triton.build(weights)


@torch.library.register_kernel("is_kernels::alias_table_sample", "cuda")
def _sample_cuda(prob, alias, u):
    from . import alias_table_triton

    _check_sample("alias_table_sample", prob, alias, u)
    return alias_table_triton.sample(prob, alias, u)


# Error codes of AliasTable's ErrorFlag.
_BAD_WEIGHT, _ALL_ZERO = 1, 2
_MESSAGES = {
    _BAD_WEIGHT: "the weights had an entry that is not finite and >= 0; every draw is -1",
    _ALL_ZERO: "all weights are zero, there is nothing to sample; every draw is -1",
}


class AliasTable:
    """Walker/Vose alias table of fixed weights: i.i.d. draws with ``P(i) = w_i / sum(w)``.

    Built in O(N) (parallel, see ``csrc/alias_table.cpp``); every draw costs two uniforms
    and one table lookup. An item of weight 0 is never drawn.

    Args:
        weights: 1-D float32/float64 tensor of finite weights >= 0, not all 0, at most
            2**31 - 1 entries. The table lives on its device.
        check_values: invalid weights (not finite and >= 0, or all 0) raise at once with
            ``True`` (a host sync on CUDA; during CUDA graph capture it falls back to
            ``False``). With ``False`` nothing syncs: every draw of such a table is -1 and
            the error is recorded on the device until :meth:`raise_errors` (a sync).
            ``None`` (default): ``True`` on CPU, ``False`` on CUDA.
    """

    def __init__(self, weights: torch.Tensor, *, check_values: Optional[bool] = None) -> None:
        op = "AliasTable"
        _check_weights(op, weights)
        if check_values is not None and not isinstance(check_values, bool):
            raise TypeError(f"{op}: check_values must be None or a bool, "
                            f"got {type(check_values).__name__}")
        self.check_values = weights.device.type != "cuda" if check_values is None \
            else check_values
        # Without immediate checks: the recorded error, and whether the weights are valid (a
        # device bool: the draws are masked to -1 by it, without a sync).
        self._errors: Optional[ErrorFlag] = None
        self._valid: Optional[torch.Tensor] = None
        weights = weights.detach()
        build_from = weights
        if self.check_values and can_sync(weights):
            if weights.device.type != "cpu":  # the C++ kernel checks (and raises) itself
                if not bool(weights_valid(weights)):
                    raise_invalid_weights(op, "weights", weights)
                if not bool(weights.sum() > 0):
                    raise RuntimeError(f"{op}: all weights are zero, there is nothing to "
                                       "sample")
        else:
            valid = weights_valid(weights)
            code = torch.where(valid, torch.where(weights.sum() > 0, 0, _ALL_ZERO),
                               _BAD_WEIGHT)
            self._errors = ErrorFlag(op, _MESSAGES, weights.device)
            self._errors.record(code)
            self._valid = code == 0
            # An invalid table is built from ones (its draws are all masked to -1).
            build_from = torch.where(self._valid, weights, 1.0)
        self._prob, self._alias = torch.ops.is_kernels.alias_table_build(build_from)

    @property
    def device(self) -> torch.device:
        return self._prob.device

    def __len__(self) -> int:
        return self._prob.shape[0]

    @property
    def probs(self) -> torch.Tensor:
        """The probabilities the draws follow (float64 ``[N]``): ``w / sum(w)`` up to float64
        rounding. Read from the table (bucket ``k`` gives ``prob[k] / N`` to item ``k`` and
        ``(1 - prob[k]) / N`` to ``alias[k]``), so the table keeps no copy of the weights."""
        mass = self._prob.clone()
        mass.index_add_(0, self._alias, 1.0 - self._prob)
        return mass / len(self)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` i.i.d. indices (int64 ``[n]``; all -1 for a table of invalid weights, see
        ``check_values``). Uniforms come from ``generator`` (default: the device's default
        generator): the same seed gives the same draws on a device."""
        check_num_draws("AliasTable.sample", n)
        u = uniforms((2, n), generator, self.device)
        draws = torch.ops.is_kernels.alias_table_sample(self._prob, self._alias, u)
        return draws if self._valid is None else torch.where(self._valid, draws, -1)

    def raise_errors(self) -> None:
        """Raises the error recorded at construction (with ``check_values=False``) and clears
        it (the draws stay -1). A host sync on CUDA."""
        if self._errors is not None:
            self._errors.raise_errors()

    def __repr__(self) -> str:
        return f"AliasTable(n={len(self)}, device={self.device})"
