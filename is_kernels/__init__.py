"""is_kernels: fast kernels and samplers for importance sampling of training examples.

Ops live under ``torch.ops.is_kernels``; this package holds their thin Python wrappers.
"""
from .output_grad import cross_entropy_with_score, mse_with_score, output_grad_norm
from .samplers import Sampler, UniformSampler

__all__ = ["cross_entropy_with_score", "mse_with_score", "output_grad_norm", "Sampler",
           "UniformSampler"]
__version__ = "0.1.0"
