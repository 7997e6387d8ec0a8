"""Alias table: O(N) build, O(1) i.i.d. draws from fixed weights (ALGORITHMS.md section 5).

Public API: :class:`AliasTable`. It wraps two ``torch.ops.is_kernels`` custom ops, C++ on
CPU (``csrc/alias_table.cpp``, where the method is described) and Triton on CUDA
(``is_kernels/alias_table_triton.py``), with fake kernels for ``torch.compile``:

- ``alias_table_build(weights) -> (prob, alias)``: float64 ``[N]`` acceptance thresholds
  and int32 ``[N]`` aliases;
- ``alias_table_sample(prob, alias, u) -> indices``: ``u`` is float64 ``[2, n]`` (row 0
  picks the bucket, row 1 decides between the bucket's item and its alias).

On CUDA the build checks the weights with a host sync (the build is not meant for graph
capture); sampling never syncs.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the ops and their CPU kernels)
from ._weights import (MAX_SIZE, can_sync, check_num_draws, check_weight_dtype,
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

    op = "alias_table_build"
    _check_weights(op, weights)
    if can_sync(weights):
        if not bool(weights_valid(weights)):
            raise_invalid_weights(op, "weights", weights)
        if not bool(weights.sum() > 0):
            raise RuntimeError(f"{op}: all weights are zero, there is nothing to sample")
    return alias_table_triton.build(weights)


@torch.library.register_kernel("is_kernels::alias_table_sample", "cuda")
def _sample_cuda(prob, alias, u):
    from . import alias_table_triton

    _check_sample("alias_table_sample", prob, alias, u)
    return alias_table_triton.sample(prob, alias, u)


class AliasTable:
    """Walker/Vose alias table of fixed weights: i.i.d. draws with ``P(i) = w_i / sum(w)``.

    Built in O(N) (parallel on the GPU, see ``csrc/alias_table.cpp``); every draw costs two
    uniforms and one table lookup. An item of weight 0 is never drawn.

    Args:
        weights: 1-D float32/float64 tensor of finite weights >= 0, not all 0, at most
            2**31 - 1 entries. The table lives on its device.
    """

    def __init__(self, weights: torch.Tensor) -> None:
        _check_weights("AliasTable", weights)
        self._weights = weights.detach().clone()
        self._prob, self._alias = torch.ops.is_kernels.alias_table_build(self._weights)

    @property
    def device(self) -> torch.device:
        return self._prob.device

    def __len__(self) -> int:
        return self._prob.shape[0]

    @property
    def probs(self) -> torch.Tensor:
        """The normalised probabilities ``w / sum(w)`` (float64 ``[N]``)."""
        w = self._weights.to(torch.float64)
        return w / w.sum()

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` i.i.d. indices (int64 ``[n]``). Uniforms come from ``generator`` (default:
        the device's default generator): the same seed gives the same draws on a device."""
        check_num_draws("AliasTable.sample", n)
        u = uniforms((2, n), generator, self.device)
        return torch.ops.is_kernels.alias_table_sample(self._prob, self._alias, u)

    def __repr__(self) -> str:
        return f"AliasTable(n={len(self)}, device={self.device})"
