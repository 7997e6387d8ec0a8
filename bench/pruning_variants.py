"""Variants of unbiased importance pruning, run through the pruning benchmark.

The variants of table 2 of docs/pruning.md: the keep-probability floor
``min_keep_probability`` (π_min), the memory fed the loss instead of the output-gradient
norm, a pruned fraction that ramps over the pruning epochs (mean 0.4, as the default), and
importance sampling of the kept samples with bounded weights.
Each variant is registered as a method and the runs are those of ``bench.pruning_e2e``
(same arguments; InfoBatch and uniform are its methods ``infobatch`` and ``uniform``)::

    python -m bench.pruning_variants --epochs 10 --evals-per-epoch 2 --seeds 0,1,2,3,4 \\
        --methods uniform,infobatch,floor_0.3,floor_0.5,loss_floor_0.5,ramp_up,is_mix_0.3
"""
from __future__ import annotations

from typing import List, Optional, Type

import torch

from bench import pruning_e2e
from is_kernels.samplers import ImportancePruningSampler
from is_kernels.train.methods import METHODS, MethodFactory


class LossPruningSampler(ImportancePruningSampler):
    """The same sampler with a memory of per-sample losses (as InfoBatch's score)."""

    score_type = "loss"


class RampedPruningSampler(ImportancePruningSampler):
    """Pruned fraction linear in the pruning epochs, from ``first`` to ``last`` (with the
    floor ``min(0.5, 1 - fraction)``). Its ``steps_in_epoch`` of future epochs is not
    updated: a benchmark variant, for the harness only."""

    first, last = 0.2, 0.6

    def _select(self, epoch: int):
        if self.is_pruning_epoch(epoch):
            span = max(1, self.epochs - self.anneal_epochs - 1 - self.warmup_epochs)
            t = (epoch - self.warmup_epochs) / span
            fraction = self.first + (self.last - self.first) * t
            self.max_pruned = round(fraction * self.num_samples)
            self.min_keep_probability = min(0.5, 1.0 - fraction)
        return super()._select(epoch)


def _ramp(first: float, last: float, loss: bool = False) -> Type[RampedPruningSampler]:
    bases = (LossPruningSampler, RampedPruningSampler) if loss else (RampedPruningSampler,)
    return type("Ramp", bases, {"first": first, "last": last})


def _factory(cls: Type[ImportancePruningSampler], **kw) -> MethodFactory:
    kw.setdefault("unbiased", True)

    def make(*, num_samples: int, batch_size: int, device: torch.device,
             generator: torch.Generator, epochs: int, **options) -> ImportancePruningSampler:
        return cls(num_samples, batch_size, epochs=epochs, device=device,
                   generator=generator, **{**kw, **options})
    return make


VARIANTS = {
    **{f"floor_{f}": _factory(ImportancePruningSampler, min_keep_probability=f)
       for f in (0.3, 0.4, 0.45, 0.5, 0.55, 0.6)},
    **{f"loss_floor_{f}": _factory(LossPruningSampler, min_keep_probability=f)
       for f in (0.5, 0.55)},
    "ramp_up": _factory(_ramp(0.2, 0.6)),
    "loss_ramp_up": _factory(_ramp(0.2, 0.6, loss=True)),
    "ramp_down": _factory(_ramp(0.6, 0.2)),
    "loss_ramp_down": _factory(_ramp(0.6, 0.2, loss=True)),
    "ramp_down_0.55": _factory(_ramp(0.55, 0.25)),
    # The lowest-importance 40% pruned, the rest importance-sampled (pruning_is) with a
    # larger uniform share than the memory's 0.1, so that the weights stay <= 1/uniform_mix
    # (is_mix_0.5 is pruning_is with its default uniform_mix).
    **{f"is_mix_{m}": _factory(ImportancePruningSampler, unbiased=False,
                               importance_sampling=True, uniform_mix=m) for m in (0.3, 0.5)},
}


def main(argv: Optional[List[str]] = None) -> int:
    METHODS.update(VARIANTS)
    return pruning_e2e.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
