"""Registry of the compared methods: name -> factory of a :class:`~is_kernels.Sampler`.

A method is named by a spec, ``name`` or ``name:key=value:key=value``; the options are
passed to the sampler's constructor (e.g. ``online:uniform_mix=0.3:momentum=0.6``). A
factory is called as ``factory(num_samples=N, batch_size=b, device=device,
generator=generator, epochs=E, **options)`` (``E`` the planned number of epochs, for
samplers with a schedule) and returns a fresh sampler. Adding a method is one entry in
:data:`METHODS`; the training loop drives every sampler through the protocol alone (and
:meth:`~is_kernels.train.low.LOWSampler.reweight` where a sampler has it).
"""
from __future__ import annotations

import ast
from typing import Any, Dict, Protocol, Tuple

import torch

from ..samplers import (ImportancePruningSampler, InfoBatchSampler, LossImportanceSampler,
                        OnlineImportanceSampler, PresampleImportanceSampler, Sampler,
                        UniformSampler)
from .low import LOWSampler

__all__ = ["METHODS", "DEFAULT_METHODS", "FULL_METHODS", "BASELINES", "MethodFactory",
           "parse_spec", "make_sampler"]


class MethodFactory(Protocol):
    def __call__(self, *, num_samples: int, batch_size: int, device: torch.device,
                 generator: torch.Generator, epochs: int, **options: Any) -> Sampler: ...


def _uniform(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """Baseline: a fresh random permutation per epoch, weights 1."""
    return UniformSampler(num_samples, batch_size, device=device, generator=generator,
                          **options)


def _uniform_replacement(*, num_samples, batch_size, device, generator, epochs,
                         **options) -> Sampler:
    """Second baseline: b i.i.d. uniform indices per draw (as importance sampling draws)."""
    return UniformSampler(num_samples, batch_size, replacement=True, device=device,
                          generator=generator, **options)


def _online(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """Online IS (Salaün et al.): output-gradient memory, unbiased weights."""
    return OnlineImportanceSampler(num_samples, batch_size, device=device, generator=generator,
                                   **options)


def _adaptive(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """Online IS without weights (the paper's biased "adaptive sampling")."""
    return OnlineImportanceSampler(num_samples, batch_size, unbiased=False, device=device,
                                   generator=generator, **options)


def _dlis(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """DLIS (Katharopoulos & Fleuret): presample 3b, switch on when tau > tau_th (the
    harness passes the τ_th of the measured forward and backward costs)."""
    return PresampleImportanceSampler(num_samples, batch_size, device=device,
                                      generator=generator, **options)


def _loss(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """Loss-based IS: the online memory fed per-sample losses (classic baseline)."""
    return LossImportanceSampler(num_samples, batch_size, device=device, generator=generator,
                                 **options)


def _low(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """LOW (Santiago et al.): uniform batches, weights from a per-batch quadratic program."""
    return LOWSampler(num_samples, batch_size, device=device, generator=generator, **options)


def _pruning(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """Importance pruning (Salaün et al.): the online memory prunes the lowest-importance
    samples after one warm-up epoch, the kept ones are drawn uniformly (weights 1)."""
    return ImportancePruningSampler(num_samples, batch_size, epochs=epochs, device=device,
                                    generator=generator, **options)


def _pruning_unbiased(*, num_samples, batch_size, device, generator, epochs,
                      **options) -> Sampler:
    """Importance pruning at random: keep probabilities from the memory, weights 1/π."""
    return ImportancePruningSampler(num_samples, batch_size, epochs=epochs, unbiased=True,
                                    device=device, generator=generator, **options)


def _pruning_is(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """Importance pruning, then online importance sampling of the kept samples (half of
    each draw's probability uniform: weights <= 2)."""
    return ImportancePruningSampler(num_samples, batch_size, epochs=epochs,
                                    importance_sampling=True, device=device,
                                    generator=generator, **options)


def _infobatch(*, num_samples, batch_size, device, generator, epochs, **options) -> Sampler:
    """InfoBatch (Qin et al.): random pruning of below-mean-loss samples, rescaled."""
    return InfoBatchSampler(num_samples, batch_size, epochs=epochs, device=device,
                            generator=generator, **options)


METHODS: Dict[str, MethodFactory] = {
    "uniform": _uniform,
    "uniform_replacement": _uniform_replacement,
    "online": _online,
    "adaptive": _adaptive,
    "dlis": _dlis,
    "loss": _loss,
    "low": _low,
    "pruning": _pruning,
    "pruning_unbiased": _pruning_unbiased,
    "pruning_is": _pruning_is,
    "infobatch": _infobatch,
}

BASELINES = ("uniform", "uniform_replacement")
"""The methods every other one is compared to, pairwise per seed."""

DEFAULT_METHODS = ("uniform", "uniform_replacement", "online", "dlis", "low", "pruning_is",
                   "infobatch")
"""Run when ``--methods`` is not given: the methods the README's claims rest on."""

FULL_METHODS = tuple(METHODS)
"""Run with ``--full``: every method."""


def parse_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"online:uniform_mix=0.3:momentum=0.6"`` -> ``("online", {"uniform_mix": 0.3,
    "momentum": 0.6})``; values are Python literals (numbers, True/False, None)."""
    name, *items = spec.split(":")
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r} in {spec!r}")
    options: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"method option must be key=value, got {item!r} in {spec!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"method option {key} must be a Python literal, got {text!r} "
                             f"in {spec!r}") from None
    return name, options


def make_sampler(spec: str, *, num_samples: int, batch_size: int, device: torch.device,
                 generator: torch.Generator, epochs: int, **defaults: Any) -> Sampler:
    """Builds the sampler of method ``spec`` (see :func:`parse_spec`). ``defaults`` are
    options the spec does not set (e.g. DLIS's measured ``tau_threshold``)."""
    name, options = parse_spec(spec)
    try:
        return METHODS[name](num_samples=num_samples, batch_size=batch_size, device=device,
                             generator=generator, epochs=epochs, **{**defaults, **options})
    except TypeError as e:
        raise ValueError(f"method {spec!r}: {e}") from None
