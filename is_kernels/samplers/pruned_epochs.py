"""The epochs of the pruning samplers: each epoch covers the samples kept at its start.

At the start of each epoch a pruning sampler chooses the *kept* samples from the scores
recorded so far; the epoch is then a random permutation of the kept samples cut into batches
of b, so its length ``len(sampler) = ceil(kept / b)`` is fixed before its first draw and LR
schedulers stepping per batch keep working. An epoch starts at ``set_epoch(e)``, or at the
first ``len()`` or draw after the previous epoch's last draw; choosing the kept set costs a
few host syncs then, none per step.

Each sampler keeps a per-epoch report (:meth:`PrunedEpochs.epoch_report`: samples kept,
fraction pruned, steps against a full epoch, measured time and the estimated time saved) and
the attribute :attr:`PrunedEpochs.data_fraction` read by the training harness.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._checks import state_indices, state_int

__all__ = ["PrunedEpochs"]


class PrunedEpochs:
    """Mixin for :class:`~is_kernels.Sampler` subclasses whose epochs cover a kept subset.

    A subclass implements :meth:`_select` (the kept mask and optional loss weights of an
    epoch) and :meth:`steps_in_epoch`, calls :meth:`_init_epochs` at the end of its
    ``__init__``, and draws with :meth:`_begin_draw` followed by :meth:`_next_batch` (or its
    own draw of ``batch_size`` indices from the kept set).
    """

    num_samples: int
    batch_size: int
    device: torch.device
    generator: torch.Generator
    epoch: int

    def _select(self, epoch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(kept, weights)`` of epoch ``epoch``: bool ``[N]`` and float32 ``[N]`` loss
        weights (``None``: all 1). Called once per epoch start; may update schedule state."""
        raise NotImplementedError

    def _init_epochs(self) -> None:
        self._report: List[Dict[str, Any]] = []
        self._steps = 0  # draws made in the current epoch
        self._t_first: Optional[float] = None  # wall-clock of the epoch's first draw
        self._t_last: Optional[float] = None  # wall-clock of its latest update
        self._start_epoch(self.epoch)

    @property
    def full_steps(self) -> int:
        """Steps of an epoch over all N samples, ``ceil(N / b)``."""
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def num_kept(self) -> int:
        """Samples kept in the current epoch."""
        return self._order.shape[0]

    @property
    def kept(self) -> torch.Tensor:
        """bool ``[N]``: the samples of the current epoch (the others are pruned)."""
        mask = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
        mask[self._order] = True
        return mask

    def __len__(self) -> int:
        """Steps of the current epoch, ``ceil(kept / b)``; once all its draws are made, the
        next epoch starts here (its kept set is chosen now) and its length is returned."""
        self._ensure_epoch()
        return math.ceil(self.num_kept / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` and chooses its kept set. Calling it again for the current
        epoch before its first draw keeps the kept set already chosen, and so does calling it
        for the epoch of a state just loaded (the epoch continues where it was saved)."""
        super().set_epoch(epoch)  # type: ignore[misc]

    def _set_epoch(self, epoch: int) -> None:
        unchanged = epoch == self.epoch and self._steps == 0
        super()._set_epoch(epoch)  # type: ignore[misc]
        if not unchanged:
            self._start_epoch(self.epoch)

    def _start_epoch(self, epoch: int) -> torch.Tensor:
        """Chooses the kept set of ``epoch`` and its order; returns the kept mask."""
        if self._report:
            if self._steps == 0:
                self._report.pop()  # an epoch without draws does not count
            else:
                self._report[-1].update(self._timing())
        kept, weights = self._select(epoch)
        kept_idx = kept.nonzero().squeeze(1)
        perm = torch.randperm(kept_idx.shape[0], device=self.device, generator=self.generator)
        self._order = kept_idx[perm]
        self._order_weights = None if weights is None else weights[self._order]
        self._pos = self._steps = 0
        self._t_first = self._t_last = None
        steps = math.ceil(self.num_kept / self.batch_size)
        self._report.append({"epoch": epoch, "kept": self.num_kept,
                             "fraction_pruned": 1.0 - self.num_kept / self.num_samples,
                             "steps": steps, "full_steps": self.full_steps,
                             "seconds": None, "seconds_saved": None})
        return kept

    def _ensure_epoch(self) -> None:
        if self._steps >= math.ceil(self.num_kept / self.batch_size):
            self._set_epoch(self.epoch + 1)

    def _begin_draw(self) -> None:
        """Bookkeeping of a draw: starts the next epoch when this one is done."""
        self._ensure_epoch()
        self._steps += 1
        if self._t_first is None:
            self._t_first = time.perf_counter()

    def _next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next slice of the epoch's permutation of the kept samples, and its weights."""
        stop = self._pos + self.batch_size
        idx = self._order[self._pos:stop].clone()
        if self._order_weights is None:
            weights = torch.ones(idx.shape[0], dtype=torch.float32, device=self.device)
        else:
            weights = self._order_weights[self._pos:stop].clone()
        self._pos += idx.shape[0]
        return idx, weights

    def _kept_probabilities(self) -> torch.Tensor:
        """``1/kept`` on the kept samples, 0 elsewhere (a draw's marginal distribution)."""
        return self.kept.float() / self.num_kept

    def update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        super().update(idx, scores)  # type: ignore[misc]
        self._t_last = time.perf_counter()

    def _timing(self) -> Dict[str, Optional[float]]:
        """Measured seconds of the current epoch so far (first draw to latest update) and
        the estimated time saved: mean step time × (full-epoch steps − this epoch's steps)."""
        if self._t_first is None or self._t_last is None or self._t_last < self._t_first:
            return {"seconds": None, "seconds_saved": None}
        seconds = self._t_last - self._t_first
        steps = math.ceil(self.num_kept / self.batch_size)
        return {"seconds": seconds,
                "seconds_saved": seconds / self._steps * (self.full_steps - steps)}

    def epoch_report(self) -> List[Dict[str, Any]]:
        """One dict per epoch started: ``epoch``, ``kept`` (samples used), ``fraction_pruned``,
        ``steps`` and ``full_steps`` (an epoch over all N), ``seconds`` (measured from the
        epoch's first draw to its latest update; on CUDA the host clock, which may run a
        few steps ahead of the device) and ``seconds_saved`` (estimated: mean step time ×
        steps saved); the times are ``None`` until measured. The last entry is the running
        epoch, timed so far."""
        report = copy.deepcopy(self._report)
        report[-1].update(self._timing())
        return report

    @property
    def data_fraction(self) -> float:
        """Fraction of the full data used so far: kept samples summed over the epochs
        started, divided by N times their number."""
        return sum(e["kept"] for e in self._report) / (self.num_samples * len(self._report))

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()  # type: ignore[misc]
        sd.update(kept_order=self._order.cpu().clone(),
                  kept_weights=None if self._order_weights is None
                  else self._order_weights.cpu().clone(),
                  kept_position=self._pos, kept_steps=self._steps,
                  report=copy.deepcopy(self._report))
        return sd

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        super()._check_state_dict(op, state_dict)  # type: ignore[misc]
        order = state_indices(op, state_dict, "kept_order", self.num_samples)
        if order.numel() == 0:
            raise ValueError(f"{op}: state_dict['kept_order'] must not be empty")
        weights = state_dict["kept_weights"]
        if weights is not None and (not isinstance(weights, torch.Tensor)
                                    or weights.dtype != torch.float32
                                    or weights.shape != order.shape
                                    or not bool((torch.isfinite(weights) & (weights > 0)).all())):
            raise ValueError(f"{op}: state_dict['kept_weights'] must be None or a float32 "
                             f"tensor of finite weights > 0 of the shape of "
                             f"state_dict['kept_order']")
        state_int(op, state_dict, "kept_position", 0, order.numel())
        state_int(op, state_dict, "kept_steps", 0)
        report = state_dict["report"]
        if not isinstance(report, list) or not report or \
                not all(isinstance(e, dict) for e in report):
            raise ValueError(f"{op}: state_dict['report'] must be a non-empty list of dicts")

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        """Applies a checked state (the running epoch's timing restarts)."""
        super()._load_state(state_dict)  # type: ignore[misc]
        weights = state_dict["kept_weights"]
        self._order = state_dict["kept_order"].to(self.device, copy=True)
        self._order_weights = None if weights is None else weights.to(self.device, copy=True)
        self._pos = state_dict["kept_position"]
        self._steps = state_dict["kept_steps"]
        self._report = copy.deepcopy(state_dict["report"])
        self._t_first = self._t_last = None
