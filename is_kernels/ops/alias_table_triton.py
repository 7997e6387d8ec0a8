"""Triton kernels of the alias table ops (the CUDA implementation; method in
csrc/alias_table.cpp).

Groups: one program sums a tile of groups of ``group_size`` weights (a coalesced read), each
in index order in float64 (as the C++ build and the draws' walks add), and the table is built
over those sums; an invalid weight makes its group's sum, and so the total, NaN, which the
table kernel turns into a status (no separate pass over the weights, no copy of them).
A draw picks a group from the table, then walks the group's weights: the first item whose
running sum exceeds u * (the group's sum), or, if u * sum rounds up to the sum, the group's
last item of positive weight.

Parallel build (of the table of the group sums): p = w * N / W; the prefix sums D (light
deficits 1 - p) and E (heavy excesses p - 1) and the running count of heavies are the
three columns of one ``torch.cumsum`` (parallel on the GPU); then every item finds its own
table entry with binary searches in those scans, all in parallel: a light its heavy (the
first h with E(h) > D(i - 1)), a heavy the light during which it ran out of excess (the
first l with D(l) >= E(h)) and the next heavy. This is the sweep of Hübschle-Schneider &
Sanders (2019) cut into chunks of one item each. No host sync. The launchers also run on CPU
tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .cuda_path import workspace

BLOCK = 1024


@triton.jit
def _first_index(ARR, x, n, mask, STRICT: tl.constexpr, STEPS: tl.constexpr):
    """Per lane, the first m in [0, n) with ARR[3 m] > x (STRICT) or >= x; n if none (ARR:
    a column of a non-decreasing [n, 3] scan). STEPS >= ceil(log2(n + 1))."""
    lo = tl.zeros(x.shape, tl.int64)
    hi = tl.zeros(x.shape, tl.int64) + n
    for _ in range(STEPS):
        active = mask & (lo < hi)
        mid = (lo + hi) // 2
        v = tl.load(ARR + 3 * mid, mask=active, other=0)
        if STRICT:
            found = v > x
        else:
            found = v >= x
        hi = tl.where(active & found, mid, hi)
        lo = tl.where(active & ~found, mid + 1, lo)
    return lo


@triton.jit
def _share(S, TOTAL, i, mask, n):
    """p_i = S_i * (n / total) (float64; S of the valid weights, total their sum), or
    S_i / total * n where n / total overflows (tiny, e.g. subnormal, weights)."""
    s = tl.load(S + i, mask=mask, other=0.0)
    total = tl.load(TOTAL)
    scale = n / total
    return tl.where(scale < float("inf"), s * scale, s / total * n)


@triton.jit
def _classify_kernel(S, TOTAL, X, n, BLOCK: tl.constexpr):
    """X[i] = (light deficit 1 - p_i, heavy excess p_i - 1, heavy count), float64 [n, 3]:
    the three columns one cumsum scans."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    p = _share(S, TOTAL, i, mask, n)
    heavy = p > 1.0
    tl.store(X + 3 * i, tl.where(heavy, 0.0, 1.0 - p), mask=mask)
    tl.store(X + 3 * i + 1, tl.where(heavy, p - 1.0, 0.0), mask=mask)
    tl.store(X + 3 * i + 2, tl.where(heavy, 1.0, 0.0), mask=mask)


