"""is_kernels: fast kernels and samplers for importance sampling of training examples.

Ops live under ``torch.ops.is_kernels``; this package holds their thin Python wrappers.
"""
from .alias_table import AliasTable
from .output_grad import cross_entropy_with_score, mse_with_score, output_grad_norm
from .sum_tree import SumTree

__all__ = ["AliasTable", "SumTree", "cross_entropy_with_score", "mse_with_score",
           "output_grad_norm"]
__version__ = "0.1.0"
