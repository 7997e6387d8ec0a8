"""Integrations of the samplers with the rest of the ecosystem: :mod:`.dataloader`
(``torch.utils.data.DataLoader``), :mod:`.ddp` (``DistributedDataParallel``) and
:mod:`.torchrl` (TorchRL's prioritized replay on is_kernels trees; imported on its own, as
torchrl is an optional dependency: ``from is_kernels.integrations import torchrl``)."""
from .dataloader import ImportanceBatchSampler, IndexedDataset
from .ddp import ShardedSampler

__all__ = ["ImportanceBatchSampler", "IndexedDataset", "ShardedSampler"]
