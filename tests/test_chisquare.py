"""The chi-square helper that the distribution tests use, against closed forms."""
import math

import pytest
import torch
from helpers.chisquare import chi2_sf, chisquare


@pytest.mark.parametrize("x", [0.0, 0.5, 3.0, 40.0])
def test_survival_function_closed_forms(x):
    assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12, abs=1e-300)
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-12, abs=1e-300)
    assert chi2_sf(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-12,
                                          abs=1e-300)


def test_statistic_and_pvalue():
    stat, p = chisquare([10, 20, 30], [20, 20, 20])
    assert stat == pytest.approx(10.0) and p == pytest.approx(math.exp(-5.0))


def test_multinomial_counts_pass_and_a_tilted_expectation_fails():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, generator=g, dtype=torch.float64) + 0.1
    counts = torch.bincount(torch.multinomial(p, 100_000, True, generator=g), minlength=50)
    expected = 100_000 * p / p.sum()
    assert chisquare(counts, expected)[1] > 1e-3
    tilted = expected * torch.linspace(0.9, 1.1, 50, dtype=torch.float64)
    assert chisquare(counts, tilted * 100_000 / tilted.sum())[1] < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        chisquare([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="> 0"):
        chisquare([1, 2], [0, 3])
    with pytest.raises(ValueError, match="dof"):
        chi2_sf(1.0, 0)
