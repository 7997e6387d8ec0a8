"""Uniform sampling, the baseline: a permutation per epoch, or i.i.d. draws."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from .._checks import flag, state_indices, state_int
from .base import DeviceLike, Sampler, ScoreFn

__all__ = ["UniformSampler"]


class UniformSampler(Sampler):
    """Uniform sampling, weights 1: the baseline every importance sampler is compared to.

    Without replacement (default) each epoch is a fresh random permutation, cut into
    ``len(self)`` batches (the last one holds ``N mod b`` indices when b does not divide N),
    like ``torch.utils.data.RandomSampler``; drawing past the end of the permutation starts
    the next epoch. With replacement every draw is b i.i.d. uniform indices.
    """

    score_type = "output_grad"

    def __init__(self, num_samples: int, batch_size: int, *, replacement: bool = False,
                 device: DeviceLike = None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(num_samples, batch_size, device=device, generator=generator)
        replacement = flag("UniformSampler", "replacement", replacement)
        if not replacement and self.batch_size > self.num_samples:
            raise ValueError(f"UniformSampler: batch_size ({self.batch_size}) must not exceed "
                             f"num_samples ({self.num_samples}) without replacement")
        self.replacement = replacement
        self._perm: Optional[torch.Tensor] = None
        self._pos = 0

    def _draw(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws the next batch (``score_fn`` is ignored); weights are all 1."""
        if self.replacement:
            idx = torch.randint(self.num_samples, (self.batch_size,), device=self.device,
                                generator=self.generator)
        else:
            if self._perm is None or self._pos >= self.num_samples:
                if self._perm is not None:
                    self.epoch += 1
                self._perm = torch.randperm(self.num_samples, device=self.device,
                                            generator=self.generator)
                self._pos = 0
            idx = self._perm[self._pos:self._pos + self.batch_size].clone()
            self._pos += idx.shape[0]
        return idx, torch.ones(idx.shape[0], dtype=torch.float32, device=self.device)

    def probabilities(self) -> torch.Tensor:
        """Uniform ``1/N`` (marginally, also for a draw inside a permutation)."""
        return torch.full((self.num_samples,), 1.0 / self.num_samples, dtype=torch.float32,
                          device=self.device)

    def _set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch``: the next draw begins a fresh permutation."""
        super()._set_epoch(epoch)
        self._perm, self._pos = None, 0

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "replacement": self.replacement}

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(position=self._pos,
                  permutation=None if self._perm is None else self._perm.cpu().clone())
        return sd

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        super()._check_state_dict(op, state_dict)
        if state_dict["permutation"] is not None and \
                state_indices(op, state_dict, "permutation", self.num_samples).numel() \
                != self.num_samples:
            raise ValueError(f"{op}: state_dict['permutation'] must be a permutation of "
                             f"{self.num_samples} indices")
        state_int(op, state_dict, "position", 0, self.num_samples)

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        super()._load_state(state_dict)
        perm = state_dict["permutation"]
        self._perm = None if perm is None else perm.to(self.device, copy=True)
        self._pos = int(state_dict["position"])
