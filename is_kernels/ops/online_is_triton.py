"""Triton kernel of ``online_is_draw`` (the CUDA implementation; CPU: csrc/online_is.cpp).

One program per ``BLOCK`` draws does all of a draw: the sum-tree descent
(:func:`is_kernels.sum_tree_triton.descend`), the mixture coin, the uniform pick among the
active samples and the weight ``1/(n p)``, in the steps of the CPU kernel (``q/total`` in
float64, the rest in float32). Like the
sum tree kernels it runs on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it)
and never synchronises with the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cuda_path import float32_parts
from .sum_tree_triton import descend, heap_depth

# Draws per program: the descents are latency-bound, 4096 draws spread over 32 programs.
BLOCK = 128


@triton.jit
def _draw_kernel(LEAVES, INNER, MEMORY, ACTIVE, U, IDX, W, b, n_active, capacity, P, H,
                 mix_hi, mix_mid, mix_lo, keep, floor_p, empty_share, n_float,
                 UNBIASED: tl.constexpr, BLOCK: tl.constexpr):
    """uniform_mix = mix_hi + mix_mid + mix_lo exactly (three float32 parts of the float64
    the CPU kernel compares the coin with); the weight's float32 factors are rounded to
    float32 here as kernel arguments are on a GPU (the interpreter passes float64)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    f64 = tl.zeros([BLOCK], tl.float64)
    f32 = tl.zeros([BLOCK], tl.float32)
    uniform_mix = ((mix_hi + f64) + mix_mid) + mix_lo
    keep, floor_p, empty_share, n_float = keep + f32, floor_p + f32, empty_share + f32, \
        n_float + f32
    mask = offs < b
    u = tl.load(U + offs, mask=mask, other=0.0)
    coin = tl.load(U + (offs + b), mask=mask, other=0.0)  # (int64: b + b may pass 2^31)
    pick = tl.load(U + (offs + b) + b, mask=mask, other=0.0)
    leaf = descend(LEAVES, INNER, u, mask, P, capacity, H, BLOCK)
    k = tl.minimum((pick * n_active).to(tl.int64), n_active - 1)
    uniform = tl.load(ACTIVE + k, mask=mask, other=0)
    idx = tl.where((coin < uniform_mix) | (leaf < 0), uniform, leaf)
    tl.store(IDX + offs, idx, mask=mask)
    if UNBIASED:
        total = tl.load(INNER + 1)  # float64: a float32 total may overflow
        q = tl.load(MEMORY + idx, mask=mask, other=0.0)
        share = tl.where(total > 0.0, (q.to(tl.float64) / total).to(tl.float32), empty_share)
        w = 1.0 / (n_float * (keep * share + floor_p))
    else:
        w = tl.full([BLOCK], 1.0, tl.float32)
    tl.store(W + offs, w, mask=mask)


def draw(leaves: torch.Tensor, inner: torch.Tensor, memory: torch.Tensor,
         active_idx: torch.Tensor, u: torch.Tensor, uniform_mix: float,
         unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``online_is_draw`` (see csrc/online_is.cpp); inputs already checked."""
    b, n = u.shape[1], active_idx.numel()
    idx = torch.empty(b, dtype=torch.int64, device=u.device)
    w = torch.empty(b, dtype=torch.float32, device=u.device)
    if b > 0:
        p = inner.numel()
        _draw_kernel[(triton.cdiv(b, BLOCK),)](
            leaves, inner, memory, active_idx, u, idx, w, b, n, leaves.numel(), p,
            heap_depth(p), *float32_parts(uniform_mix), 1.0 - uniform_mix, uniform_mix / n,
            1.0 / n, float(n),
            UNBIASED=bool(unbiased), BLOCK=BLOCK, num_warps=4)
    return idx, w
