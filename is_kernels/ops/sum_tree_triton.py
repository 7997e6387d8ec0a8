"""Triton kernels of the sum tree ops (the CUDA implementation; layout in csrc/sum_tree.cpp).

The launchers take any tensors Triton can address: CUDA tensors normally, CPU tensors under
``TRITON_INTERPRET=1`` (how the tests check these kernels without a GPU). Nothing here
synchronises with the host, so update and sample can be captured in a CUDA graph.

Update: the batch is sorted (stable) and only the last occurrence of every index is written
(last wins, no write race). Parents are then recomputed level by level from their children,
bottom-up: a level no wider than the batch is recomputed whole, a wider one at the batch's
ancestors only. Two programs recomputing the same ancestor read the same final children and
write the same value, so duplicates are benign. Batches of up to ``FUSED_MAX`` entries run in
one program that walks all levels with a block barrier between them (one launch); larger
batches launch one grid per level.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
# Batches up to this size are handled by a single program (one launch for all levels).
FUSED_MAX = 1 << 14


def heap_depth(p: int) -> int:
    return p.bit_length() - 1


@triton.jit
def _child_sums(LEAVES, INNER, x, mask, P, capacity):
    """(left, right) float64 sums of the children of inner nodes x (leaves when 2x >= P)."""
    c = 2 * x
    is_inner = c < P
    j = c - P
    leaf = mask & ~is_inner
    li = tl.load(INNER + c, mask=mask & is_inner, other=0.0)
    ri = tl.load(INNER + c + 1, mask=mask & is_inner, other=0.0)
    ll = tl.load(LEAVES + j, mask=leaf & (j < capacity), other=0.0).to(tl.float64)
    rl = tl.load(LEAVES + j + 1, mask=leaf & (j + 1 < capacity), other=0.0).to(tl.float64)
    return tl.where(is_inner, li, ll), tl.where(is_inner, ri, rl)


@triton.jit
def _level_kernel(LEAVES, INNER, width, P, capacity, BLOCK: tl.constexpr):
    """Recomputes the inner nodes [width, 2 * width) (one whole level)."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = t < width
    x = width + t
    left, right = _child_sums(LEAVES, INNER, x, mask, P, capacity)
    tl.store(INNER + x, left + right, mask=mask)


@triton.jit
def _update_kernel(LEAVES, INNER, IDX, VAL, KEEP, OK, k, capacity, P, H, d_first, n_levels,
                   d_dense, per_prog, WRITE_LEAVES: tl.constexpr, BLOCK: tl.constexpr):
    """Entries [pid * per_prog, ...) of the sorted batch: optionally writes their leaves, then
    recomputes `n_levels` levels of ancestors from depth d_first upwards (a block barrier
    between levels). Depths <= d_dense are no wider than k and recomputed whole. Does
    nothing unless *OK != 0 (the batch passed validation)."""
    P64 = P.to(tl.int64)
    lo = tl.program_id(0).to(tl.int64) * per_prog
    hi = tl.minimum(lo + per_prog, k)
    offs = tl.arange(0, BLOCK)
    ok = tl.load(OK + offs * 0) != 0  # the flag, broadcast to the block
    if WRITE_LEAVES:
        for start in range(lo, hi, BLOCK):
            t = start + offs
            m = (t < hi) & ok
            idx = tl.load(IDX + t, mask=m, other=0)
            keep = tl.load(KEEP + t, mask=m, other=0) != 0
            val = tl.load(VAL + t, mask=m, other=0.0)
            tl.store(LEAVES + idx, val, mask=m & keep)
        tl.debug_barrier()
    for s in range(n_levels):
        d = d_first - s
        width = P64 >> (H - d)
        dense = (offs * 0 + d) <= d_dense  # per lane (scalar bool masks upset the interpreter)
        for start in range(lo, hi, BLOCK):
            t = start + offs
            m = (t < hi) & ok
            idx = tl.load(IDX + t, mask=m & ~dense, other=0)
            x = tl.where(dense, width + t, (idx + P64) >> (H - d))
            m = m & (~dense | (t < width))
            left, right = _child_sums(LEAVES, INNER, x, m, P64, capacity)
            tl.store(INNER + x, left + right, mask=m)
        tl.debug_barrier()


