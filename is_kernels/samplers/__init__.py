"""Samplers: which training examples the next mini-batch holds, and with which weights.

Every sampler follows the :class:`Sampler` protocol (:mod:`.base`), so one training loop
drives them all. One module per family: :mod:`.uniform`, :mod:`.online` (online importance
sampling and its loss-based variant), :mod:`.dlis` (presampling with the τ switch),
:mod:`.pruning` (online importance pruning), :mod:`.infobatch`.
"""
from .base import Sampler, ScoreFn
from .dlis import (PresampleImportanceSampler, equivalent_batch_increment, measure_step_costs,
                   tau_threshold)
from .infobatch import InfoBatchSampler
from .online import LossImportanceSampler, OnlineImportanceSampler
from .pruning import ImportancePruningSampler
from .uniform import UniformSampler

__all__ = ["Sampler", "ScoreFn", "UniformSampler", "OnlineImportanceSampler",
           "LossImportanceSampler", "PresampleImportanceSampler", "ImportancePruningSampler",
           "InfoBatchSampler", "equivalent_batch_increment", "tau_threshold",
           "measure_step_costs"]
