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

from ._checks import check_num_draws
from .ops.sum_tree import MinTree, SumTree

__all__ = ["PrioritizedReplay"]


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
        self.beta = _check_real("beta", beta, 0.0)
        self._eps = _check_real("eps", eps, 0.0)
        self._sum = SumTree(capacity, device=device, dtype=dtype)
        self._min = MinTree(capacity, device=device, dtype=dtype)
        self._cpu = self.device.type == "cpu"
        # Whether a stored priority can be 0: only if eps ** alpha rounds to 0 in dtype.
        self._zero_possible = not float(torch.tensor(self._eps, dtype=dtype)
                                        .pow(self._alpha)) > 0
        self._next = 0  # the slot the next add writes first
        self._stored = 0
        # The largest raw priority seen so far, on the device (no sync to update it).
        self._max_priority = torch.ones((), dtype=torch.float64, device=self.device)

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def eps(self) -> float:
        return self._eps

    @property
    def capacity(self) -> int:
        return self._sum.capacity

    @property
    def device(self) -> torch.device:
        return self._sum.device

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
        return self._stored

    def _write(self, slots: torch.Tensor, raw: torch.Tensor) -> None:
        """Stores ``(raw + eps) ** alpha`` at ``slots``, computed in the trees' dtype (as cpprb
        does)."""
        prio = torch.add(raw.to(self._sum.dtype), self._eps).pow_(self._alpha)
        if not self._cpu:
            # No host sync: an invalid raw priority becomes NaN, so that both trees drop the
            # batch and record the error (on CPU, _check_raw has raised).
            prio = torch.where((raw >= 0) & torch.isfinite(prio), prio, math.nan)
        self._sum.update(slots, prio)
        # Zero priorities are never drawn, so the minimum leaves them out (+inf).
        self._min.update(slots, prio.masked_fill(prio == 0, math.inf) if self._zero_possible
                         else prio)

    def _check_raw(self, op: str, raw: torch.Tensor, n: int) -> None:
        """Checks raw priorities (on CPU also their values, finite and >= 0: no sync there)
        and raises the max priority to their maximum."""
        if not isinstance(raw, torch.Tensor):
            raise TypeError(f"{op}: priorities must be a tensor, got {type(raw).__name__}")
        if not raw.is_floating_point() or raw.shape != (n,):
            raise ValueError(f"{op}: priorities must be a 1-D floating tensor of {n} entries, "
                             f"got {raw.dtype} of shape {tuple(raw.shape)}")
        if raw.device != self.device:
            raise ValueError(f"{op}: priorities must be on {self.device}, got {raw.device}")
        if n == 0:
            return
        lo, hi = torch.aminmax(raw)
        if not self._cpu:
            self._max_priority = torch.maximum(self._max_priority, hi)
            return
        lo, hi = float(lo), float(hi)
        if not (lo >= 0 and math.isfinite(hi)):
            bad = int((~(torch.isfinite(raw) & (raw >= 0))).nonzero()[0, 0])
            raise ValueError(f"{op}: priorities[{bad}] = {float(raw[bad])} is not finite "
                             "and >= 0")
        if hi > float(self._max_priority):
            self._max_priority.fill_(hi)

    def add(self, n: int, priorities: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reserves the next ``n`` ring-buffer slots (overwriting the oldest when full) and
        returns them (int64 ``[n]``, on the device): write the transitions there. Their
        priority is the largest raw priority seen so far, or ``priorities`` (raw, ``[n]``).
        ``n`` is at most ``capacity``."""
        op = "PrioritizedReplay.add"
        check_num_draws(op, n)
        if n > self.capacity:
            raise ValueError(f"{op}: n = {n} is more than the capacity {self.capacity}")
        if priorities is None:
            raw = self._max_priority.expand(n)
        else:
            raw = priorities
            self._check_raw(op, raw, n)
        slots = torch.arange(self._next, self._next + n, device=self.device)
        if self._next + n > self.capacity:
            slots %= self.capacity
        self._write(slots, raw)
        self._next = (self._next + n) % self.capacity
        self._stored = min(self.capacity, self._stored + n)
        return slots

    def sample(self, batch_size: int, *, beta: Optional[float] = None,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws ``batch_size`` i.i.d. stored slots with ``P(i) = priority_i / total``.

        Returns:
            ``(indices, weights)``: int64 ``[batch_size]`` slots and their importance weights
            ``(priority_i / min_j priority_j) ** -beta`` (the trees' dtype, in (0, 1]).
        """
        op = "PrioritizedReplay.sample"
        check_num_draws(op, batch_size)
        if self._stored == 0:
            raise RuntimeError(f"{op}: the buffer is empty")
        idx = self._sum.sample(batch_size, generator=generator)
        # (-1 draws: an all-zero tree on CUDA, where the error is recorded, not raised.)
        return idx, self.weights(idx if idx.is_cpu else idx.clamp_min(0), beta=beta)

    def weights(self, indices: torch.Tensor, *, beta: Optional[float] = None) -> torch.Tensor:
        """The importance weights ``(priority_i / min_j priority_j) ** -beta`` of the slots
        ``indices`` (int64 ``[k]``), the minimum over the stored slots of priority > 0;
        computed in the trees' dtype (as cpprb does)."""
        beta = self.beta if beta is None else _check_real("beta", beta, 0.0)
        prio = self._sum.values.index_select(0, indices)
        return (prio / self._min.min()).pow(-beta)

    def update(self, indices: torch.Tensor, priorities: torch.Tensor) -> None:
        """Sets the raw priorities (e.g. ``|TD error|``) of stored slots; the stored priority
        is ``(p + eps) ** alpha``. For a duplicated index the last one wins."""
        op = "PrioritizedReplay.update"
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise TypeError(f"{op}: indices must be a 1-D tensor")
        if self._cpu and indices.numel():
            lo_i, hi_i = torch.aminmax(indices)
            if int(lo_i) < 0 or int(hi_i) >= self._stored:
                bad = int(((indices < 0) | (indices >= self._stored)).nonzero()[0, 0])
                raise ValueError(f"{op}: indices[{bad}] = {int(indices[bad])} is not a stored "
                                 f"slot (0 <= index < {self._stored})")
        self._check_raw(op, priorities, indices.shape[0])
        self._write(indices, priorities)

    def raise_errors(self) -> None:
        """Raises the first error the trees recorded on the device (CUDA: invalid input is
        recorded there, not raised, to avoid a host sync). A host sync."""
        self._sum.raise_errors()
        self._min.raise_errors()

    def state_dict(self) -> Dict[str, Any]:
        """The priorities, ring position, stored count, max priority and hyperparameters."""
        return {"capacity": self.capacity, "priorities": self._sum.values.clone(),
                "next": self._next, "stored": self._stored,
                "max_priority": float(self._max_priority), "alpha": self.alpha,
                "beta": self.beta, "eps": self.eps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (capacity and dtype must match)."""
        op = "PrioritizedReplay.load_state_dict"
        keys = {"capacity", "priorities", "next", "stored", "max_priority", "alpha", "beta",
                "eps"}
        if keys - set(state):
            raise KeyError(f"{op}: state_dict lacks {sorted(keys - set(state))}")
        if state["capacity"] != self.capacity:
            raise ValueError(f"{op}: capacity {state['capacity']} != {self.capacity}")
        if (state["alpha"], state["eps"]) != (self._alpha, self._eps):
            raise ValueError(f"{op}: alpha and eps {state['alpha'], state['eps']} differ from "
                             f"this buffer's {self._alpha, self._eps} (the stored priorities "
                             "depend on them)")
        prio = state["priorities"].to(self.device)
        self._sum.build(prio)
        self._min.build(torch.where(prio > 0, prio, math.inf))
        self._next, self._stored = int(state["next"]), int(state["stored"])
        self._max_priority = torch.tensor(float(state["max_priority"]), dtype=torch.float64,
                                          device=self.device)
        self.beta = state["beta"]

    def __repr__(self) -> str:
        return (f"PrioritizedReplay(capacity={self.capacity}, stored={self._stored}, "
                f"alpha={self.alpha}, beta={self.beta}, eps={self.eps}, device={self.device})")
