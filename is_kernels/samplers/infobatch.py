"""InfoBatch (Qin et al., ICLR 2024): unbiased random pruning of below-mean-loss samples.

The score is the latest loss; each pruning epoch skips each below-mean sample with
probability r and weights the kept below-mean ones by ``1/(1-r)`` (the epoch's weighted loss
sum is unbiased); no pruning in the last ``(1-δ)`` of the epochs. An epoch's length is known
at its start only (see :mod:`is_kernels.samplers.pruned_epochs`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from .._checks import fraction, int_at_least, real
from .base import DeviceLike, Sampler, ScoreFn
from .pruned_epochs import PrunedEpochs

__all__ = ["InfoBatchSampler"]


class InfoBatchSampler(PrunedEpochs, Sampler):
    """InfoBatch (Qin et al., ICLR 2024): unbiased random pruning of below-mean samples.

    The score of a sample is its latest loss (``score_type == "loss"``); all start equal, so
    the first epoch prunes nothing. In each epoch ``e < delta·epochs``, every sample whose
    score is below the mean score is skipped with probability ``prune_ratio`` = r,
    independently (the generator's draws), and the kept ones of them get loss weight
    ``1/(1-r)``, the others 1: over the random pruning, ``E[Σ_kept w_i·x_i] = Σ_i x_i``.
    The last ``(1-delta)`` of the epochs train on everything. Each epoch is a permutation of
    its kept samples; its length is known when it starts (not before: it depends on the
    scores).

    Args:
        num_samples, batch_size: N and b.
        epochs: the planned number of epochs E.
        prune_ratio: r in ``[0, 1)`` (InfoBatch's default 0.5).
        delta: δ in ``(0, 1]`` (default 0.875).
        device, generator: see :class:`~is_kernels.Sampler`.
    """

    score_type = "loss"

    def __init__(self, num_samples: int, batch_size: int, *, epochs: int,
                 prune_ratio: float = 0.5, delta: float = 0.875, device: DeviceLike = None,
                 generator: Optional[torch.Generator] = None) -> None:
        name = type(self).__name__
        self.epochs = int_at_least(name, "epochs", epochs, 1)
        self.prune_ratio = fraction(name, "prune_ratio", prune_ratio)
        if not 0.0 < real(name, "delta", delta) <= 1.0:
            raise ValueError(f"{name}: delta must be in (0, 1], got {delta}")
        self.delta = float(delta)
        super().__init__(num_samples, batch_size, device=device, generator=generator)
        self._scores = torch.ones(self.num_samples, dtype=torch.float32, device=self.device)
        self._init_epochs()

    @property
    def scores(self) -> torch.Tensor:
        """float32 ``[N]``: the latest loss of each sample (1 before its first update)."""
        return self._scores

    def is_pruning_epoch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` may prune (``epoch < delta·epochs``)."""
        epoch = int_at_least(f"{type(self).__name__}.is_pruning_epoch", "epoch", epoch, 0)
        return epoch < self.delta * self.epochs

    def steps_in_epoch(self, epoch: int) -> int:
        """Steps of epoch ``epoch``: known for the current epoch and the epochs that do not
        prune; raises ``ValueError`` for a future pruning epoch (it depends on the scores)."""
        epoch = int_at_least(f"{type(self).__name__}.steps_in_epoch", "epoch", epoch, 0)
        if epoch == self.epoch:
            return math.ceil(self.num_kept / self.batch_size)
        if not self.is_pruning_epoch(epoch):
            return self.full_steps
        raise ValueError(f"{type(self).__name__}.steps_in_epoch: epoch {epoch}'s length depends "
                         f"on the scores; it is known when it starts")

    def _select(self, epoch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.is_pruning_epoch(epoch):
            return torch.ones(self.num_samples, dtype=torch.bool, device=self.device), None
        below = self._scores < self._scores.mean()
        skipped = below & (torch.rand(self.num_samples, device=self.device,
                                      generator=self.generator) < self.prune_ratio)
        weights = torch.where(below, 1.0 / (1.0 - self.prune_ratio), 1.0).to(torch.float32)
        return ~skipped, weights

    def _draw(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the epoch's permutation (``score_fn`` is ignored)."""
        self._begin_draw()
        return self._next_batch()

    def probabilities(self) -> torch.Tensor:
        return self._kept_probabilities()

    def _update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        self._scores[idx] = scores.detach().to(torch.float32)

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "epochs": self.epochs, "prune_ratio": self.prune_ratio,
                "delta": self.delta}

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(scores=self._scores.cpu().clone())
        return sd

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        super()._check_state_dict(op, state_dict)
        scores = state_dict["scores"]
        valid = isinstance(scores, torch.Tensor) and scores.shape == (self.num_samples,) \
            and scores.dtype.is_floating_point
        if valid:
            kept = scores.to(torch.float32)  # as the sampler keeps them
            valid = bool(((kept >= 0) & (kept < math.inf)).all())
        if not valid:
            raise ValueError(f"{op}: state_dict['scores'] must be a tensor of "
                             f"{self.num_samples} scores >= 0, finite in float32")

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        super()._load_state(state_dict)
        self._scores = state_dict["scores"].to(self.device, torch.float32, copy=True)
