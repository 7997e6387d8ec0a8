"""Triton kernels of the sum and min tree ops (the CUDA implementation; layout in
csrc/sum_tree.cpp). Build, update and query serve both trees (``is_min``).

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

import math

import torch
import triton
import triton.language as tl

BLOCK = 1024
# Batches up to this size are handled by a single program (one launch for all levels).
FUSED_MAX = 1 << 14


def heap_depth(p: int) -> int:
    return p.bit_length() - 1


@triton.jit
def _combine(a, b, IS_MIN: tl.constexpr):
    if IS_MIN:
        return tl.where(b < a, b, a)
    else:
        return a + b


@triton.jit
def _identity(INNER, BLOCK: tl.constexpr, IS_MIN: tl.constexpr):
    """[BLOCK] identity elements in the dtype of INNER: +inf (min tree) or 0 (sum tree)."""
    zero = tl.zeros([BLOCK], INNER.dtype.element_ty)
    if IS_MIN:
        return zero + float("inf")
    else:
        return zero


@triton.jit
def _node(LEAVES, INNER, y, mask, P, capacity, IS_MIN: tl.constexpr):
    """Values of the nodes at heap positions y >= 1 (inner, leaf, or padding: 0 for the sum
    tree, +inf for the min tree), in the dtype of INNER."""
    is_inner = y < P
    j = y - P
    iv = tl.load(INNER + y, mask=mask & is_inner, other=0.0)
    lv = tl.load(LEAVES + j, mask=mask & ~is_inner & (j < capacity), other=0.0)
    v = tl.where(is_inner, iv, lv.to(INNER.dtype.element_ty))
    if IS_MIN:
        v = tl.where(is_inner | (j < capacity), v, float("inf"))
    return v


@triton.jit
def _children(LEAVES, INNER, x, mask, P, capacity, IS_MIN: tl.constexpr):
    """Inner nodes x recomputed from their two children."""
    return _combine(_node(LEAVES, INNER, 2 * x, mask, P, capacity, IS_MIN),
                    _node(LEAVES, INNER, 2 * x + 1, mask, P, capacity, IS_MIN), IS_MIN)


@triton.jit
def _level_kernel(LEAVES, INNER, width, P, capacity, IS_MIN: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Recomputes the inner nodes [width, 2 * width) (one whole level)."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = t < width
    x = width + t
    tl.store(INNER + x, _children(LEAVES, INNER, x, mask, P, capacity, IS_MIN), mask=mask)


@triton.jit
def _update_kernel(LEAVES, INNER, IDX, VAL, KEEP, OK, k, capacity, P, H, d_first, n_levels,
                   d_dense, per_prog, WRITE_LEAVES: tl.constexpr, IS_MIN: tl.constexpr,
                   BLOCK: tl.constexpr):
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
            tl.store(INNER + x, _children(LEAVES, INNER, x, m, P64, capacity, IS_MIN), mask=m)
        tl.debug_barrier()


@triton.jit
def descend_mass(LEAVES, INNER, r, mask, P, capacity, H, BLOCK: tl.constexpr):
    """The leaf of every mass r (float64 [BLOCK]), descending from the root: go right iff the
    right child's sum is > 0 and r >= the left sum (then r -= left sum). Never enters a child
    of sum 0. -1 for every r if the total is 0, and -1 for a descent that ends on the padding
    (inner nodes that do not match the leaves): never an index out of range."""
    P64 = P.to(tl.int64)
    total = tl.load(INNER + 1)
    x = tl.full([BLOCK], 1, tl.int64)
    for _ in range(H):
        left = _node(LEAVES, INNER, 2 * x, mask, P64, capacity, False)
        right = _node(LEAVES, INNER, 2 * x + 1, mask, P64, capacity, False)
        go_right = (right > 0.0) & (r >= left)
        r = tl.where(go_right, r - left, r)
        x = 2 * x + go_right.to(tl.int64)
    leaf = tl.where(x - P64 < capacity, x - P64, -1)
    return tl.where(total > 0.0, leaf, -1)


@triton.jit
def descend(LEAVES, INNER, u, mask, P, capacity, H, BLOCK: tl.constexpr):
    """The leaf of every uniform u (float64 [BLOCK]): the descent of u * total."""
    total = tl.load(INNER + 1)
    return descend_mass(LEAVES, INNER, u * total, mask, P, capacity, H, BLOCK)


@triton.jit
def _sample_kernel(LEAVES, INNER, U, OUT, n, capacity, P, H, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u = tl.load(U + offs, mask=mask, other=0.0)
    tl.store(OUT + offs, descend(LEAVES, INNER, u, mask, P, capacity, H, BLOCK), mask=mask)


@triton.jit
def _scan_kernel(LEAVES, INNER, MASS, OUT, n, capacity, P, H, BLOCK: tl.constexpr):
    """-1 for a mass that is not finite and >= 0 (and for every mass of an all-zero tree)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(MASS + offs, mask=mask, other=0.0)
    ok = (m >= 0.0) & (m <= 1.7976931348623157e308)
    leaf = descend_mass(LEAVES, INNER, tl.where(ok, m, 0.0), mask, P, capacity, H, BLOCK)
    tl.store(OUT + offs, tl.where(ok, leaf, -1), mask=mask)


