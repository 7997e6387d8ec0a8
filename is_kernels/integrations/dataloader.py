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

Mid-epoch resume (docs/resume.md): :class:`ImportanceBatchSampler` has ``state_dict`` /
``load_state_dict``, which torchdata's ``StatefulDataLoader`` saves and restores with its own
state. After a resume the first batches are the draws the saved run had made ahead
(prefetched) and not trained on yet, taken from the sampler's outstanding draws: none is
lost or drawn twice.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .._checks import state_int
from ..samplers.base import Sampler, ScoreFn

__all__ = ["ImportanceBatchSampler", "IndexedDataset"]

Key = Tuple[int, float]


class ImportanceBatchSampler(torch.utils.data.Sampler[List[Key]]):
    """A ``batch_sampler`` for ``DataLoader`` that draws batches from an is_kernels sampler.

    Each batch is a list of ``(index, weight)`` keys; wrap the dataset in
    :class:`IndexedDataset` so each item comes back as ``(item, index, weight)``.
    One iteration yields ``len(sampler)`` batches (an epoch); a resumed one, the rest of the
    saved iteration.

    :meth:`state_dict` holds the progress of the current iteration: its length, the batches
    handed to the loader so far and the serial number of the last one
    (:attr:`~is_kernels.Sampler.num_draws`). :meth:`load_state_dict` makes the next
    iteration continue it: first the sampler's outstanding draws made after that serial (the
    loader had prefetched them), then new draws. Load the sampler's own state first: both
    must come from the same checkpoint.

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
        self._length = 0  # of the current iteration
        self._yielded = 0  # batches handed out in it
        self._serial = 0  # the serial number of the last of them
        self._resume: Optional[Dict[str, int]] = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[List[Key]]:
        # The resume is taken here, the rest when the first batch is asked for: a loader may
        # create iterators it never runs (a restoring StatefulDataLoader does).
        resume, self._resume = self._resume, None
        return self._batches(resume)

    def _prefetched(self, resume: Dict[str, int]) -> List[Any]:
        """The sampler's outstanding draws after the resumed iteration's last serial: those
        the saved loader had drawn ahead and not handed to the training loop. If the sampler
        cannot continue it, raises and keeps the resume for the next iteration."""
        name, serial = "ImportanceBatchSampler", resume["serial"]
        ahead = [d for d in self.sampler.outstanding_draws() if d.serial > serial]
        made = self.sampler.num_draws - serial
        if made < 0 or len(ahead) != made or made > resume["length"] - resume["yielded"]:
            self._resume = resume
            raise RuntimeError(
                f"{name}: the sampler's state does not continue the loader's (the loader "
                f"handed out draws up to {serial}, the sampler made {self.sampler.num_draws} "
                f"and has {len(ahead)} of those after {serial} outstanding); load the "
                f"sampler's state_dict saved together with the loader's, before iterating")
        return ahead

    def _batches(self, resume: Optional[Dict[str, int]]) -> Iterator[List[Key]]:
        if resume is None:
            self._length, self._yielded, self._serial = len(self.sampler), 0, 0
            prefetched = []
        else:
            prefetched = self._prefetched(resume)
            self._length, self._yielded, self._serial = \
                resume["length"], resume["yielded"], resume["serial"]
        while self._yielded < self._length:
            if prefetched:
                draw = prefetched.pop(0)
                idx, w, serial = draw.idx, draw.weights, draw.serial
            else:
                idx, w = self.sampler.sample(self.score_fn)
                serial = self.sampler.num_draws
            self._yielded += 1
            self._serial = serial
            yield list(zip(idx.tolist(), w.tolist()))

    def state_dict(self) -> Dict[str, int]:
        """The progress of the current iteration (see the class docs)."""
        return {"length": self._length, "yielded": self._yielded, "serial": self._serial}

    def load_state_dict(self, state_dict: Dict[str, int]) -> None:
        """Makes the next iteration continue the one of ``state_dict``."""
        op = "ImportanceBatchSampler.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{op}: state_dict must be a dict, got {type(state_dict).__name__}")
        for key in ("length", "yielded", "serial"):
            if key not in state_dict:
                raise ValueError(f"{op}: state_dict lacks {key!r}")
            state_int(op, state_dict, key, 0)
        state_int(op, state_dict, "yielded", 0, state_dict["length"])
        # An iteration that handed out nothing yet starts afresh (its length is taken then).
        self._resume = None if state_dict["yielded"] == 0 else \
            {key: state_dict[key] for key in ("length", "yielded", "serial")}


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
