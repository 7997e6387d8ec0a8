"""DataLoader integration: batches carry the indices and weights of the sampler's draws."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import is_kernels


class Squares(Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor([float(i), float(i * i)])


def score_of(i: torch.Tensor) -> torch.Tensor:
    return (i % 7).float() + 0.5


def dlis(seed: int) -> is_kernels.PresampleImportanceSampler:
    s = is_kernels.PresampleImportanceSampler(50, 8, tau_threshold=1.0,
                                              generator=torch.Generator().manual_seed(seed))
    s.tau = 5.0  # importance sampling on from the first draw: weights differ from 1
    return s


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_match_the_samplers_draws(num_workers):
    sampler = dlis(0)
    loader = DataLoader(is_kernels.IndexedDataset(Squares()),
                        batch_sampler=is_kernels.ImportanceBatchSampler(sampler, score_of),
                        num_workers=num_workers)
    reference = dlis(0)
    assert len(loader) == len(sampler) == 7
    batches = 0
    for x, idx, w in loader:
        ref_idx, ref_w = reference.sample(score_of)
        assert idx.dtype == torch.int64 and w.dtype == torch.float32
        assert torch.equal(idx, ref_idx) and torch.equal(w, ref_w)
        assert torch.equal(x[:, 0].long(), idx) and torch.equal(x[:, 1].long(), idx * idx)
        assert (w != 1).any()
        sampler.update(idx, score_of(idx))  # prefetched draws are still accepted
        reference.update(ref_idx, score_of(ref_idx))
        batches += 1
    assert batches == 7
    assert sampler.tau == reference.tau


def test_update_rejects_indices_of_no_draw():
    sampler = is_kernels.UniformSampler(50, 8)
    idx, _ = sampler.sample()
    with pytest.raises(ValueError, match="idx must be the indices of a draw"):
        sampler.update((idx + 1) % 50, torch.ones(8))
    sampler.update(idx, torch.ones(8))
    with pytest.raises(ValueError, match="idx is draw 1, which was already updated"):
        sampler.update(idx, torch.ones(8))


def test_update_of_a_retired_or_dropped_draw_says_what_happened():
    sampler = is_kernels.UniformSampler(50, 8, replacement=True)
    first, _ = sampler.sample()
    second, _ = sampler.sample()
    sampler.update(second, torch.ones(8))
    with pytest.raises(ValueError, match="idx is draw 1, which was already retired without an "
                                         "update when the later draw 2 was updated"):
        sampler.update(first, torch.ones(8))
    oldest, _ = sampler.sample()  # draw 3
    with pytest.warns(RuntimeWarning, match="draw 3, is dropped"):
        for _ in range(sampler.MAX_PENDING):
            sampler.sample()
    assert len(sampler.outstanding_draws()) == sampler.MAX_PENDING
    with pytest.raises(ValueError, match="idx is draw 3, which was already dropped from the "
                                         "outstanding draws: more than MAX_PENDING = 64"):
        sampler.update(oldest, torch.ones(8))


def test_batch_sampler_argument_checks():
    with pytest.raises(TypeError, match="sampler must be an is_kernels Sampler"):
        is_kernels.ImportanceBatchSampler(range(10))
    ds = is_kernels.IndexedDataset(Squares())
    item, i, w = ds[3]
    assert i == 3 and float(w) == 1.0 and torch.equal(item, torch.tensor([3.0, 9.0]))