@triton.jit
def _query_kernel(LEAVES, INNER, START, END, OUT, n, capacity, P, H, IS_MIN: tl.constexpr,
                  BLOCK: tl.constexpr):
    """The combination of the leaves [start, end) of every range, as csrc/sum_tree.cpp's
    query_range (same nodes, same order: the same bits). NaN for a range that is not within
    [0, capacity)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    P64 = P.to(tl.int64)
    s = tl.load(START + offs, mask=mask, other=0)
    e = tl.load(END + offs, mask=mask, other=0)
    ok = (s >= 0) & (s <= e) & (e <= capacity)
    s = tl.where(ok, s, 0)
    e = tl.where(ok, e, 0)
    l = s + P64
    r = tl.where(e == capacity, P64, e) + P64
    pad = _identity(INNER, BLOCK, IS_MIN)
    acc = pad
    for _ in range(H + 1):
        active = mask & (l < r)
        take = active & ((l & 1) == 1)
        acc = _combine(acc, tl.where(take, _node(LEAVES, INNER, l, take, P64, capacity, IS_MIN),
                                     pad), IS_MIN)
        l = tl.where(take, l + 1, l)
        take = active & ((r & 1) == 1)
        r = tl.where(take, r - 1, r)
        acc = _combine(acc, tl.where(take, _node(LEAVES, INNER, r, take, P64, capacity, IS_MIN),
                                     pad), IS_MIN)
        l = l >> 1
        r = r >> 1
    tl.store(OUT + offs, tl.where(ok, acc, float("nan")), mask=mask)


def _rebuild_levels(leaves: torch.Tensor, inner: torch.Tensor, is_min: bool) -> None:
    p = inner.numel()
    width = p // 2
    while width >= 1:
        _level_kernel[(triton.cdiv(width, BLOCK),)](leaves, inner, width, p, leaves.numel(),
                                                    IS_MIN=is_min, BLOCK=BLOCK, num_warps=4)
        width //= 2


def build(leaves: torch.Tensor, is_min: bool = False) -> torch.Tensor:
    """Inner nodes ([P]: float64 for the sum tree, the leaf dtype for the min tree) of a tree
    with these leaves. Inputs already checked."""
    inner = torch.full((max(2, triton.next_power_of_2(leaves.numel())),),
                       math.inf if is_min else 0.0, device=leaves.device,
                       dtype=leaves.dtype if is_min else torch.float64)
    _rebuild_levels(leaves, inner, is_min)
    return inner


def update(leaves: torch.Tensor, inner: torch.Tensor, indices: torch.Tensor,
           values: torch.Tensor, ok: torch.Tensor, fused_max: int = FUSED_MAX,
           is_min: bool = False) -> None:
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
        _update_kernel[(1,)](*args, h - 1, h, d_dense, k, WRITE_LEAVES=True, IS_MIN=is_min,
                             BLOCK=BLOCK, num_warps=8)
        return
    grid = (triton.cdiv(k, BLOCK),)
    _update_kernel[grid](*args, h - 1, 0, d_dense, BLOCK, WRITE_LEAVES=True, IS_MIN=is_min,
                         BLOCK=BLOCK, num_warps=4)
    for d in range(h - 1, -1, -1):
        _update_kernel[grid](*args, d, 1, d_dense, BLOCK, WRITE_LEAVES=False, IS_MIN=is_min,
                             BLOCK=BLOCK, num_warps=4)


def query(leaves: torch.Tensor, inner: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
          is_min: bool = False) -> torch.Tensor:
    """The sums (float64) or minima (leaf dtype) of the leaves [start, end) ([n] int64 each);
    NaN for a range that is not within [0, capacity)."""
    start, end = start.contiguous(), end.contiguous()
    n = start.numel()
    out = torch.empty(n, dtype=inner.dtype, device=leaves.device)
    if n > 0:
        p = inner.numel()
        _query_kernel[(triton.cdiv(n, BLOCK),)](leaves, inner, start, end, out, n,
                                                leaves.numel(), p, heap_depth(p),
                                                IS_MIN=is_min, BLOCK=BLOCK, num_warps=4)
    return out


def _descend(kernel, leaves: torch.Tensor, inner: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """int64 leaf indices of the descents of x ([n] float64) by a descent kernel."""
    x = x.contiguous()
    n = x.numel()
    out = torch.empty(n, dtype=torch.int64, device=leaves.device)
    if n > 0:
        p = inner.numel()
        kernel[(triton.cdiv(n, BLOCK),)](leaves, inner, x, out, n, leaves.numel(), p,
                                         heap_depth(p), BLOCK=BLOCK, num_warps=4)
    return out


def scan_lower_bound(leaves: torch.Tensor, inner: torch.Tensor,
                     mass: torch.Tensor) -> torch.Tensor:
    """int64 leaf indices for the float64 masses ([n]); -1 for a mass that is not finite and
    >= 0, and for all of them where total == 0."""
    return _descend(_scan_kernel, leaves, inner, mass)


def sample(leaves: torch.Tensor, inner: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """int64 leaf indices for the float64 uniforms u ([n], in [0, 1)); -1 where total == 0."""
    return _descend(_sample_kernel, leaves, inner, u)