@triton.jit
def _build_kernel(S, TOTAL, CUM, PROB, ALIAS, STATUS, ERR, n, bad_code, zero_code,
                  STEPS: tl.constexpr, BLOCK: tl.constexpr):
    """The table entries [pid * BLOCK, ...) from the scans CUM = cumsum(X) (columns D, E,
    H). Program 0 writes STATUS: 0, or bad_code (the total is not finite: an invalid weight,
    whose group sum is NaN) or zero_code (all weights 0), and records it in *ERR unless a
    code is there."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    p = _share(S, TOTAL, i, mask, n)
    heavy = p > 1.0
    light_m = mask & ~heavy
    heavy_m = mask & heavy
    CUM_D = CUM
    CUM_E = CUM + 1
    CUM_H = CUM + 2
    n_heavy = tl.load(CUM_H + 3 * (i * 0 + n - 1))  # (int64: 3 n may pass 2^31)
    # Light i: the heavy current in the sweep (past the last heavy only by rounding).
    before = tl.load(CUM_D + 3 * (i - 1), mask=light_m & (i > 0), other=0.0)
    h = _first_index(CUM_E, before, n, light_m, True, STEPS)
    # The last heavy: the first index where the count of heavies reaches its maximum.
    last_h = _first_index(CUM_H, n_heavy + tl.zeros([BLOCK], tl.float64), n, light_m, False,
                          STEPS)
    light_alias = tl.where(h < n, h, tl.where(n_heavy > 0, last_h, i))
    # Heavy i: runs out of excess during light l; its own bucket aliases the next heavy.
    e = tl.load(CUM_E + 3 * i, mask=heavy_m, other=0.0)
    l = _first_index(CUM_D, e, n, heavy_m, False, STEPS)
    rank = tl.load(CUM_H + 3 * i, mask=heavy_m, other=0.0)
    nxt = _first_index(CUM_H, rank + 1.0, n, heavy_m, False, STEPS)
    d_l = tl.load(CUM_D + 3 * l, mask=heavy_m & (l < n), other=0.0)
    has_next = (l < n) & (nxt < n)
    heavy_prob = tl.where(has_next, tl.minimum(tl.maximum(1.0 - (d_l - e), 0.0), 1.0), 1.0)
    heavy_alias = tl.where(has_next, nxt, i)
    tl.store(PROB + i, tl.where(heavy, heavy_prob, p), mask=mask)
    tl.store(ALIAS + i, tl.where(heavy, heavy_alias, light_alias).to(tl.int32), mask=mask)
    first = i == 0
    total = tl.load(TOTAL + i * 0, mask=first, other=1.0)
    status = tl.where(total == 0.0, zero_code,
                      tl.where((total > 0.0) & (total < float("inf")), 0, bad_code))
    tl.store(STATUS + i * 0, status, mask=first)
    old = tl.load(ERR + i * 0, mask=first, other=0)
    tl.store(ERR + i * 0, tl.where(old == 0, status, old), mask=first)


@triton.jit
def _group_sums_kernel(W, SUMS, n, m, group, ROWS: tl.constexpr, GP: tl.constexpr,
                       TILE: tl.constexpr):
    """SUMS[g] = the float64 sum of group g's weights, added in index order, or NaN if one is
    not finite and >= 0 (group 1: the weights in float64). ROWS groups a program. TILE
    (groups of up to 32): one coalesced [ROWS, GP] load (GP >= group, a power of two), whose
    column j is taken out in turn; larger groups: one load per column (a warp's lanes read
    groups of >= 128 bytes, one line each)."""
    g = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    acc = tl.zeros([ROWS], tl.float64)
    if TILE:
        cols = tl.arange(0, GP)
        i = g[:, None] * group + cols[None, :]
        mask = (g[:, None] < m) & (cols[None, :] < group) & (i < n)
        x = tl.load(W + i, mask=mask, other=0.0).to(tl.float64)
        bad = tl.max((mask & ~((x >= 0.0) & (x < float("inf")))).to(tl.int32), axis=1) != 0
        for j in tl.static_range(GP):
            acc += tl.sum(tl.where(cols[None, :] == j, x, 0.0), axis=1)
    else:
        bad = g < 0
        for j in range(group):
            i = g * group + j
            mask = (g < m) & (i < n)
            x = tl.load(W + i, mask=mask, other=0.0).to(tl.float64)
            bad = bad | (mask & ~((x >= 0.0) & (x < float("inf"))))
            acc += x
    tl.store(SUMS + g, tl.where(bad, float("nan"), acc), mask=g < m)


@triton.jit
def _sample_kernel(PROB, ALIAS, SUMS, W, U, OUT, STATUS, n, m, size, group,
                   ONE: tl.constexpr, BLOCK: tl.constexpr):
    """Draws [pid * BLOCK, ...); all -1 where *STATUS != 0 (a table of invalid weights), and
    -1 for a draw whose alias entry is out of [0, m) (a table not built by the build op):
    never an index out of range."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = tl.load(STATUS + offs * 0) == 0
    mask = offs < n
    u0 = tl.load(U + offs, mask=mask, other=0.0)
    u1 = tl.load(U + (offs + n), mask=mask, other=0.0)  # (int64: 2 n may pass 2^31)
    # u0 * m < m in exact arithmetic, but may round up to m.
    k = tl.minimum((u0 * m).to(tl.int64), m - 1)
    prob = tl.load(PROB + k, mask=mask, other=0.0)
    alias = tl.load(ALIAS + k, mask=mask, other=0).to(tl.int64)
    g = tl.where(u1 < prob, k, alias)
    valid = valid & (g >= 0) & (g < m)
    read = mask & valid  # (the walk reads only in range)
    if ONE:
        tl.store(OUT + offs, tl.where(valid, g, -1), mask=mask)
    else:
        u2 = tl.load(U + (offs + n) + n, mask=read, other=0.0)
        r = u2 * tl.load(SUMS + g, mask=read, other=0.0)
        acc = tl.zeros([BLOCK], tl.float64)
        found = offs < 0
        pick = g * group
        last = g * group
        for j in range(group):
            i = g * group + j
            x = tl.load(W + i, mask=read & (i < size), other=0.0).to(tl.float64)
            acc += x
            hit = (acc > r) & ~found
            pick = tl.where(hit, i, pick)
            found = found | hit
            last = tl.where(x > 0.0, i, last)
        tl.store(OUT + offs, tl.where(valid, tl.where(found, pick, last), -1), mask=mask)


