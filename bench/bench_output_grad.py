"""Fused loss + score + gradient against the alternatives, forward and backward, same run.

Alternatives: eager PyTorch (``F.cross_entropy`` + backward + a separate
``(softmax - onehot).norm(dim=1)``) and ``torch.compile`` of that same function; on CUDA
also Liger-Kernel's cross entropy forward + backward (loss only, no score; skipped unless
``liger_kernel`` is installed). Each group also times ``copy``: one read of the logits and
one write of a tensor of their size (into a buffer allocated once, so that no page faults
are timed), the least memory traffic of a fused forward + backward, so its ratio in
``bench/run_all.py``'s table is the fraction of the copy bandwidth reached.
Run: ``python -m pytest bench/bench_output_grad.py`` (``bench/run_all.py`` adds the ratios).
"""
import pytest
import torch
import torch.nn.functional as F

import is_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(8192, 10), (8192, 1000), (1024, 32768)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def reference_loss_and_score(z, t):
    loss = F.cross_entropy(z, t)
    with torch.no_grad():
        score = (z.softmax(1) - F.one_hot(t, z.shape[1]).to(z.dtype)).float().norm(dim=1)
    return loss, score


_compiled = torch.compile(reference_loss_and_score, dynamic=False)

IMPLS = {
    "is_kernels": is_kernels.cross_entropy_with_score,
    "eager": reference_loss_and_score,
    "compile": _compiled,
}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}  # bf16 baselines round softmax to bf16


def _run(benchmark, z, dtype, step):
    """Times step in the group of z's shape; GB/s from one read of z and one write of its size."""
    N, C = z.shape
    benchmark.group = f"CE fwd+bwd {N}x{C} {dtype} ({DEVICE})"
    benchmark.extra_info["bytes"] = 2 * z.numel() * z.element_size()
    benchmark(step)


def _inputs(N, C, dtype):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(N, C, generator=g) * 3).to(dtype).to(DEVICE).requires_grad_()
    t = torch.randint(0, C, (N,), generator=g).to(DEVICE)
    return z, t


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ce_forward_backward(benchmark, shape, dtype, impl):
    z, t = _inputs(*shape, DTYPES[dtype])
    fn = IMPLS[impl]

    def step():
        loss, score = fn(z, t)
        (grad,) = torch.autograd.grad(loss, z)
        _sync()
        return loss, score, grad

    loss, score, grad = step()  # warm-up (compiles), and a correctness check of the run
    ref_loss, ref_score = reference_loss_and_score(z.detach().float(), t)
    tol = TOLERANCE[dtype]
    assert torch.allclose(loss.float(), ref_loss, rtol=tol, atol=tol)
    assert torch.allclose(score, ref_score, rtol=tol, atol=tol)
    _run(benchmark, z, dtype, step)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_copy(benchmark, shape, dtype):
    """The memory-bound floor: read the logits once, write a tensor of their size."""
    z, _ = _inputs(*shape, DTYPES[dtype])
    z = z.detach()
    out = torch.empty_like(z)

    def step():
        out.copy_(z)
        _sync()
        return out

    assert torch.equal(step(), z)
    _run(benchmark, z, dtype, step)


@pytest.mark.skipif(DEVICE != "cuda", reason="Liger-Kernel's kernels are CUDA (Triton) only")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_liger(benchmark, shape, dtype):
    """Liger-Kernel's cross entropy, forward + backward (its loss only: no score). Its forward
    writes the gradient over the logits (in place, to save memory): the reference is computed
    first, and the timed calls read the previous call's gradient as logits (the same memory
    traffic; in training the logits are not reused)."""
    liger = pytest.importorskip("liger_kernel.transformers")
    z, t = _inputs(*shape, DTYPES[dtype])
    loss_fn = liger.LigerCrossEntropyLoss()

    def step():
        loss = loss_fn(z, t)
        (grad,) = torch.autograd.grad(loss, z)
        _sync()
        return loss, grad

    ref_loss, _ = reference_loss_and_score(z.detach().float(), t)
    loss, _ = step()
    assert torch.allclose(loss.float(), ref_loss, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    _run(benchmark, z, dtype, step)