@triton.jit
def descend(LEAVES, INNER, u, mask, P, capacity, H, BLOCK: tl.constexpr):
    """The leaf of every uniform u (float64 [BLOCK]), descending from the root: never enters
    a child of sum 0. -1 for every u if the total is 0, and -1 for a descent that ends on the
    padding (inner nodes that do not match the leaves): never an index out of range."""
    P64 = P.to(tl.int64)
    total = tl.load(INNER + 1)
    r = u * total
    x = tl.full([BLOCK], 1, tl.int64)
    for _ in range(H):
        left, right = _child_sums(LEAVES, INNER, x, mask, P64, capacity)
        go_right = (right > 0.0) & (r >= left)
        r = tl.where(go_right, r - left, r)
        x = 2 * x + go_right.to(tl.int64)
    leaf = tl.where(x - P64 < capacity, x - P64, -1)
    return tl.where(total > 0.0, leaf, -1)


@triton.jit
def _sample_kernel(LEAVES, INNER, U, OUT, n, capacity, P, H, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u = tl.load(U + offs, mask=mask, other=0.0)
    tl.store(OUT + offs, descend(LEAVES, INNER, u, mask, P, capacity, H, BLOCK), mask=mask)


def _rebuild_levels(leaves: torch.Tensor, inner: torch.Tensor) -> None:
    p = inner.numel()
    width = p // 2
    while width >= 1:
        _level_kernel[(triton.cdiv(width, BLOCK),)](leaves, inner, width, p, leaves.numel(),
                                                    BLOCK=BLOCK, num_warps=4)
        width //= 2


def build(leaves: torch.Tensor) -> torch.Tensor:
    """Inner nodes (float64 [P]) of a tree with these leaves. Inputs already checked."""
    inner = torch.zeros(max(2, triton.next_power_of_2(leaves.numel())), dtype=torch.float64,
                        device=leaves.device)
    _rebuild_levels(leaves, inner)
    return inner


def update(leaves: torch.Tensor, inner: torch.Tensor, indices: torch.Tensor,
           values: torch.Tensor, ok: torch.Tensor, fused_max: int = FUSED_MAX) -> None:
    """Writes leaves[indices] = values (last occurrence wins) and their ancestors, unless
    ``ok`` (int32 0-dim, on device) is 0. Shapes/dtypes already checked."""
    k = indices.numel()
    if k == 0:
        return
    p, capacity = inner.numel(), leaves.numel()
    h = heap_depth(p)
    sorted_idx, perm = torch.sort(indices.reshape(-1), stable=True)
    keep = torch.ones(k, dtype=torch.int8, device=leaves.device)
    keep[:-1] = sorted_idx[1:] != sorted_idx[:-1]
    vals = values.reshape(-1)[perm]
    # Depths whose width 2^d is at most k are recomputed whole.
    d_dense = min(h - 1, k.bit_length() - 1)
    args = (leaves, inner, sorted_idx, vals, keep, ok, k, capacity, p, h)
    if k <= fused_max:
        _update_kernel[(1,)](*args, h - 1, h, d_dense, k, WRITE_LEAVES=True, BLOCK=BLOCK,
                             num_warps=8)
        return
    grid = (triton.cdiv(k, BLOCK),)
    _update_kernel[grid](*args, h - 1, 0, d_dense, BLOCK, WRITE_LEAVES=True, BLOCK=BLOCK,
                         num_warps=4)
    for d in range(h - 1, -1, -1):
        _update_kernel[grid](*args, d, 1, d_dense, BLOCK, WRITE_LEAVES=False, BLOCK=BLOCK,
                             num_warps=4)


def sample(leaves: torch.Tensor, inner: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """int64 leaf indices for the float64 uniforms u ([n], in [0, 1)); -1 where total == 0."""
    u = u.contiguous()
    n = u.numel()
    out = torch.empty(n, dtype=torch.int64, device=leaves.device)
    if n > 0:
        p = inner.numel()
        _sample_kernel[(triton.cdiv(n, BLOCK),)](leaves, inner, u, out, n, leaves.numel(), p,
                                                 heap_depth(p), BLOCK=BLOCK, num_warps=4)
    return out