def build(weights: torch.Tensor, group_size: int, err: Optional[torch.Tensor] = None,
          codes: Tuple[int, int] = (1, 2)):
    """(prob, alias, sums, status) of the groups of the weights. ``status`` (int32 0-dim):
    0, or ``codes[0]`` (an invalid weight) / ``codes[1]`` (all weights 0), where the table
    is meaningless (its draws are -1); also recorded in ``err`` unless a code is there.
    Launches: group sums, their total, classification, one cumsum, the table kernel."""
    w = weights.contiguous()
    n = w.numel()
    m = -(-n // group_size)
    dev = w.device
    sums = torch.empty(m, dtype=torch.float64, device=dev)
    gp = triton.next_power_of_2(group_size)
    rows = max(1, min(BLOCK, 2048 // gp)) if gp <= 32 else BLOCK  # (a lane per group)
    _group_sums_kernel[(triton.cdiv(m, rows),)](w, sums, n, m, group_size, ROWS=rows, GP=gp,
                                                TILE=gp <= 32, num_warps=4)
    total = sums.sum()
    x = torch.empty((m, 3), dtype=torch.float64, device=dev)
    grid = (triton.cdiv(m, BLOCK),)
    _classify_kernel[grid](sums, total, x, m, BLOCK=BLOCK, num_warps=4)
    cum = torch.cumsum(x, 0)
    prob = torch.empty(m, dtype=torch.float64, device=dev)
    alias = torch.empty(m, dtype=torch.int32, device=dev)
    status = torch.empty((), dtype=torch.int32, device=dev)
    _build_kernel[grid](sums, total, cum, prob, alias, status, err if err is not None else status,
                        m, codes[0], codes[1], STEPS=max(1, (m + 1).bit_length()), BLOCK=BLOCK,
                        num_warps=4)
    if group_size == 1:  # the draws need no group sums
        sums = torch.empty(0, dtype=torch.float64, device=dev)
    return prob, alias, sums, status


def sample(prob: torch.Tensor, alias: torch.Tensor, sums: torch.Tensor, weights: torch.Tensor,
           u: torch.Tensor, group_size: int,
           status: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int64 draws for the float64 uniforms u ([3, n]: bucket, coin, item in the group); all
    -1 where ``status`` (of :func:`build`) is not 0, and -1 where an alias entry is out of
    range."""
    u = u.contiguous()
    n = u.shape[1]
    out = torch.empty(n, dtype=torch.int64, device=prob.device)
    if status is None:
        status = workspace(prob.device)[3]  # an int32 0 no kernel writes
    if n > 0:
        _sample_kernel[(triton.cdiv(n, BLOCK),)](prob, alias, sums, weights.contiguous(), u, out,
                                                 status, n, prob.numel(), weights.numel(),
                                                 group_size, ONE=group_size == 1, BLOCK=BLOCK,
                                                 num_warps=4)
    return out
