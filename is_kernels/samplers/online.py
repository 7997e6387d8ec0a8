"""Online importance sampling (Salaün et al. 2025) and the loss-based baseline.

A persistent per-sample importance memory ``q`` lives on the training device, in the leaves
of a :class:`~is_kernels.SumTree`; it is updated from the scores of the forward pass of the
batches trained on (no dataset-wide scoring pass). Choices this project makes where the
paper is silent (docs/algorithms.md, "Online importance sampling"):

- warm-up: the first ``warmup_epochs`` epochs are uniform permutations (weights 1), so every
  sample is scored once; a sample's first score replaces its initial importance (1.0);
- update: ``q_i <- m·q_i + (1 - m)·s_i`` for the trained indices (``m = momentum``);
- draws: b i.i.d. indices from the defensive mixture ``p_i = (1-λ)·q_i/Σq + λ/N``
  (``λ = uniform_mix``), weights ``w_i = 1/(N·p_i) <= 1/λ`` when ``unbiased`` (else 1: the
  paper's "adaptive sampling" variant);
- active set (:meth:`OnlineImportanceSampler.set_active`, used by online pruning): draws
  come from the n active samples only, ``p_i = (1-λ)·q_i/Σ_active q + λ/n``, weights
  ``1/(n·p_i)`` (unbiased for the mean over the active set); an inactive sample's sum-tree
  leaf is 0 while its memory value is kept, and restored when it is re-activated.

A step costs two ops, ``torch.ops.is_kernels.online_is_draw`` (sum-tree descent, mixture,
weights) and ``online_is_update`` (checks, memory update, sum-tree leaves and ancestors):
C++ on CPU, Triton on CUDA (:mod:`is_kernels.ops.online_is`). No step synchronises with the
host on CUDA; draws and updates cost O(b log N).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from .._checks import MAX_SIZE, flag, int_at_least, real, state_int
from ..ops.cuda_path import uses_cuda_path
from ..ops.online_is import mixture
from ..ops.sum_tree import SumTree
from .base import DeviceLike, Sampler, ScoreFn
from .uniform import UniformSampler

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
        warmup_epochs: uniform epochs before importance sampling starts (permutations of
            the N samples, or i.i.d. uniform draws when ``batch_size > num_samples``).
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
        if self.num_samples > MAX_SIZE:  # the importance memory is a tree of int32 indices
            raise ValueError(f"{name}: num_samples must be at most 2**31 - 1, got "
                             f"{self.num_samples}")
        momentum, uniform_mix = real(name, "momentum", momentum), \
            real(name, "uniform_mix", uniform_mix)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"{name}: uniform_mix must be in [0, 1], got {uniform_mix}")
        unbiased = flag(name, "unbiased", unbiased)
        if unbiased and uniform_mix == 0.0:
            raise ValueError(f"{name}: uniform_mix must be > 0 when unbiased (the weights "
                             f"1/(N p_i) are bounded by 1/uniform_mix)")
        warmup_epochs = int_at_least(name, "warmup_epochs", warmup_epochs, 0)
        self.momentum = float(momentum)
        self.uniform_mix = float(uniform_mix)
        self.unbiased = unbiased
        self.warmup_epochs = warmup_epochs
        self.tree = SumTree(self.num_samples, device=self.device, dtype=torch.float32)
        self.tree.build(torch.ones(self.num_samples, device=self.device))
        self._memory = torch.ones(self.num_samples, device=self.device)
        self._active = torch.ones(self.num_samples, dtype=torch.bool, device=self.device)
        self._active_idx = torch.arange(self.num_samples, device=self.device)
        self._seen = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
        self._warmup = UniformSampler(self.num_samples, self.batch_size,
                                      replacement=self.batch_size > self.num_samples,
                                      device=self.device, generator=self.generator)
        self._step_in_epoch = 0

    @property
    def in_warmup(self) -> bool:
        """Whether the next draw is a uniform warm-up draw."""
        next_epoch = self.epoch + (self._step_in_epoch >= len(self))
        return next_epoch < self.warmup_epochs

    @property
    def importance(self) -> torch.Tensor:
        """The importance memory ``q`` (float32 ``[N]``, inactive samples included; the
        sum-tree leaves hold ``q`` where active and 0 elsewhere). Read-only: use
        :meth:`update`."""
        return self._memory

    @property
    def active(self) -> torch.Tensor:
        """bool ``[N]``: the samples importance draws may return (all, unless
        :meth:`set_active` restricted them)."""
        return self._active

    @property
    def num_active(self) -> int:
        """The number n of active samples."""
        return self._active_idx.shape[0]

    def set_active(self, mask: Optional[torch.Tensor]) -> None:
        """Restricts the importance draws to the samples where ``mask`` is True.

        Inactive samples are never drawn: their sum-tree leaves are set to 0, their memory
        is kept (scores that still arrive for them, e.g. from a prefetched draw, update it)
        and their leaves get it back when they are re-activated. The uniform part of the
        mixture covers the active samples only and the weights become ``1/(n·p_i)``.
        Warm-up draws (uniform permutations of all N) ignore the active set.

        Args:
            mask: bool ``[N]`` on :attr:`device` with at least one True; ``None`` = all.

        One host sync (the count of active samples), so call it between epochs, not per
        step. Raises ``TypeError``/``ValueError`` naming ``mask``; the sampler is then
        unchanged.
        """
        op = f"{type(self).__name__}.set_active"
        if mask is None:
            mask = torch.ones(self.num_samples, dtype=torch.bool, device=self.device)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"{op}: mask must be a bool tensor or None, got {got}")
        if mask.shape != (self.num_samples,) or mask.device != self.device:
            raise ValueError(f"{op}: mask must have shape ({self.num_samples},) and live on "
                             f"{self.device}, got {tuple(mask.shape)} on {mask.device}")
        active_idx = mask.nonzero().squeeze(1)
        if active_idx.shape[0] == 0:
            raise ValueError(f"{op}: mask must keep at least one sample active, got all False")
        self._active = mask.clone()
        self._active_idx = active_idx
        self.tree.build(torch.where(self._active, self._memory, 0.0))

    def _set_epoch(self, epoch: int) -> None:
        super()._set_epoch(epoch)
        self._step_in_epoch = 0
        self._warmup._set_epoch(epoch)

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "momentum": self.momentum,
                "uniform_mix": self.uniform_mix, "unbiased": self.unbiased,
                "warmup_epochs": self.warmup_epochs}

    def _draw(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws b indices (a permutation slice during warm-up) and their weights."""
        if self._step_in_epoch >= len(self):
            self._set_epoch(self.epoch + 1)
        warmup = self.in_warmup
        self._step_in_epoch += 1
        if warmup:
            return self._warmup._draw()
        return self._importance_draw()

    def _importance_draw(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """b i.i.d. indices from the mixture over the active samples, and their weights: one
        ``online_is_draw`` op on three rows of uniforms (tree descent, mixture coin, uniform
        pick). An all-zero memory makes every draw uniform (no error, no sync)."""
        u = torch.rand((3, self.batch_size), dtype=torch.float64, device=self.device,
                       generator=self.generator)
        return torch.ops.is_kernels.online_is_draw(
            self.tree._leaves, self.tree._inner, self._memory, self._active_idx, u,
            self.uniform_mix, self.unbiased)

    def probabilities(self) -> torch.Tensor:
        if self.in_warmup:
            return self._warmup.probabilities()
        p = mixture(self.importance, self.tree.total(), self.num_active, self.uniform_mix)
        return torch.where(self._active, p, 0.0)

    @property
    def _update_checks_values(self) -> bool:
        return not uses_cuda_path(self.device)  # the C++ op checks before it writes

    def _update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """``q <- m·q + (1-m)·s`` for ``idx`` (a first score replaces the initial value) and
        the sum-tree leaves of the active ones: one ``online_is_update`` op."""
        try:
            torch.ops.is_kernels.online_is_update(
                self._memory, self._seen, self._active, self.tree._leaves, self.tree._inner,
                idx.contiguous(), scores.to(torch.float32).contiguous(), self.momentum)
        except ValueError as e:  # the op checks before it writes: nothing changed
            raise ValueError(f"{type(self).__name__}.update: {e}") from None

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(memory=self._memory.cpu().clone(), active=self._active.cpu().clone(),
                  seen=self._seen.cpu().clone(), warmup=self._warmup.state_dict(),
                  step_in_epoch=self._step_in_epoch)
        return sd

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        super()._check_state_dict(op, state_dict)
        n = self.num_samples
        for key, dtype in (("memory", torch.float32), ("active", torch.bool),
                           ("seen", torch.bool)):
            value = state_dict[key]
            if not isinstance(value, torch.Tensor) or value.shape != (n,) \
                    or value.dtype != dtype:
                raise ValueError(f"{op}: state_dict[{key!r}] must be a {dtype} tensor of "
                                 f"shape ({n},)")
        memory = state_dict["memory"]
        if not bool((torch.isfinite(memory) & (memory >= 0)).all()):
            raise ValueError(f"{op}: state_dict['memory'] must be finite and >= 0")
        if not bool(state_dict["active"].any()):
            raise ValueError(f"{op}: state_dict['active'] must keep at least one sample active")
        state_int(op, state_dict, "step_in_epoch", 0)
        if not isinstance(state_dict["warmup"], dict):
            raise TypeError(f"{op}: state_dict['warmup'] must be a dict, "
                            f"got {type(state_dict['warmup']).__name__}")
        self._warmup._check_state_dict(op, state_dict["warmup"])

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        """Applies a checked state; the sum tree is rebuilt from the memory and active set."""
        super()._load_state(state_dict)
        self._warmup.load_state_dict(state_dict["warmup"])
        self._memory.copy_(state_dict["memory"])
        self._seen.copy_(state_dict["seen"])
        self._step_in_epoch = int(state_dict["step_in_epoch"])
        self.set_active(state_dict["active"].to(self.device))


class LossImportanceSampler(OnlineImportanceSampler):
    """The classic baseline: the same online memory, scored by the per-sample loss.

    :meth:`update` takes per-sample losses (``score_type == "loss"``) instead of
    output-gradient norms; everything else is :class:`OnlineImportanceSampler`.
    """

    score_type = "loss"
