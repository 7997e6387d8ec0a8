"""Online data pruning driven by the importance memory (Salaün et al. 2025).

The online importance memory of :class:`~is_kernels.OnlineImportanceSampler`
(output-gradient scores, momentum) decides which samples an epoch keeps. Warm-up epochs
prune nothing (every sample gets scored); then each epoch prunes the
``round(prune_fraction·N)`` lowest-importance samples, except those pruned for
``max_stale_epochs`` consecutive epochs, which are re-admitted for one epoch so that their
stale score gets refreshed; the last ``anneal_epochs`` train on everything. With a fixed
fraction every epoch's length is known at construction (:meth:`steps_in_epoch`, what
``OneCycleLR(total_steps=...)`` needs). Kept samples are drawn uniformly (weights 1), or
importance-sampled from the memory restricted to them (``importance_sampling=True``).
The epochs themselves: :mod:`is_kernels.samplers.pruned_epochs`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from .._checks import flag, fraction, int_at_least, real
from ..ops.online_is import mixture
from .base import DeviceLike, ScoreFn
from .online import OnlineImportanceSampler
from .pruned_epochs import PrunedEpochs

__all__ = ["ImportancePruningSampler"]


class ImportancePruningSampler(PrunedEpochs, OnlineImportanceSampler):
    """Online data pruning driven by the importance memory (Salaün et al.).

    Args:
        num_samples: dataset size N.
        batch_size: indices per draw b.
        epochs: the planned number of epochs E (annealing is its last ``anneal_epochs``;
            epochs past E train on everything).
        prune_fraction: in ``[0, 1)``: samples pruned per pruning epoch,
            ``k = round(prune_fraction·N)`` (must be < N); with ``dynamic_threshold``, the
            maximum.
        dynamic_threshold: ``None`` (prune exactly k) or ``c > 0``: prune the samples whose
            importance is below ``c·mean(q)``, at most k; then an epoch's length is known
            only at its start.
        warmup_epochs: >= 1 epochs over all data (every sample is scored) before pruning.
        anneal_epochs: >= 0 last epochs (of E) over all data.
        max_stale_epochs: >= 1: a sample pruned this many consecutive epochs is re-admitted
            for one epoch (its score gets refreshed). Samples are ranked by (stale, q), so
            exactly k are pruned even if some stale ones must stay out (when
            ``prune_fraction > max_stale_epochs / (max_stale_epochs + 1)``).
        unbiased: ``False`` (default): prune exactly the k lowest-importance samples, weights
            1 (the paper's rule; the kept samples' gradient is biased towards them).
            ``True``: keep exactly ``N - k`` samples at random, sample i with probability
            ``π_i = clip(c·p_i, min_keep_probability, 1)`` (``p`` the memory's mixture, see
            ``importance_sampling``; ``c`` such that ``Σπ = N - k``; systematic sampling over
            a random order keeps exactly ``N - k``), with loss weight ``1/π_i``: the epoch's
            weighted loss sum is unbiased for the full data's (InfoBatch's rescaling, with
            keep probabilities from the importance memory). Every sample keeps ``π >=
            min_keep_probability``, so ``max_stale_epochs`` does not apply.
        min_keep_probability: the floor of ``π`` with ``unbiased=True`` (weights <= its
            inverse), in ``(0, (N - k)/N]`` (``1 - prune_fraction`` up to the rounding of
            k); ``None`` (default): ``min(0.5, (N - k)/N)`` (on Fashion-MNIST floors of
            0.4–0.55 tested best, 0.3 worse, see docs/pruning.md).
        importance_sampling: ``False``: each epoch is a permutation of the kept samples,
            weights 1. ``True``: after warm-up, each step draws b indices i.i.d. from the
            memory's mixture restricted to the kept samples,
            ``p_i = (1-λ)·q_i/Σ_kept q + λ/kept``, weights ``1/(kept·p_i)`` (unbiased for the
            kept samples' mean; a re-admitted sample is then drawn with probability, not
            surely).
        momentum, uniform_mix: of the memory, see :class:`~is_kernels.OnlineImportanceSampler`.
            ``uniform_mix=None`` (default): 0.5 with ``importance_sampling`` (weights <= 2:
            the memory's 0.1 allows weights up to 10, which lost whole runs at lr 0.05 on
            Fashion-MNIST; 0.5 gained 0.35 points over InfoBatch there, docs/pruning.md),
            else 0.1 (the mixture behind the ``unbiased`` keep probabilities).
        device, generator: see :class:`~is_kernels.Sampler`.

    Example (OneCycleLR needs the total number of steps in advance)::

        s = ImportancePruningSampler(len(X), 128, epochs=10, prune_fraction=0.4)
        sched = OneCycleLR(opt, 0.1, total_steps=sum(s.steps_in_epoch(e) for e in range(10)))
        for epoch in range(10):
            s.set_epoch(epoch)
            for _ in range(len(s)):
                idx, w = s.sample()
                loss, score = is_kernels.cross_entropy_with_score(model(X[idx]), Y[idx],
                                                                  reduction="none")
                (w * loss).mean().backward(); opt.step(); opt.zero_grad(); sched.step()
                s.update(idx, score)
    """

    score_type = "output_grad"

    def __init__(self, num_samples: int, batch_size: int, *, epochs: int,
                 prune_fraction: float = 0.4, dynamic_threshold: Optional[float] = None,
                 warmup_epochs: int = 1, anneal_epochs: int = 1, max_stale_epochs: int = 3,
                 unbiased: bool = False, min_keep_probability: Optional[float] = None,
                 importance_sampling: bool = False, momentum: float = 0.2,
                 uniform_mix: Optional[float] = None, device: DeviceLike = None,
                 generator: Optional[torch.Generator] = None) -> None:
        name = type(self).__name__
        self.epochs = int_at_least(name, "epochs", epochs, 1)
        self.prune_fraction = fraction(name, "prune_fraction", prune_fraction)
        if dynamic_threshold is not None and \
                not 0.0 < real(name, "dynamic_threshold", dynamic_threshold) < math.inf:
            raise ValueError(f"{name}: dynamic_threshold must be None or a finite number > 0, "
                             f"got {dynamic_threshold}")
        self.dynamic_threshold = None if dynamic_threshold is None else float(dynamic_threshold)
        warmup_epochs = int_at_least(name, "warmup_epochs", warmup_epochs, 1)
        self.anneal_epochs = int_at_least(name, "anneal_epochs", anneal_epochs, 0)
        self.max_stale_epochs = int_at_least(name, "max_stale_epochs", max_stale_epochs, 1)
        self.importance_sampling = flag(name, "importance_sampling", importance_sampling)
        self.unbiased_pruning = flag(name, "unbiased", unbiased)
        if self.unbiased_pruning and (self.importance_sampling or dynamic_threshold is not None):
            raise ValueError(f"{name}: unbiased=True keeps N - k samples at random with weights "
                             f"1/π; it combines with neither importance_sampling nor "
                             f"dynamic_threshold")
        if uniform_mix is None:
            uniform_mix = 0.5 if self.importance_sampling else 0.1
        super().__init__(num_samples, batch_size, momentum=momentum, uniform_mix=uniform_mix,
                         warmup_epochs=warmup_epochs, device=device, generator=generator)
        self.max_pruned = round(self.prune_fraction * self.num_samples)
        if self.max_pruned >= self.num_samples:
            raise ValueError(f"{name}: prune_fraction {self.prune_fraction} would prune all "
                             f"{self.num_samples} samples (round(prune_fraction·N) must be < N)")
        # The kept fraction (N - k)/N bounds the floor: Σπ = N - k with every π >= floor.
        kept_fraction = (self.num_samples - self.max_pruned) / self.num_samples
        self.min_keep_probability = min(0.5, kept_fraction) \
            if min_keep_probability is None \
            else real(name, "min_keep_probability", min_keep_probability)
        if not 0.0 <= self.min_keep_probability <= 1.0:
            raise ValueError(f"{name}: min_keep_probability must be in [0, 1] (a probability), "
                             f"got {min_keep_probability}")
        if self.unbiased_pruning and not 0.0 < self.min_keep_probability <= kept_fraction:
            raise ValueError(f"{name}: min_keep_probability must be in (0, (N - k)/N] = "
                             f"(0, {kept_fraction:g}] (k = round(prune_fraction·N) = "
                             f"{self.max_pruned}), got {min_keep_probability}")
        self._stale = torch.zeros(self.num_samples, dtype=torch.int64, device=self.device)
        self._init_epochs()

    def is_pruning_epoch(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` prunes (it is neither warm-up nor annealing)."""
        epoch = int_at_least(f"{type(self).__name__}.is_pruning_epoch", "epoch", epoch, 0)
        return self.warmup_epochs <= epoch < self.epochs - self.anneal_epochs

    def steps_in_epoch(self, epoch: int) -> int:
        """Steps of epoch ``epoch``: known for every epoch with a fixed ``prune_fraction``
        (the pruned count is exactly k), for the current epoch and the epochs that do not
        prune with ``dynamic_threshold``; raises ``ValueError`` otherwise."""
        epoch = int_at_least(f"{type(self).__name__}.steps_in_epoch", "epoch", epoch, 0)
        if epoch == self.epoch:
            return math.ceil(self.num_kept / self.batch_size)
        if not self.is_pruning_epoch(epoch):
            return self.full_steps
        if self.dynamic_threshold is None:
            return math.ceil((self.num_samples - self.max_pruned) / self.batch_size)
        raise ValueError(f"{type(self).__name__}.steps_in_epoch: epoch {epoch}'s length depends "
                         f"on the scores (dynamic_threshold); it is known when it starts")

    def _select(self, epoch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.is_pruning_epoch(epoch):
            self._stale.zero_()
            return torch.ones(self.num_samples, dtype=torch.bool, device=self.device), None
        if self.unbiased_pruning:
            kept, weights = self._select_at_random()
        else:
            kept, weights = self._select_lowest(), None
        self._stale = torch.where(kept, 0, self._stale + 1)
        return kept, weights

    def _select_lowest(self) -> torch.Tensor:
        """The kept mask without the k lowest-importance prunable samples (at most k with
        ``dynamic_threshold``); stale samples are not prunable."""
        kept = torch.ones(self.num_samples, dtype=torch.bool, device=self.device)
        q = self.importance
        prunable = (self._stale < self.max_stale_epochs) & self._seen
        count = self.max_pruned
        if self.dynamic_threshold is not None:
            prunable &= q < self.dynamic_threshold * q.mean()
            count = min(count, int(prunable.sum()))
        by_q = torch.argsort(q, stable=True)
        ranked = by_q[torch.argsort((~prunable[by_q]).to(torch.uint8), stable=True)]
        kept[ranked[:count]] = False
        return kept

    def keep_probabilities(self) -> torch.Tensor:
        """float64 ``[N]``: the probability ``π_i`` with which ``unbiased=True`` keeps each
        sample in the next pruning epoch, from the current memory (``Σπ = N - k``)."""
        n, kept = self.num_samples, self.num_samples - self.max_pruned
        q = self.importance.double()
        p = mixture(q, q.sum(), n, self.uniform_mix)
        floor = self.min_keep_probability
        # Σ clip(c·p, floor, 1) grows with c from n·floor <= kept (c = 0) to n (c = 1/min p):
        # bisection on the device, no host sync.
        lo, hi = torch.zeros((), dtype=torch.float64, device=self.device), 1.0 / p.min()
        for _ in range(100):
            mid = (lo + hi) / 2
            low = (mid * p).clamp(floor, 1.0).sum() < kept
            lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
        return (hi * p).clamp(floor, 1.0)

    def _select_at_random(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exactly ``N - k`` samples kept, sample i with probability ``π_i``, weights 1/π."""
        n, budget = self.num_samples, self.num_samples - self.max_pruned
        pi = self.keep_probabilities()
        sure = pi >= 1.0 - 1e-9  # kept whatever the draw
        # The others, in a random order, share the remaining budget (Σ exactly, so the
        # systematic draw below keeps exactly that many): sample i is kept when one of the
        # points u, u + 1, ... falls in its interval (S_{i-1}, S_i] of length π_i < 1.
        left = budget - sure.sum()
        rest = torch.where(sure, 0.0, pi)
        rest = rest * (left / rest.sum().clamp_min(1e-300))
        order = torch.randperm(n, device=self.device, generator=self.generator)
        cum = torch.cumsum(rest[order], 0)
        cum[-1] = left
        u = torch.rand((), dtype=torch.float64, device=self.device, generator=self.generator)
        points = torch.ceil(cum - u)
        hit = points > torch.cat([points.new_zeros(1), points[:-1]])
        kept = sure.clone()
        kept[order] |= hit
        pi = torch.where(sure, 1.0, rest)
        return kept, (1.0 / pi).to(torch.float32)

    def _start_epoch(self, epoch: int) -> torch.Tensor:
        kept = super()._start_epoch(epoch)
        if self.importance_sampling:
            self.set_active(kept)
        return kept

    def _draw(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the epoch (``score_fn`` is ignored)."""
        self._begin_draw()
        if self.importance_sampling and self.epoch >= self.warmup_epochs:
            return self._importance_draw()
        return self._next_batch()

    def probabilities(self) -> torch.Tensor:
        if self.importance_sampling:
            return super().probabilities()
        return self._kept_probabilities()

    @property
    def stale_epochs(self) -> torch.Tensor:
        """int64 ``[N]``: consecutive epochs each sample has been pruned (0 if kept)."""
        return self._stale

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "epochs": self.epochs,
                "prune_fraction": self.prune_fraction,
                "dynamic_threshold": self.dynamic_threshold,
                "anneal_epochs": self.anneal_epochs, "max_stale_epochs": self.max_stale_epochs,
                "unbiased_pruning": self.unbiased_pruning,
                "min_keep_probability": self.min_keep_probability,
                "importance_sampling": self.importance_sampling}

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(stale=self._stale.cpu().clone())
        return sd

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        super()._check_state_dict(op, state_dict)
        stale = state_dict["stale"]
        if not isinstance(stale, torch.Tensor) or stale.shape != (self.num_samples,) \
                or stale.dtype != torch.int64 or bool((stale < 0).any()):
            raise ValueError(f"{op}: state_dict['stale'] must be an int64 tensor >= 0 of "
                             f"shape ({self.num_samples},)")

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        super()._load_state(state_dict)
        self._stale = state_dict["stale"].to(self.device, copy=True)
