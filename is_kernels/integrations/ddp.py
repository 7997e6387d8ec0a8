"""``torch.distributed`` (DDP) integration: one global batch, a shard per rank.

Every rank holds the same sampler, seeded identically, so every rank draws the same global
batch of b indices; rank r trains on the r-th contiguous slice of ``b / world_size``. After
the step the ranks all-gather their scores, and every rank updates its memory with the
whole global batch: the memories stay identical, and training equals a single-process run
with the global batch (DDP averages the gradients of the per-rank means; when b is not a
multiple of the world size, each shard's weights carry the factor that makes that average
the global batch's mean).

.. code-block:: python

    g = torch.Generator(device).manual_seed(0)         # the same seed on every rank
    sampler = is_kernels.ShardedSampler(is_kernels.OnlineImportanceSampler(N, 256, generator=g))
    idx, w = sampler.sample()                          # this rank's shard
    loss, score = is_kernels.cross_entropy_with_score(ddp_model(X[idx]), Y[idx],
                                                      reduction="none")
    (w * loss).mean().backward(); opt.step(); opt.zero_grad()
    sampler.update(idx, score)                         # all-gathers, updates every replica
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .._checks import int_at_least
from ..samplers.base import Sampler, ScoreFn

__all__ = ["ShardedSampler"]


def _all_gather_cat(local: torch.Tensor, sizes: List[int], group) -> torch.Tensor:
    """Concatenation over ranks (in rank order) of 1-D tensors of the given sizes."""
    width = max(sizes)
    padded = torch.zeros(width, dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class ShardedSampler:
    """Wraps a sampler for data-parallel training: same global draws, one shard per rank.

    Args:
        sampler: the replica of this rank; build it with the same arguments and the same
            generator seed on every rank.
        num_replicas, rank, group: default to the default process group's.

    ``sample`` returns this rank's shard ``(idx, w)``; ``update(idx, scores)`` takes this
    rank's shard and its scores (it all-gathers; every rank must call it). DLIS's
    ``score_fn`` is sharded too: each rank scores its slice of the presample.

    Shards are ``tensor_split`` slices: with n indices drawn and k ranks, their sizes n_r
    differ by one when k does not divide n (e.g. an epoch's short last batch). The weights
    of shard r are then the sampler's times ``n_r·k/n``, so that DDP's average of the
    per-rank ``(w * loss).mean()`` equals the global batch's. A rank whose shard is empty
    (n < k) gets empty tensors, whose mean is NaN: keep the global batch >= the world size.
    """

    def __init__(self, sampler: Sampler, *, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None,
                 group: Optional[dist.ProcessGroup] = None) -> None:
        if not isinstance(sampler, Sampler):
            raise TypeError(f"ShardedSampler: sampler must be an is_kernels Sampler, "
                            f"got {type(sampler).__name__}")
        self.sampler = sampler
        self.group = group
        self.num_replicas = int_at_least("ShardedSampler", "num_replicas", num_replicas, 1) \
            if num_replicas is not None else dist.get_world_size(group)
        self.rank = int_at_least("ShardedSampler", "rank", rank, 0) if rank is not None \
            else dist.get_rank(group)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"ShardedSampler: rank must be in [0, {self.num_replicas}), "
                             f"got {self.rank}")
        self._global_idx: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        """Steps per epoch: the wrapped sampler's."""
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` of the wrapped sampler (see :meth:`Sampler.set_epoch`)."""
        self.sampler.set_epoch(epoch)

    def _sizes(self, n: int) -> List[int]:
        """Shard sizes of ``tensor_split(n, num_replicas)``: the first n % k get one more."""
        k = self.num_replicas
        return [n // k + (r < n % k) for r in range(k)]

    def _shard(self, x: torch.Tensor) -> torch.Tensor:
        return x.tensor_split(self.num_replicas)[self.rank]

    def sample(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws the global batch (identical on every rank) and returns this rank's shard."""
        sharded_fn = None
        if score_fn is not None:
            def sharded_fn(cand: torch.Tensor) -> torch.Tensor:
                local = score_fn(self._shard(cand))
                return _all_gather_cat(local.detach().float(), self._sizes(cand.shape[0]),
                                       self.group)
        idx, w = self.sampler.sample(sharded_fn)
        self._global_idx = idx
        n, local_idx, local_w = idx.shape[0], self._shard(idx), self._shard(w)
        if n % self.num_replicas:
            local_w = local_w * (local_idx.shape[0] * self.num_replicas / n)
        return local_idx, local_w

    def update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """All-gathers every rank's scores and updates this replica with the global batch."""
        self.sampler._check_update(idx, scores)  # types, dtypes, shapes, device
        if self._global_idx is None:
            raise RuntimeError("ShardedSampler.update: no draw to update (call sample first)")
        expected = self._shard(self._global_idx)
        if idx.shape != expected.shape or not (idx is expected or torch.equal(idx, expected)):
            raise ValueError("ShardedSampler.update: idx must be this rank's shard of the last "
                             "draw, as returned by sample()")
        gathered = _all_gather_cat(scores.detach().float(),
                                   self._sizes(self._global_idx.shape[0]), self.group)
        self.sampler.update(self._global_idx, gathered)  # on error, the draw stays pending
        self._global_idx = None

    def probabilities(self) -> torch.Tensor:
        """The wrapped sampler's probabilities of the global draw."""
        return self.sampler.probabilities()

    def state_dict(self) -> Dict[str, Any]:
        """The wrapped sampler's state (the same on every rank)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the wrapped sampler's state (load the same one on every rank)."""
        self.sampler.load_state_dict(state_dict)
