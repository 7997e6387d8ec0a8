"""The online importance sampler's two ops (:class:`~is_kernels.OnlineImportanceSampler`).

- ``online_is_draw(leaves, inner, memory, active_idx, u, uniform_mix, unbiased) -> (idx, w)``:
  b sum-tree descents, the defensive mixture's coin and uniform pick, and the weights.
- ``online_is_update(memory!, seen!, active, leaves!, inner!, idx, scores, momentum)``: the
  checks, the memory update ``q <- m·q + (1-m)·s`` and the sum-tree leaves and ancestors.

C++ on CPU (``csrc/online_is.cpp``); on CUDA Triton kernels (:mod:`.online_is_triton` draws,
the update is the sum tree update kernel with the memory update fused in), with no host
sync.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _C  # noqa: F401  (registers the ops and their CPU kernels)
from .._checks import check_no_overlap
from .cuda_path import cuda_kernel
from .sum_tree import check_tree

__all__ = ["mixture", "update_cuda"]

def mixture(q: torch.Tensor, total: torch.Tensor, n: int, uniform_mix: float) -> torch.Tensor:
    """``p = (1-λ)·q/total + λ/n`` in the dtype of ``q`` (``q/total`` reads ``1/n`` when
    ``total = 0``). ``q/total`` is divided in float64 and rounded to ``q``'s dtype: the total
    of float32 scores may exceed float32 max."""
    total = total.double()
    share = torch.where(total > 0, (q.double() / total).to(q.dtype), 1.0 / n)
    return (1.0 - uniform_mix) * share + uniform_mix / n


def _check_vector(op: str, name: str, t: torch.Tensor, dtype: torch.dtype,
                  size: Optional[int], like: torch.Tensor) -> None:
    if t.dim() != 1 or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be a contiguous 1-D {dtype} tensor, got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    if size is not None and t.shape[0] != size:
        raise ValueError(f"{op}: {name} must have {size} entries, got {t.shape[0]}")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} must be on {like.device}, got {t.device}")


def _check_draw(leaves, inner, memory, active_idx, u, uniform_mix) -> None:
    op = "online_is_draw"
    check_tree(op, leaves, inner)
    _check_vector(op, "memory", memory, torch.float32, leaves.shape[0], leaves)
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"{op}: uniform_mix must be in [0, 1], got {uniform_mix}")
    _check_vector(op, "active_idx", active_idx, torch.int64, None, leaves)
    if active_idx.shape[0] == 0:
        raise ValueError(f"{op}: active_idx must not be empty")
    if u.dim() != 2 or u.shape[0] != 3 or u.dtype != torch.float64 or u.device != leaves.device:
        raise ValueError(f"{op}: u must be a float64 [3, b] tensor on {leaves.device}, got "
                         f"{u.dtype} of shape {tuple(u.shape)} on {u.device}")


def _check_update(memory, seen, active, leaves, inner, idx, scores, momentum) -> None:
    op = "online_is_update"
    n = leaves.shape[0]
    _check_vector(op, "leaves", leaves, torch.float32, None, leaves)
    check_tree(op, leaves, inner)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{op}: momentum must be in [0, 1), got {momentum}")
    for name, t, dtype in (("memory", memory, torch.float32), ("seen", seen, torch.bool),
                           ("active", active, torch.bool)):
        _check_vector(op, name, t, dtype, n, leaves)
    _check_vector(op, "idx", idx, torch.int64, None, leaves)
    _check_vector(op, "scores", scores, torch.float32, idx.shape[0], leaves)


@torch.library.register_fake("is_kernels::online_is_draw")
def _draw_fake(leaves, inner, memory, active_idx, u, uniform_mix, unbiased):
    _check_draw(leaves, inner, memory, active_idx, u, uniform_mix)
    b = u.shape[1]
    return u.new_empty((b,), dtype=torch.int64), u.new_empty((b,), dtype=torch.float32)


@cuda_kernel("is_kernels::online_is_draw")
def _draw_cuda(leaves, inner, memory, active_idx, u, uniform_mix, unbiased):
    from . import online_is_triton

    _check_draw(leaves, inner, memory, active_idx, u, uniform_mix)
    return online_is_triton.draw(leaves, inner, memory, active_idx, u.contiguous(),
                                 uniform_mix, unbiased)


@torch.library.register_fake("is_kernels::online_is_update")
def _update_fake(memory, seen, active, leaves, inner, idx, scores, momentum):
    _check_update(memory, seen, active, leaves, inner, idx, scores, momentum)


@cuda_kernel("is_kernels::online_is_update")
def update_cuda(memory, seen, active, leaves, inner, idx, scores, momentum):
    """``online_is_update`` on CUDA: a sort of ``idx`` and one kernel (two for more than
    ``sum_tree_triton.FUSED_MAX`` entries) that check the batch, update the memory and the
    sum tree. No host sync, so no raising: a batch with an index out of range or a score not
    finite and >= 0 changes nothing. Duplicates: the last occurrence of an index is the one
    applied, computed from the memory before the batch (as the CPU kernel does)."""
    from . import sum_tree_triton

    _check_update(memory, seen, active, leaves, inner, idx, scores, momentum)
    check_no_overlap("online_is_update",
                     {"memory": memory, "seen": seen, "leaves": leaves, "inner": inner},
                     {"idx": idx})
    sum_tree_triton.update(leaves, inner, idx, scores, online=(memory, seen, active, momentum))
