"""is_kernels: fast kernels and samplers for importance sampling of training examples.

Ops live under ``torch.ops.is_kernels``; this package holds their thin Python wrappers,
the samplers built on them, prioritized replay, and their DataLoader / DDP / TorchRL
integrations.
"""
from .integrations import ImportanceBatchSampler, IndexedDataset, ShardedSampler
from .ops import (AliasTable, MinTree, SumTree, cross_entropy_with_score,
                  linear_cross_entropy_with_score, mse_with_score, output_grad_norm)
from .replay import PrioritizedReplay
from .sequence_scores import sequence_scores
from .samplers import (ImportancePruningSampler, InfoBatchSampler, LossImportanceSampler,
                       OnlineImportanceSampler, PresampleImportanceSampler, Sampler,
                       UniformSampler, equivalent_batch_increment, measure_step_costs,
                       tau_threshold)

__all__ = [
    "cross_entropy_with_score", "mse_with_score", "output_grad_norm",
    "linear_cross_entropy_with_score", "sequence_scores",
    "SumTree", "MinTree", "AliasTable", "PrioritizedReplay",
    "Sampler", "UniformSampler", "OnlineImportanceSampler", "LossImportanceSampler",
    "PresampleImportanceSampler", "ImportancePruningSampler", "InfoBatchSampler",
    "equivalent_batch_increment", "tau_threshold", "measure_step_costs",
    "ImportanceBatchSampler", "IndexedDataset", "ShardedSampler",
]
__version__ = "0.1.0"
