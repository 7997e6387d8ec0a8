"""Prioritized experience replay (PER, Schaul et al. 2016) on the sum and min trees.

:class:`PrioritizedReplay` keeps the priorities of ``capacity`` ring-buffer slots and draws
batches from them; the transitions live in the caller's own tensors, indexed by the slots it
returns (docs/replay.md has a full loop). Its conventions are cpprb's and TorchRL's:

- a slot's priority is ``(p + eps) ** alpha`` for a raw priority ``p`` (e.g. ``|TD error|``);
  new slots get the largest raw priority seen so far (1 at first);
- draws are i.i.d. with ``P(i) = priority_i / sum of priorities``;
- the importance weights are ``(N P(i)) ** -beta / max_j (N P(j)) ** -beta``
  ``= (priority_i / min_j priority_j) ** -beta``, with the minimum over the stored slots (a
  min tree, so no O(N) scan), N the number of stored slots.

A slot of priority 0 (``p = 0`` with ``eps = 0``) is never drawn, so it does not enter the
minimum either: the min tree holds +inf for it. (cpprb and TorchRL take the minimum over all
stored slots, so there one zero priority makes every weight 0, or raises.)
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from ._checks import (ErrorFlag, int_at_least, max_leaf, raise_invalid_weights, state_float,
                      state_int, weights_valid)
from .ops.cuda_path import uses_cuda_path
from .ops.sum_tree import MinTree, SumTree

__all__ = ["PrioritizedReplay"]

_ADD_PRIORITIES = torch.ops.is_kernels.sum_tree_add_priorities
_SET_PRIORITIES = torch.ops.is_kernels.sum_tree_set_priorities
_SAMPLE_WEIGHTED = torch.ops.is_kernels.sum_tree_sample_weighted

# Error codes of PrioritizedReplay's ErrorFlag (CUDA).
_BAD_BATCH, _ALL_ZERO, _BAD_SLOT = 1, 2, 3
_MESSAGES = {
    _BAD_BATCH: "add() or update() got an index out of range or a priority that is not finite "
                "and >= 0; that batch was dropped (the priorities are unchanged by it)",
    _ALL_ZERO: "sample() was called with all priorities zero; those draws are -1",
    _BAD_SLOT: "weights() got an index out of range [0, len(self)); its weight is NaN",
}


def _check_real(name: str, value: float, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"PrioritizedReplay: {name} must be a real number, "
                        f"got {type(value).__name__}")
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"PrioritizedReplay: {name} must be finite and >= {low}, got {value}")
    return float(value)


class PrioritizedReplay:
    """Priorities, sampling and importance weights of a prioritized replay buffer.

    Args:
        capacity: number of slots; :meth:`add` overwrites the oldest once they are all used.
        alpha: priority exponent (0: uniform sampling).
        beta: importance-weight exponent (0: all weights 1); can be changed between calls
            (e.g. annealed to 1), or passed to :meth:`sample`.
        eps: added to every raw priority before the exponent.
        device: where the trees live (CPU: C++ kernels; CUDA: Triton kernels, no host sync).
        dtype: dtype of the stored priorities, float32 (as cpprb and TorchRL) or float64.
    """

    def __init__(self, capacity: int, *, alpha: float = 0.6, beta: float = 0.4,
                 eps: float = 1e-4, device: Optional[torch.device | str] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self._alpha = _check_real("alpha", alpha, 0.0)
        self.beta = beta
        self._eps = _check_real("eps", eps, 0.0)
        try:  # the trees check capacity, device and dtype: their errors, in this name
            self._sum = SumTree(capacity, device=device, dtype=dtype)
        except (TypeError, ValueError) as e:
            raise type(e)(f"PrioritizedReplay: {str(e).split(': ', 1)[-1]}") from None
        self._min = MinTree(capacity, device=device, dtype=dtype)
        # The trees' storage, as the ops take it (updated in place, never reallocated).
        self._trees = (self._sum.values, self._sum.inner_nodes, self._min.values,
                       self._min.inner_nodes)
        self._capacity, self._device = self._sum.capacity, self._sum.device
        self._cpu = not uses_cuda_path(self._sum.values)  # else: the no-sync CUDA path
        # CPU: the sum tree's inner nodes as a numpy view, to read the total at no op's cost.
        self._sum_inner = self._sum.inner_nodes.numpy() if self._cpu else None
        self._errors = ErrorFlag("PrioritizedReplay", _MESSAGES, self.device)
        self._next = 0  # the slot the next add writes first
        self._stored = 0
        # The largest raw priority seen so far, on the device (no sync to update it).
        self._max_priority = torch.ones((), dtype=torch.float64, device=self.device)

    @property
    def alpha(self) -> float:
        """The priority exponent (fixed: the stored priorities depend on it)."""
        return self._alpha

    @property
    def beta(self) -> float:
        """The importance-weight exponent of :meth:`sample` and :meth:`weights` (finite and
        >= 0, checked when set)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_real("beta", value, 0.0)

    @property
    def eps(self) -> float:
        """What is added to every raw priority (fixed, as ``alpha``)."""
        return self._eps

    @property
    def capacity(self) -> int:
        """The number of ring-buffer slots."""
        return self._capacity

    @property
    def device(self) -> torch.device:
        """Where the trees live."""
        return self._device

    @property
    def priorities(self) -> torch.Tensor:
        """The stored priorities ``(p + eps) ** alpha`` of all slots (0 for unused ones; the
        tree's own storage: read only)."""
        return self._sum.values

    @property
    def max_priority(self) -> torch.Tensor:
        """The largest raw priority seen so far (1 at first): a float64 0-dim tensor."""
        return self._max_priority

    def __len__(self) -> int:
        """The number of slots stored so far (at most ``capacity``)."""
        return self._stored

    def _check_priorities(self, op: str, raw: torch.Tensor, n: int) -> None:
        if not isinstance(raw, torch.Tensor):
            raise TypeError(f"{op}: priorities must be a tensor, got {type(raw).__name__}")
        if raw.dtype not in (torch.float32, torch.float64) or raw.shape != (n,):
            raise ValueError(f"{op}: priorities must be a float32/float64 tensor of shape "
                             f"({n},), got {raw.dtype} of shape {tuple(raw.shape)}")
        if raw.device != self._device:
            raise ValueError(f"{op}: priorities must be on {self._device}, got {raw.device}")

    def _set_on_cuda_path(self, slots: Optional[torch.Tensor], raw: torch.Tensor,
                          limit: int) -> torch.Tensor:
        """The CUDA path of :meth:`add` (``slots=None``: the next ring slots) and
        :meth:`update`: one kernel computes and checks the priorities, drops an invalid batch
        and records it, and raises the max priority (then a sort and the two tree updates).
        Returns the slots."""
        from .ops import sum_tree_triton

        return sum_tree_triton.set_priorities(
            *self._trees, slots, raw, self._alpha, self._eps, limit, first_slot=self._next,
            max_priority=self._max_priority, err=self._errors.code, bad_code=_BAD_BATCH)[0]

    def add(self, n: int, priorities: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reserves the next ``n`` ring-buffer slots (overwriting the oldest when full) and
        returns them (int64 ``[n]``, on the device): write the transitions there. Their
        priority is the largest raw priority seen so far, or ``priorities`` (raw, ``[n]``,
        finite and >= 0). ``n`` is at most ``capacity``."""
        op = "PrioritizedReplay.add"
        n = int_at_least(op, "n", n, 0)
        if n > self._capacity:
            raise ValueError(f"{op}: n = {n} is more than the capacity {self._capacity}")
        if not self._cpu:
            if priorities is not None:
                self._check_priorities(op, priorities, n)
            slots = self._set_on_cuda_path(
                None, self._max_priority.expand(n) if priorities is None else priorities,
                self._capacity)
        else:
            # One op: the slots, (p + eps) ** alpha into both trees (the C++ kernel checks
            # everything and raises before writing), the max priority raised in place.
            try:
                slots, _ = _ADD_PRIORITIES(*self._trees, self._max_priority, self._next, n,
                                           priorities, self._alpha, self._eps)
            except (RuntimeError, TypeError, ValueError) as e:
                if priorities is not None:
                    self._check_priorities(op, priorities, n)
                raise ValueError(f"{op}: {str(e).split(': ', 1)[-1]}") from None
        self._next = (self._next + n) % self._capacity
        self._stored = min(self._capacity, self._stored + n)
        return slots

    def sample(self, batch_size: int, *, beta: Optional[float] = None,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws ``batch_size`` i.i.d. stored slots with ``P(i) = priority_i / total``, from
        the uniforms ``torch.rand(batch_size, dtype=torch.float64, generator=generator)``
        would give.

        Returns:
            ``(indices, weights)``: int64 ``[batch_size]`` slots and their importance weights
            ``(priority_i / min_j priority_j) ** -beta`` (the trees' dtype, in (0, 1]; on
            CUDA, all-zero priorities give -1 and NaN, and an error for :meth:`raise_errors`).
        """
        op = "PrioritizedReplay.sample"
        batch_size = int_at_least(op, "batch_size", batch_size, 0)
        beta = self.beta if beta is None else _check_real("beta", beta, 0.0)
        if self._stored == 0:
            raise RuntimeError(f"{op}: the buffer is empty")
        if not self._cpu:  # one kernel: draws, weights, an all-zero tree recorded
            from .ops import sum_tree_triton

            u = torch.rand(batch_size, generator=generator, device=self._device,
                           dtype=torch.float64)
            return sum_tree_triton.sample_weighted(*self._trees[:2], self._trees[3], u, beta,
                                                   err=self._errors.code,
                                                   empty_code=_ALL_ZERO)
        if batch_size and not self._sum_inner[1] > 0:  # the total, read without a tensor op
            raise RuntimeError(f"{op}: all priorities are zero, there is nothing to sample")
        return _SAMPLE_WEIGHTED(*self._trees, batch_size, beta, generator)

    def weights(self, indices: torch.Tensor, *, beta: Optional[float] = None) -> torch.Tensor:
        """The importance weights ``(priority_i / min_j priority_j) ** -beta`` of the stored
        slots ``indices`` (int64 or int32 ``[k]``, each in ``[0, len(self))``), the minimum
        over the stored slots of priority > 0; computed in the trees' dtype (as cpprb does).
        An index out of range raises (on CUDA, where checking would sync: its weight is NaN
        and the error is recorded for :meth:`raise_errors`)."""
        op = "PrioritizedReplay.weights"
        beta = self.beta if beta is None else _check_real("beta", beta, 0.0)
        indices = self._checked_indices(op, indices)
        stored = (indices >= 0) & (indices < self._stored)
        if self._cpu:
            if not bool(stored.all()):
                i = int((~stored).nonzero()[0, 0])
                raise ValueError(f"{op}: indices[{i}] = {int(indices[i])} is out of range "
                                 f"[0, {self._stored})")
            return (self._sum.values.index_select(0, indices) / self._min.min()).pow(-beta)
        self._errors.record(torch.where(stored.all(), 0, _BAD_SLOT))
        prio = self._sum.values.index_select(0, torch.where(stored, indices, 0))
        return torch.where(stored, (prio / self._min.min()).pow(-beta), math.nan)

    def update(self, indices: torch.Tensor, priorities: torch.Tensor) -> None:
        """Sets the raw priorities (e.g. ``|TD error|``, finite and >= 0) of stored slots
        (``0 <= index < len(self)``); the stored priority is ``(p + eps) ** alpha``. For a
        duplicated index the last one wins."""
        op = "PrioritizedReplay.update"
        if not self._cpu:
            indices = self._checked_indices(op, indices)
            self._check_priorities(op, priorities, indices.shape[0])
            self._set_on_cuda_path(indices, priorities, self._stored)
            return
        try:  # the op checks every argument before it writes anything
            _SET_PRIORITIES(*self._trees, self._max_priority, indices, priorities, self._alpha,
                            self._eps, self._stored)
        except (RuntimeError, TypeError, ValueError):
            # The arguments the op refused: an error that names one, or int32 indices.
            indices = self._checked_indices(op, indices)
            self._check_priorities(op, priorities, indices.shape[0])
            try:
                _SET_PRIORITIES(*self._trees, self._max_priority, indices, priorities,
                                self._alpha, self._eps, self._stored)
            except RuntimeError as e:
                raise ValueError(f"{op}: {str(e).split(': ', 1)[-1]}") from None

    def _checked_indices(self, op: str, indices: torch.Tensor) -> torch.Tensor:
        """``indices`` as int64, after the checks of their type, dtype and device (raising the
        error that names them)."""
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise TypeError(f"{op}: indices must be a 1-D tensor")
        if indices.device != self._device or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{op}: indices must be int64 or int32 on {self._device}, got "
                             f"{indices.dtype} on {indices.device}")
        return indices.long()

    def raise_errors(self) -> None:
        """Raises the first error recorded on the device (CUDA: invalid input is recorded
        there, not raised, to avoid a host sync) and clears it. A host sync."""
        self._errors.raise_errors()

    def state_dict(self) -> Dict[str, Any]:
        """The priorities, ring position, stored count, max priority and hyperparameters."""
        return {"capacity": self.capacity, "priorities": self._sum.values.clone(),
                "next": self._next, "stored": self._stored,
                "max_priority": float(self._max_priority), "alpha": self.alpha,
                "beta": self.beta, "eps": self.eps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (capacity, dtype, alpha and eps must match). A
        mismatch or an invalid entry raises an error naming it; the buffer is then
        unchanged."""
        op = "PrioritizedReplay.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{op}: state_dict must be a dict, got {type(state).__name__}")
        keys = {"capacity", "priorities", "next", "stored", "max_priority", "alpha", "beta",
                "eps"}
        if keys - set(state):
            raise KeyError(f"{op}: state_dict lacks {sorted(keys - set(state))}")
        capacity = self.capacity
        if type(state["capacity"]) is not int or state["capacity"] != capacity:
            raise ValueError(f"{op}: state_dict['capacity'] is {state['capacity']!r}, this "
                             f"buffer has {capacity}")
        alpha, eps = state_float(op, state, "alpha", 0.0), state_float(op, state, "eps", 0.0)
        if (alpha, eps) != (self._alpha, self._eps):
            raise ValueError(f"{op}: alpha and eps {alpha, eps} differ from this buffer's "
                             f"{self._alpha, self._eps} (the stored priorities depend on them)")
        beta = state_float(op, state, "beta", 0.0)
        max_priority = state_float(op, state, "max_priority", 0.0)
        stored = state_int(op, state, "stored", 0, capacity)
        next_slot = state_int(op, state, "next", 0, capacity - 1)
        if stored < capacity and next_slot != stored:
            raise ValueError(f"{op}: state_dict['next'] must equal state_dict['stored'] "
                             f"({stored}) while the buffer is not full, got {next_slot}")
        prio = self._checked_state_priorities(op, state["priorities"], stored)
        self._sum.build(prio)
        self._min.build(torch.where(prio > 0, prio, math.inf))
        self._next, self._stored = next_slot, stored
        self._max_priority.fill_(max_priority)
        self.beta = beta

    def _checked_state_priorities(self, op: str, prio: Any, stored: int) -> torch.Tensor:
        """``state_dict['priorities']`` on the device, if it holds valid priorities of this
        buffer's dtype and shape, 0 at the slots not stored yet (a sync on CUDA)."""
        what = "state_dict['priorities']"
        if not isinstance(prio, torch.Tensor):
            raise TypeError(f"{op}: {what} must be a tensor, got {type(prio).__name__}")
        if prio.dtype != self._sum.dtype or prio.shape != (self.capacity,):
            raise ValueError(f"{op}: {what} must be a {self._sum.dtype} tensor of shape "
                             f"({self.capacity},), got {prio.dtype} of shape "
                             f"{tuple(prio.shape)}")
        prio = prio.to(self.device)
        limit = max_leaf(prio.dtype, self.capacity)
        if not bool(weights_valid(prio, limit)):
            try:
                raise_invalid_weights(op, what, prio, limit)
            except RuntimeError as e:
                raise ValueError(str(e)) from None
        if bool(prio[stored:].any()):
            raise ValueError(f"{op}: {what} must be 0 at the slots not stored yet "
                             f"([{stored}, {self.capacity}), with state_dict['stored'] = "
                             f"{stored})")
        return prio

    def __repr__(self) -> str:
        return (f"PrioritizedReplay(capacity={self.capacity}, stored={self._stored}, "
                f"alpha={self.alpha}, beta={self.beta}, eps={self.eps}, device={self.device})")
