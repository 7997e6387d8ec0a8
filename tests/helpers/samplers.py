"""Helpers shared by the sampler tests."""
import torch


def drive(sampler, steps: int, seed: int):
    """``steps`` draws, each updated with random scores from ``seed``; returns the draws."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx, w = sampler.sample()
        sampler.update(idx, torch.rand(idx.shape[0], generator=g))
        out.append((idx, w))
    return out


def check_seeded_draws(sampler) -> None:
    """``sampler.sample(n, generator=...)``: the same seed gives the same draws, another seed
    other draws, and ``n = 0`` an empty result."""
    def draws(seed: int) -> torch.Tensor:
        return sampler.sample(1000, generator=torch.Generator().manual_seed(seed))

    a, b, c = draws(4), draws(4), draws(5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sampler.sample(0).shape == (0,)
