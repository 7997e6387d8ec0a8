"""LOW (Santiago et al., Pattern Recognition 2021): learned optimal sample weights.

Each uniformly drawn mini-batch of b samples is reweighted by the solution of the
quadratic program of the authors' reference code (``LOW.py`` of ``cajosantiago/LOW``)::

    minimise  λ·Σ w_i² − Σ (g_i² + λ)·w_i   subject to  w_i >= 0,  Σ w_i = b

where ``g_i = ||∂(mean batch loss)/∂ output_i||`` = ``score_i / b`` (``score`` the per-sample
output-gradient norm of :func:`is_kernels.cross_entropy_with_score` /
:func:`is_kernels.mse_with_score`). With ``Σw`` fixed the objective equals
``λ·||w − v||²`` up to a constant, ``v = (g² + λ)/(2λ)``, so the solution is the Euclidean
projection of ``v`` onto the scaled simplex ``{w >= 0, Σw = b}``, computed exactly here (the
reference runs cvxopt's interior-point solver for at most 20 iterations). Large λ keeps
the weights near 1; samples with a large output gradient get weights above 1.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import UniformSampler

__all__ = ["low_weights", "LOWSampler"]


def low_weights(grad_norms: torch.Tensor, lam: float) -> torch.Tensor:
    """The LOW weights of one batch: the exact solution of the quadratic program above.

    Args:
        grad_norms: float ``[b]``, ``g_i`` (finite, >= 0).
        lam: λ > 0, the smoothness of the weights (larger: closer to 1).

    Returns:
        float32 ``[b]`` weights, non-negative, summing to b (up to rounding). No host sync.
    """
    if grad_norms.dim() != 1 or grad_norms.numel() == 0:
        raise ValueError(f"low_weights: grad_norms must be a non-empty 1-D tensor, got shape "
                         f"{tuple(grad_norms.shape)}")
    if not (isinstance(lam, (int, float)) and 0.0 < lam < math.inf):
        raise ValueError(f"low_weights: lam must be a finite number > 0, got {lam!r}")
    g = grad_norms.double()
    b = g.numel()
    v = (g * g + lam) / (2.0 * lam)
    # Projection onto {w >= 0, Σw = b}: w = max(v − θ, 0), θ from the sorted values.
    u = torch.sort(v, descending=True).values
    j = torch.arange(1, b + 1, dtype=torch.float64, device=g.device)
    theta_j = (torch.cumsum(u, 0) - b) / j
    rho = (u - theta_j > 0).sum().clamp_min(1) - 1  # u_0 - theta_0 = b > 0: rho >= 0
    theta = theta_j.gather(0, rho.reshape(1))
    return (v - theta).clamp_min(0.0).float()


class LOWSampler(UniformSampler):
    """Uniform batches (a permutation per epoch), reweighted by :func:`low_weights` from
    the scores of their own training forward pass.

    The weights depend on the forward pass of the batch they weight, so the training loop
    asks for them after the forward: ``w = sampler.reweight(scores)`` replaces the weights
    1 that :meth:`sample` returns.

    Args:
        num_samples, batch_size, device, generator: see :class:`~is_kernels.UniformSampler`.
        lam: λ of the quadratic program (the reference code's default, 0.1).
    """

    def __init__(self, num_samples: int, batch_size: int, *, lam: float = 0.1,
                 device=None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(num_samples, batch_size, device=device, generator=generator)
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool)
                and 0.0 < lam < math.inf):
            raise ValueError(f"LOWSampler: lam must be a finite number > 0, got {lam!r}")
        self.lam = float(lam)

    def reweight(self, scores: torch.Tensor) -> torch.Tensor:
        """Loss weights of the batch whose per-sample output-gradient norms are ``scores``."""
        return low_weights(scores / scores.numel(), self.lam)
