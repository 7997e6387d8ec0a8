"""``torch.utils.data.DataLoader`` integration: batches that carry their indices and weights.

.. code-block:: python

    sampler = is_kernels.OnlineImportanceSampler(len(dataset), 128)
    loader = DataLoader(is_kernels.IndexedDataset(dataset),
                        batch_sampler=is_kernels.ImportanceBatchSampler(sampler),
                        num_workers=4)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for (x, y), idx, w in loader:
            loss, score = is_kernels.cross_entropy_with_score(model(x), y, reduction="none")
            (w * loss).mean().backward(); opt.step(); opt.zero_grad()
            sampler.update(idx, score)

The batch sampler runs in the main process (workers only load data), so the sampler's state
is never copied into workers: each batch is drawn from the current memory and its weights
come from the same distribution. The loader prefetches a few batches ahead, so a draw may
precede the updates of the batches still in flight; that changes which distribution is
used, not the unbiasedness of the weights (each batch is weighted by the distribution it was
drawn from). No monkey-patching of PyTorch is involved.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ..samplers.base import Sampler, ScoreFn

__all__ = ["ImportanceBatchSampler", "IndexedDataset"]

Key = Tuple[int, float]


class ImportanceBatchSampler(torch.utils.data.Sampler[List[Key]]):
    """A ``batch_sampler`` for ``DataLoader`` that draws batches from an is_kernels sampler.

    Each batch is a list of ``(index, weight)`` keys; wrap the dataset in
    :class:`IndexedDataset` so each item comes back as ``(item, index, weight)``.
    One iteration yields ``len(sampler)`` batches (an epoch).

    Args:
        sampler: any :class:`~is_kernels.Sampler` (on CPU: keys go to the workers).
        score_fn: passed to ``sampler.sample`` (needed by DLIS once it switches on).
    """

    def __init__(self, sampler: Sampler, score_fn: Optional[ScoreFn] = None) -> None:
        if not isinstance(sampler, Sampler):
            raise TypeError(f"ImportanceBatchSampler: sampler must be an is_kernels Sampler, "
                            f"got {type(sampler).__name__}")
        if sampler.device.type != "cpu":
            raise ValueError(f"ImportanceBatchSampler: sampler must live on the CPU (its draws "
                             f"index a Dataset), got device {sampler.device}; for data on the "
                             f"GPU use the tensor loop instead")
        self.sampler = sampler
        self.score_fn = score_fn

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[List[Key]]:
        for _ in range(len(self.sampler)):
            idx, w = self.sampler.sample(self.score_fn)
            yield list(zip(idx.tolist(), w.tolist()))


class IndexedDataset(Dataset):
    """``dataset[(i, w)] -> (dataset[i], i, float32 w)``: items that know where they came from.

    With the default collate function a batch becomes ``(items, idx int64 [b], w float32 [b])``.
    Plain integer keys are accepted too (weight 1), so the wrapped dataset also works with
    ordinary samplers, e.g. for evaluation.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any):
        i, w = key if isinstance(key, tuple) else (key, 1.0)
        return self.dataset[i], i, torch.tensor(w, dtype=torch.float32)
