"""Online importance sampling (Salaün et al. 2025) and the loss-based baseline.

A persistent per-sample importance memory ``q`` lives on the training device, in the leaves
of a :class:`~is_kernels.SumTree`; it is updated from the scores of the forward pass of the
batches trained on (no dataset-wide scoring pass). Choices this project makes where the
paper is silent (ALGORITHMS.md §3):

- warm-up: the first ``warmup_epochs`` epochs are uniform permutations (weights 1), so every
  sample is scored once; a sample's first score replaces its initial importance (1.0);
- update: ``q_i <- m·q_i + (1 - m)·s_i`` for the trained indices (``m = momentum``);
- draws: b i.i.d. indices from the defensive mixture ``p_i = (1-λ)·q_i/Σq + λ/N``
  (``λ = uniform_mix``), weights ``w_i = 1/(N·p_i) <= 1/λ`` when ``unbiased`` (else 1: the
  paper's "adaptive sampling" variant).

No step synchronises with the host: the mixture, the weights and the memory update are
device ops, and the sum tree samples and updates in O(b log N).
"""
from __future__ import annotations

import operator
from typing import Any, Dict, Optional, Tuple

import torch

from .samplers import DeviceLike, Sampler, ScoreFn, UniformSampler
from .sum_tree import SumTree

__all__ = ["OnlineImportanceSampler", "LossImportanceSampler"]


class OnlineImportanceSampler(Sampler):
    """Importance sampling from a persistent, online-updated importance memory.

    Args:
        num_samples: dataset size N.
        batch_size: indices per draw b.
        momentum: ``m`` in ``[0, 1)`` of the memory update ``q <- m·q + (1-m)·s``.
        uniform_mix: ``λ`` in ``(0, 1]`` when ``unbiased`` (bounds the weights by ``1/λ``),
            in ``[0, 1]`` otherwise.
        unbiased: weights ``1/(N p_i)`` (unbiased gradient) or 1 (adaptive, biased).
        warmup_epochs: uniform epochs before importance sampling starts.
        device, generator: where the memory and draws live; the generator of every draw.

    Example::

        s = OnlineImportanceSampler(len(X), 128, device="cuda")
        for step in range(steps):
            idx, w = s.sample()
            loss, score = is_kernels.cross_entropy_with_score(model(X[idx]), Y[idx],
                                                              reduction="none")
            (w * loss).mean().backward(); opt.step(); opt.zero_grad()
            s.update(idx, score)
    """

    score_type = "output_grad"

    def __init__(self, num_samples: int, batch_size: int, *, momentum: float = 0.2,
                 uniform_mix: float = 0.1, unbiased: bool = True, warmup_epochs: int = 1,
                 device: DeviceLike = None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(num_samples, batch_size, device=device, generator=generator)
        name = type(self).__name__
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"{name}: uniform_mix must be in [0, 1], got {uniform_mix}")
        if unbiased and uniform_mix == 0.0:
            raise ValueError(f"{name}: uniform_mix must be > 0 when unbiased (the weights "
                             f"1/(N p_i) are bounded by 1/uniform_mix)")
        warmup_epochs = operator.index(warmup_epochs)
        if warmup_epochs < 0:
            raise ValueError(f"{name}: warmup_epochs must be >= 0, got {warmup_epochs}")
        self.momentum = float(momentum)
        self.uniform_mix = float(uniform_mix)
        self.unbiased = bool(unbiased)
        self.warmup_epochs = warmup_epochs
        self.tree = SumTree(self.num_samples, device=self.device, dtype=torch.float32)
        self.tree.build(torch.ones(self.num_samples, device=self.device))
        self._seen = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
        self._warmup = UniformSampler(self.num_samples, self.batch_size, device=self.device,
                                      generator=self.generator)
        self._step_in_epoch = 0

    @property
    def in_warmup(self) -> bool:
        """Whether the next draw is a uniform warm-up draw."""
        next_epoch = self.epoch + (self._step_in_epoch >= len(self))
        return next_epoch < self.warmup_epochs

    @property
    def importance(self) -> torch.Tensor:
        """The importance memory ``q`` (float32 ``[N]``, a view of the sum-tree leaves)."""
        return self.tree.values

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._step_in_epoch = 0
        self._warmup.set_epoch(epoch)

    def _draw(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws b indices (a permutation slice during warm-up) and their weights."""
        if self._step_in_epoch >= len(self):
            self.set_epoch(self.epoch + 1)
        warmup = self.in_warmup
        self._step_in_epoch += 1
        if warmup:
            return self._warmup._draw()
        b, n, dev = self.batch_size, self.num_samples, self.device
        from_uniform = torch.rand(b, device=dev, generator=self.generator) < self.uniform_mix
        uniform = torch.randint(n, (b,), device=dev, generator=self.generator)
        # An all-zero memory draws -1 (no error, no sync): those draws fall back to uniform.
        drawn = self.tree.sample(b, generator=self.generator, empty="minus_one")
        idx = torch.where(from_uniform | (drawn < 0), uniform, drawn)
        if not self.unbiased:
            return idx, torch.ones(b, dtype=torch.float32, device=dev)
        return idx, 1.0 / (n * self._mixture(self.importance[idx]))

    def _mixture(self, q: torch.Tensor) -> torch.Tensor:
        """``p = (1-λ)·q/Σq + λ/N`` for importance values ``q`` (device ops only); ``1/N``
        when ``Σq = 0`` (the draws are then uniform, see :meth:`_draw`)."""
        total = self.tree.total().float()
        q_part = torch.where(total > 0, q / total, 1.0 / self.num_samples)
        return (1.0 - self.uniform_mix) * q_part + self.uniform_mix / self.num_samples

    def probabilities(self) -> torch.Tensor:
        if self.in_warmup:
            return self._warmup.probabilities()
        return self._mixture(self.importance)

    def _update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        scores = scores.to(torch.float32)
        old = self.importance[idx]
        new = torch.where(self._seen[idx], self.momentum * old + (1.0 - self.momentum) * scores,
                          scores)
        self.tree.update(idx, new)
        self._seen[idx] = True

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(tree=self.tree.state_dict(), seen=self._seen.cpu().clone(),
                  warmup=self._warmup.state_dict(), step_in_epoch=self._step_in_epoch)
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        seen = state_dict.get("seen")
        if not isinstance(seen, torch.Tensor) or seen.shape != (self.num_samples,):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state_dict['seen'] must "
                             f"be a bool tensor of shape ({self.num_samples},)")
        super().load_state_dict(state_dict)
        self.tree.load_state_dict(state_dict["tree"])
        self._warmup.load_state_dict(state_dict["warmup"])
        self._seen.copy_(seen)
        self._step_in_epoch = int(state_dict["step_in_epoch"])


class LossImportanceSampler(OnlineImportanceSampler):
    """The classic baseline: the same online memory, scored by the per-sample loss.

    :meth:`update` takes per-sample losses (``score_type == "loss"``) instead of
    output-gradient norms; everything else is :class:`OnlineImportanceSampler`.
    """

    score_type = "loss"
