"""Registry of the compared methods: name -> factory of a :class:`~is_kernels.samplers.Sampler`.

A factory is called as ``factory(num_samples=N, batch_size=b, device=device,
generator=generator, epochs=E)`` (``E`` the planned number of epochs, for samplers with a
schedule) and returns a fresh sampler. Adding a method is one entry in :data:`METHODS`;
the training loop drives every sampler through the protocol alone.
"""
from __future__ import annotations

from typing import Dict, Protocol

import torch

from ..samplers import (ImportancePruningSampler, InfoBatchSampler, LossImportanceSampler,
                        OnlineImportanceSampler, PresampleImportanceSampler, Sampler,
                        UniformSampler)

__all__ = ["METHODS", "DEFAULT_METHODS", "MethodFactory", "make_sampler"]


class MethodFactory(Protocol):
    def __call__(self, *, num_samples: int, batch_size: int, device: torch.device,
                 generator: torch.Generator, epochs: int) -> Sampler: ...


def _uniform(*, num_samples: int, batch_size: int, device: torch.device,
             generator: torch.Generator, epochs: int) -> Sampler:
    """Baseline: a fresh random permutation per epoch, weights 1."""
    return UniformSampler(num_samples, batch_size, device=device, generator=generator)


def _online(*, num_samples: int, batch_size: int, device: torch.device,
            generator: torch.Generator, epochs: int) -> Sampler:
    """Online IS (Salaün et al.): output-gradient memory, unbiased weights."""
    return OnlineImportanceSampler(num_samples, batch_size, device=device, generator=generator)


def _adaptive(*, num_samples: int, batch_size: int, device: torch.device,
              generator: torch.Generator, epochs: int) -> Sampler:
    """Online IS without weights (the paper's biased "adaptive sampling")."""
    return OnlineImportanceSampler(num_samples, batch_size, unbiased=False, device=device,
                                   generator=generator)


def _dlis(*, num_samples: int, batch_size: int, device: torch.device,
          generator: torch.Generator, epochs: int) -> Sampler:
    """DLIS (Katharopoulos & Fleuret): presample 3b, switch on when tau > tau_th."""
    return PresampleImportanceSampler(num_samples, batch_size, device=device,
                                      generator=generator)


def _loss(*, num_samples: int, batch_size: int, device: torch.device,
          generator: torch.Generator, epochs: int) -> Sampler:
    """Loss-based IS: the online memory fed per-sample losses (classic baseline)."""
    return LossImportanceSampler(num_samples, batch_size, device=device, generator=generator)


def _pruning(*, num_samples: int, batch_size: int, device: torch.device,
             generator: torch.Generator, epochs: int) -> Sampler:
    """Importance pruning (Salaün et al.): the online memory prunes the lowest-importance
    samples after one warm-up epoch, the kept ones are drawn uniformly (weights 1)."""
    return ImportancePruningSampler(num_samples, batch_size, epochs=epochs, device=device,
                                    generator=generator)


def _pruning_unbiased(*, num_samples: int, batch_size: int, device: torch.device,
                      generator: torch.Generator, epochs: int) -> Sampler:
    """Importance pruning at random: keep probabilities from the memory, weights 1/π."""
    return ImportancePruningSampler(num_samples, batch_size, epochs=epochs, unbiased=True,
                                    device=device, generator=generator)


def _pruning_is(*, num_samples: int, batch_size: int, device: torch.device,
                generator: torch.Generator, epochs: int) -> Sampler:
    """Importance pruning, then online importance sampling of the kept samples (half of
    each draw's probability uniform: weights <= 2)."""
    return ImportancePruningSampler(num_samples, batch_size, epochs=epochs,
                                    importance_sampling=True, device=device,
                                    generator=generator)


def _infobatch(*, num_samples: int, batch_size: int, device: torch.device,
               generator: torch.Generator, epochs: int) -> Sampler:
    """InfoBatch (Qin et al.): random pruning of below-mean-loss samples, rescaled."""
    return InfoBatchSampler(num_samples, batch_size, epochs=epochs, device=device,
                            generator=generator)


METHODS: Dict[str, MethodFactory] = {
    "uniform": _uniform,
    "online": _online,
    "adaptive": _adaptive,
    "dlis": _dlis,
    "loss": _loss,
    "pruning": _pruning,
    "pruning_unbiased": _pruning_unbiased,
    "pruning_is": _pruning_is,
    "infobatch": _infobatch,
}

DEFAULT_METHODS = ("uniform", "online", "adaptive", "dlis", "loss", "pruning", "pruning_is",
                   "infobatch")
"""Run when ``--methods`` is not given: one of each kind, and ``pruning_is``, the best
pruning method (``pruning_unbiased`` is a variant)."""


def make_sampler(name: str, *, num_samples: int, batch_size: int, device: torch.device,
                 generator: torch.Generator, epochs: int) -> Sampler:
    """Builds the sampler of method ``name`` (a key of :data:`METHODS`)."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](num_samples=num_samples, batch_size=batch_size, device=device,
                         generator=generator, epochs=epochs)
