"""Tests of LOW's per-batch weights (is_kernels.train.low)."""
import pytest
import torch

from is_kernels.train.low import LOWSampler, low_weights


def _check_kkt(g: torch.Tensor, lam: float, w: torch.Tensor) -> None:
    """Optimality of w for min λΣw² − Σ(g²+λ)w s.t. w >= 0, Σw = b: the gradient
    2λw − (g²+λ) is one constant −ν on the support and >= −ν off it."""
    g, w = g.double(), w.double()
    b = g.numel()
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(b, rel=1e-5)
    grad = 2 * lam * w - (g * g + lam)
    support = w > 1e-6 * b
    nu = -grad[support]
    tol = 1e-4 * float((g * g + lam).max())
    assert float(nu.max() - nu.min()) < tol
    assert bool((grad[~support] >= -float(nu.mean()) - tol).all())


@pytest.mark.parametrize("lam", [10.0, 0.1, 1e-3, 1e-5])
@pytest.mark.parametrize("b", [1, 7, 128])
def test_low_weights_solve_the_quadratic_program(lam, b):
    gen = torch.Generator().manual_seed(b)
    g = torch.rand(b, generator=gen, dtype=torch.float64) ** 3 * 0.05
    w = low_weights(g, lam)
    assert w.dtype == torch.float32 and w.shape == (b,)
    _check_kkt(g, lam, w)


def test_low_weights_interior_solution_is_closed_form():
    g = torch.tensor([0.0, 0.01, 0.02, 0.03])
    w = low_weights(g, 1.0)  # all weights stay positive: w = 1 + (g² − mean g²)/(2λ)
    torch.testing.assert_close(w, 1 + (g * g - (g * g).mean()) / 2)


def test_low_weights_small_lambda_concentrates_on_large_gradients():
    g = torch.tensor([0.1, 0.2, 1.0, 0.3])
    w = low_weights(g, 1e-6)
    assert float(w[2]) == pytest.approx(4.0, rel=1e-4) and float(w.sum()) == pytest.approx(4)


def test_low_weights_reject_bad_input():
    with pytest.raises(ValueError, match="grad_norms"):
        low_weights(torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="grad_norms"):
        low_weights(torch.zeros(0), 0.1)
    for lam in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lam"):
            low_weights(torch.ones(3), lam)
    with pytest.raises(ValueError, match="lam"):
        LOWSampler(10, 2, lam=0)


def test_sampler_reweights_with_the_mean_loss_gradient():
    s = LOWSampler(100, 4, lam=1e-3, generator=torch.Generator().manual_seed(0))
    idx, w = s.sample()
    assert torch.equal(w, torch.ones(4))  # before the forward: uniform's weights
    scores = torch.tensor([0.2, 0.4, 1.2, 0.1])
    torch.testing.assert_close(s.reweight(scores), low_weights(scores / 4, 1e-3))
