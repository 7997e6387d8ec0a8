"""The kernel families behind ``torch.ops.is_kernels.*``: one module per family holds the
fake, CUDA and autograd registrations and the Python wrapper, its ``_triton`` twin the CUDA
kernels; the schemas and CPU kernels are C++ (``csrc/<family>.cpp``).

- :mod:`.output_grad`: the fused loss + per-sample output-gradient-norm ops;
- :mod:`.sum_tree`: :class:`SumTree` and :class:`MinTree`, sum and min trees of float32/float64
  values;
- :mod:`.alias_table`: :class:`AliasTable`, a Walker/Vose alias table over groups of weights;
- :mod:`.online_is`: the online importance sampler's draw and update ops;
- :mod:`.linear_cross_entropy`: the fused linear + cross-entropy + score op, chunked over
  rows on top of :mod:`.output_grad`.
"""
from .alias_table import AliasTable
from .linear_cross_entropy import linear_cross_entropy_with_score
from .output_grad import cross_entropy_with_score, mse_with_score, output_grad_norm
from .sum_tree import MinTree, SumTree
from . import online_is  # noqa: F401  (registers the online sampler's ops)

__all__ = ["cross_entropy_with_score", "mse_with_score", "output_grad_norm",
           "linear_cross_entropy_with_score", "SumTree", "MinTree", "AliasTable"]
