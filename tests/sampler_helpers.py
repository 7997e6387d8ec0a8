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
