"""Integrations of the samplers with the rest of the ecosystem: :mod:`.dataloader`
(``torch.utils.data.DataLoader``) and :mod:`.ddp` (``DistributedDataParallel``)."""
from .dataloader import ImportanceBatchSampler, IndexedDataset
from .ddp import ShardedSampler

__all__ = ["ImportanceBatchSampler", "IndexedDataset", "ShardedSampler"]
