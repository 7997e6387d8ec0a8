"""Pearson's chi-square goodness-of-fit test from torch alone (the GPU image has no scipy).

``chisquare(observed, expected)`` returns ``(statistic, pvalue)`` as
``scipy.stats.chisquare`` does (k - 1 degrees of freedom, the expected counts given in
full); ``chi2_sf(x, dof)`` is the chi-square survival function, ``Q(dof/2, x/2)``.
"""
from typing import Tuple

import torch


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X chi-square with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    half = torch.tensor(dof / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(half, torch.tensor(x / 2.0, dtype=torch.float64)))


def chisquare(observed, expected) -> Tuple[float, float]:
    """Pearson's statistic of ``observed`` counts against ``expected`` ones (same length
    k >= 2, expected > 0) and its p-value with k - 1 degrees of freedom."""
    o = torch.as_tensor(observed, dtype=torch.float64).flatten()
    e = torch.as_tensor(expected, dtype=torch.float64).flatten()
    if o.shape != e.shape or o.numel() < 2:
        raise ValueError(f"observed and expected must have the same length >= 2, got "
                         f"{o.numel()} and {e.numel()}")
    if not bool((e > 0).all()):
        raise ValueError("expected counts must be > 0")
    stat = float(((o - e) ** 2 / e).sum())
    return stat, chi2_sf(stat, o.numel() - 1)
