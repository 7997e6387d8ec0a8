"""Triton kernels of the alias table ops (the CUDA implementation; method in
csrc/alias_table.cpp).

Groups: one program sums BLOCK groups of ``group_size`` weights, each in index order in
float64 (as the C++ build and the draws' walks add), and the table is built over those sums.
A draw picks a group from the table, then walks the group's weights: the first item whose
running sum exceeds u * (the group's sum), or, if u * sum rounds up to the sum, the group's
last item of positive weight.

Parallel build (of the table of the group sums): p = w * N / W; the prefix sums D (light
deficits 1 - p) and E (heavy excesses p - 1) and the running count of heavies are
``torch.cumsum`` scans (parallel on the GPU); then every item finds its own table entry with
binary searches in those scans, all in parallel: a light its heavy (the first h with
E(h) > D(i - 1)), a heavy the light during which it ran out of excess (the first l with
D(l) >= E(h)) and the next heavy. This is the sweep of Hübschle-Schneider & Sanders (2019)
cut into chunks of one item each. No host sync. The launchers also run on CPU tensors under
``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _first_index(ARR, x, n, mask, STRICT: tl.constexpr, STEPS: tl.constexpr):
    """Per lane, the first m in [0, n) with ARR[m] > x (STRICT) or >= x; n if none.
    ARR is non-decreasing; STEPS >= ceil(log2(n + 1))."""
    lo = tl.zeros(x.shape, tl.int64)
    hi = tl.zeros(x.shape, tl.int64) + n
    for _ in range(STEPS):
        active = mask & (lo < hi)
        mid = (lo + hi) // 2
        v = tl.load(ARR + mid, mask=active, other=0)
        if STRICT:
            found = v > x
        else:
            found = v >= x
        hi = tl.where(active & found, mid, hi)
        lo = tl.where(active & ~found, mid + 1, lo)
    return lo


@triton.jit
def _build_kernel(PR, CUM_D, CUM_E, CUM_H, LAST_H, PROB, ALIAS, n, STEPS: tl.constexpr,
                  BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    p = tl.load(PR + i, mask=mask, other=0.0)
    heavy = p > 1.0
    light_m = mask & ~heavy
    heavy_m = mask & heavy
    n_heavy = tl.load(CUM_H + n - 1)
    # Light i: the heavy current in the sweep (past the last heavy only by rounding).
    before = tl.load(CUM_D + i - 1, mask=light_m & (i > 0), other=0.0)
    h = _first_index(CUM_E, before, n, light_m, True, STEPS)
    last_h = tl.load(LAST_H)
    light_alias = tl.where(h < n, h, tl.where(n_heavy > 0, last_h, i))
    # Heavy i: runs out of excess during light l; its own bucket aliases the next heavy.
    e = tl.load(CUM_E + i, mask=heavy_m, other=0.0)
    l = _first_index(CUM_D, e, n, heavy_m, False, STEPS)
    rank = tl.load(CUM_H + i, mask=heavy_m, other=0)
    nxt = _first_index(CUM_H, rank + 1, n, heavy_m, False, STEPS)
    d_l = tl.load(CUM_D + l, mask=heavy_m & (l < n), other=0.0)
    has_next = (l < n) & (nxt < n)
    heavy_prob = tl.where(has_next, tl.minimum(tl.maximum(1.0 - (d_l - e), 0.0), 1.0), 1.0)
    heavy_alias = tl.where(has_next, nxt, i)
    tl.store(PROB + i, tl.where(heavy, heavy_prob, p), mask=mask)
    tl.store(ALIAS + i, tl.where(heavy, heavy_alias, light_alias).to(tl.int32), mask=mask)


@triton.jit
def _group_sums_kernel(W, SUMS, n, m, group, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = g < m
    acc = tl.zeros([BLOCK], tl.float64)
    for k in range(group):
        i = g * group + k
        acc += tl.load(W + i, mask=mask & (i < n), other=0.0).to(tl.float64)
    tl.store(SUMS + g, acc, mask=mask)


@triton.jit
def _sample_kernel(PROB, ALIAS, SUMS, W, U, OUT, n, m, size, group, ONE: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u0 = tl.load(U + offs, mask=mask, other=0.0)
    u1 = tl.load(U + n + offs, mask=mask, other=0.0)
    # u0 * m < m in exact arithmetic, but may round up to m.
    k = tl.minimum((u0 * m).to(tl.int64), m - 1)
    prob = tl.load(PROB + k, mask=mask, other=0.0)
    alias = tl.load(ALIAS + k, mask=mask, other=0).to(tl.int64)
    g = tl.where(u1 < prob, k, alias)
    if ONE:
        tl.store(OUT + offs, g, mask=mask)
    else:
        u2 = tl.load(U + 2 * n + offs, mask=mask, other=0.0)
        r = u2 * tl.load(SUMS + g, mask=mask, other=0.0)
        acc = tl.zeros([BLOCK], tl.float64)
        found = offs < 0
        pick = g * group
        last = g * group
        for j in range(group):
            i = g * group + j
            x = tl.load(W + i, mask=mask & (i < size), other=0.0).to(tl.float64)
            acc += x
            hit = (acc > r) & ~found
            pick = tl.where(hit, i, pick)
            found = found | hit
            last = tl.where(x > 0.0, i, last)
        tl.store(OUT + offs, tl.where(found, pick, last), mask=mask)


def _table(w: torch.Tensor):
    """(prob float64 [N], alias int32 [N]) of the float64 weights w (valid, positive sum)."""
    n = w.numel()
    total = w.sum()
    scale = n / total
    # n / total overflows for tiny (subnormal) weights; w / total * n does not (no host sync).
    p = torch.where(torch.isfinite(scale), w * scale, w / total * n)
    heavy = p > 1.0
    cum_d = torch.cumsum(torch.where(heavy, 0.0, 1.0 - p), 0)
    cum_e = torch.cumsum(torch.where(heavy, p - 1.0, 0.0), 0)
    cum_h = torch.cumsum(heavy, 0, dtype=torch.int64)
    last_h = torch.argmax(cum_h)  # the first index where the count reaches its maximum
    prob = torch.empty(n, dtype=torch.float64, device=w.device)
    alias = torch.empty(n, dtype=torch.int32, device=w.device)
    _build_kernel[(triton.cdiv(n, BLOCK),)](p, cum_d, cum_e, cum_h, last_h, prob, alias, n,
                                            STEPS=max(1, (n + 1).bit_length()), BLOCK=BLOCK,
                                            num_warps=4)
    return prob, alias


def build(weights: torch.Tensor, group_size: int):
    """(prob, alias, sums) of the groups of valid weights with a positive sum."""
    w = weights.contiguous()
    if group_size == 1:
        prob, alias = _table(w.to(torch.float64))
        return prob, alias, torch.empty(0, dtype=torch.float64, device=w.device)
    n = w.numel()
    m = -(-n // group_size)
    sums = torch.empty(m, dtype=torch.float64, device=w.device)
    _group_sums_kernel[(triton.cdiv(m, BLOCK),)](w, sums, n, m, group_size, BLOCK=BLOCK,
                                                 num_warps=4)
    prob, alias = _table(sums)
    return prob, alias, sums


def sample(prob: torch.Tensor, alias: torch.Tensor, sums: torch.Tensor, weights: torch.Tensor,
           u: torch.Tensor, group_size: int) -> torch.Tensor:
    """int64 draws for the float64 uniforms u ([3, n]: bucket, coin, item in the group)."""
    u = u.contiguous()
    n = u.shape[1]
    out = torch.empty(n, dtype=torch.int64, device=prob.device)
    if n > 0:
        _sample_kernel[(triton.cdiv(n, BLOCK),)](prob, alias, sums, weights.contiguous(), u, out,
                                                 n, prob.numel(), weights.numel(), group_size,
                                                 ONE=group_size == 1, BLOCK=BLOCK, num_warps=4)
    return out
