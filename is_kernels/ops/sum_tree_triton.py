"""Triton kernels of the sum and min tree ops (the CUDA implementation; layout in
csrc/sum_tree.cpp). Build, update and query serve both trees (``IS_MIN``).

The launchers take any tensors Triton can address: CUDA tensors normally, CPU tensors under
``TRITON_INTERPRET=1`` (how the tests check these kernels without a GPU). Nothing here
synchronises with the host, so update and sample can be captured in a CUDA graph.

Update: the batch is sorted by index (a stable ``torch.sort``); only the last occurrence of
every index writes its leaf (last wins, no write race), and the checks (indices in range,
values valid) run inside the kernels, so an invalid batch writes nothing and its error code
lands in a device flag. Parents are recomputed from their children, bottom-up; two lanes
recomputing the same ancestor read the same final children and write the same value.

- ``k <= FUSED_MAX``: one program checks the batch, writes, and walks all levels with a
  block barrier between them; a level no wider than the batch is recomputed whole.
- larger batches: a check kernel, then one program per ``BLOCK`` sorted entries: it writes
  its leaves and recomputes the ancestors that no other program's entries share; the last
  program to finish (a counter in a device workspace) recomputes the shared ones, the
  ancestors of every program's first and last entry, bottom-up.

Launches: sort + 1 (fused) or sort + 2. Crossover model for ``FUSED_MAX``: a level of a
1024-entry chunk costs one dependent global round trip c (~1 us), a launch L (~4 us). Fused:
ceil(k / 1024) (H + 1) c; multi: L + (2H + 1) c (every program one chunk, then the last
program's shared levels). With H = 24 the fused path wins up to two chunks.
bench/gpu_check.sh measures the crossover on a GPU.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .cuda_path import float32_parts, workspace

BLOCK = 1024
# Draws per program of the sample kernel: 4096 draws spread over 32 programs.
SAMPLE_BLOCK = 128
# Batches up to this size are handled by a single program (see the crossover model above).
FUSED_MAX = 2 * BLOCK


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
def _node(LEAVES, INNER, y, mask, P, capacity, IS_MIN: tl.constexpr, CACHE: tl.constexpr):
    """Values of the nodes at heap positions y >= 1 (inner, leaf, or padding: 0 for the sum
    tree, +inf for the min tree), in the dtype of INNER. CACHE ".cg" reads past the SM's L1
    (nodes other programs wrote in this launch)."""
    is_inner = y < P
    j = y - P
    iv = tl.load(INNER + y, mask=mask & is_inner, other=0.0, cache_modifier=CACHE)
    lv = tl.load(LEAVES + j, mask=mask & ~is_inner & (j < capacity), other=0.0,
                 cache_modifier=CACHE)
    v = tl.where(is_inner, iv, lv.to(INNER.dtype.element_ty))
    if IS_MIN:
        v = tl.where(is_inner | (j < capacity), v, float("inf"))
    return v


@triton.jit
def _children(LEAVES, INNER, x, mask, P, capacity, IS_MIN: tl.constexpr,
              CACHE: tl.constexpr):
    """Inner nodes x recomputed from their two children."""
    return _combine(_node(LEAVES, INNER, 2 * x, mask, P, capacity, IS_MIN, CACHE),
                    _node(LEAVES, INNER, 2 * x + 1, mask, P, capacity, IS_MIN, CACHE), IS_MIN)


@triton.jit
def _level_kernel(LEAVES, INNER, width, P, capacity, IS_MIN: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Recomputes the inner nodes [width, 2 * width) (one whole level)."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = t < width
    x = width + t
    tl.store(INNER + x, _children(LEAVES, INNER, x, mask, P, capacity, IS_MIN, ""), mask=mask)


@triton.jit
def _entry_ok(IDX, VAL, t, m, capacity, IS_MIN: tl.constexpr, F64: tl.constexpr):
    """(index in range, value valid) per lane of the batch entries t (masked lanes: valid).
    A valid sum tree value is finite and >= 0, and for float64 leaves at most float64 max /
    (2 capacity), so that no float64 sum overflows (as csrc/sum_tree.cpp checks); a valid
    min tree value is not NaN."""
    idx = tl.load(IDX + t, mask=m, other=0)
    val = tl.load(VAL + t, mask=m, other=0.0)
    if IS_MIN:
        val_ok = val == val
    elif F64:
        cap = capacity + tl.zeros([1], tl.float64)
        limit = tl.full([1], 1.7976931348623157e308, tl.float64) / (2.0 * cap)
        val_ok = (val >= 0.0) & (val <= limit)
    else:
        val_ok = (val >= 0.0) & (val < float("inf"))
    return ~m | ((idx >= 0) & (idx < capacity)), ~m | val_ok


@triton.jit
def _or_all(flags):
    """The OR of the lanes' flags (bits 1 and 2)."""
    return tl.max(flags & 1, axis=0) | tl.max(flags & 2, axis=0)


@triton.jit
def _validate_kernel(IDX, VAL, WS, k, capacity, per_prog, IS_MIN: tl.constexpr,
                     F64: tl.constexpr, BLOCK: tl.constexpr):
    """Multi-program updates: ORs 1 (an index out of range) / 2 (an invalid value) of the
    entries [pid * per_prog, ...) into WS[0]."""
    lo = tl.program_id(0).to(tl.int64) * per_prog
    hi = tl.minimum(lo + per_prog, k)
    offs = tl.arange(0, BLOCK)
    flags = tl.zeros([BLOCK], tl.int32)
    for start in range(lo, hi, BLOCK):
        t = start + offs
        idx_ok, val_ok = _entry_ok(IDX, VAL, t, t < hi, capacity, IS_MIN, F64)
        flags |= tl.where(idx_ok, 0, 1) | tl.where(val_ok, 0, 2)
    flag = _or_all(flags)
    tl.atomic_or(WS, flag, mask=flag != 0)


@triton.jit
def _write_entries(LEAVES, SIDX, PERM, VAL, MEMORY, SEEN, ACTIVE, lo, hi, k, offs, ok, keep_q,
                   take_s, ONLINE: tl.constexpr, BLOCK: tl.constexpr):
    """Writes the leaf of the last occurrence of every index among the sorted entries
    [lo, hi) (the next entry holds another index); with ONLINE, first the memory update
    q <- keep_q * q + take_s * s (s replaces q where not seen yet), seen, and the leaf q (0
    where inactive)."""
    for start in range(lo, hi, BLOCK):
        t = start + offs
        m = (t < hi) & ok
        idx = tl.load(SIDX + t, mask=m, other=0)
        nxt = tl.load(SIDX + t + 1, mask=m & (t + 1 < k), other=-1)
        m = m & (nxt != idx)
        val = tl.load(VAL + tl.load(PERM + t, mask=m, other=0), mask=m, other=0.0)
        if ONLINE:
            q = tl.load(MEMORY + idx, mask=m, other=0.0)
            seen = tl.load(SEEN + idx, mask=m, other=0) != 0
            val = tl.where(seen, keep_q * q + take_s * val, val)
            tl.store(MEMORY + idx, val, mask=m)
            tl.store(SEEN + idx, tl.full([BLOCK], 1, SEEN.dtype.element_ty), mask=m)
            val = tl.where(tl.load(ACTIVE + idx, mask=m, other=0) != 0, val, 0.0)
        tl.store(LEAVES + idx, val, mask=m)


@triton.jit
def _update_kernel(LEAVES, INNER, SIDX, PERM, VAL, WS, ERR, MEMORY, SEEN, ACTIVE, k, capacity,
                   P, H, d_dense, per_prog, keep_q, take_s, bad_index_code, bad_value_code,
                   FUSED: tl.constexpr, RECORD: tl.constexpr, ONLINE: tl.constexpr,
                   IS_MIN: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    """Update with the batch sorted by index (SIDX, PERM: its stable sort): the sorted
    entries [pid * per_prog, ...) write their leaves (last occurrence wins), then recompute
    their ancestors bottom-up (a block barrier between levels). Levels <= d_dense (no wider
    than k, FUSED only) are recomputed whole.

    FUSED (one program): validates the whole batch first. Otherwise _validate_kernel has
    ORed its flags into WS[0], each program recomputes the ancestors no other program's
    entries share, and the last program to finish (WS[1] counts them) recomputes the shared
    ones, the ancestors of every program's first and last entry, and resets WS. A batch with
    an invalid entry writes nothing; with RECORD its code goes to *ERR unless one is there."""
    P64 = P.to(tl.int64)
    pid = tl.program_id(0).to(tl.int64)
    lo = pid * per_prog
    hi = tl.minimum(lo + per_prog, k)
    offs = tl.arange(0, BLOCK)
    if FUSED:
        flags = tl.zeros([BLOCK], tl.int32)
        for start in range(0, k, BLOCK):
            t = start + offs
            idx_ok, val_ok = _entry_ok(SIDX, VAL, t, t < k, capacity, IS_MIN, F64)
            flags |= tl.where(idx_ok, 0, 1) | tl.where(val_ok, 0, 2)
        flag = _or_all(flags)
    else:
        flag = tl.load(WS)
    ok = (offs * 0 + flag) == 0  # per lane (scalar bool masks upset the interpreter)
    _write_entries(LEAVES, SIDX, PERM, VAL, MEMORY, SEEN, ACTIVE, lo, hi, k, offs, ok, keep_q,
                   take_s, ONLINE, BLOCK)
    tl.debug_barrier()
    # Ancestors of the entries before and after this program's (none: -1).
    prev = tl.load(SIDX + lo - 1, mask=lo > 0, other=-1)
    after = tl.load(SIDX + hi, mask=hi < k, other=-1)
    for s in range(H):
        d = H - 1 - s
        shift = H - d
        width = P64 >> shift
        dense = (offs * 0 + d) <= d_dense
        for start in range(lo, hi, BLOCK):
            t = start + offs
            m = (t < hi) & ok
            idx = tl.load(SIDX + t, mask=m & ~dense, other=0)
            x = tl.where(dense, width + t, (idx + P64) >> shift)
            m = m & (~dense | (t < width))
            if not FUSED:  # a node another program's entries share waits for the last one
                m = m & (x != (prev + P64) >> shift) & (x != (after + P64) >> shift)
            tl.store(INNER + x, _children(LEAVES, INNER, x, m, P64, capacity, IS_MIN, ""),
                     mask=m)
        tl.debug_barrier()
    if not FUSED:
        n_prog = tl.num_programs(0)
        if tl.atomic_add(WS + 1, 1) == n_prog - 1:  # the last program: shared ancestors
            for s in range(H):
                shift = s + 1
                for start in range(0, 2 * n_prog, BLOCK):
                    e = start + offs  # the first (even e) or last (odd e) entry of a program
                    m = (e < 2 * n_prog) & ok
                    t = tl.minimum((e // 2) * per_prog + (e % 2) * (per_prog - 1), k - 1)
                    x = (tl.load(SIDX + t, mask=m, other=0) + P64) >> shift
                    tl.store(INNER + x,
                             _children(LEAVES, INNER, x, m, P64, capacity, IS_MIN, ".cg"),
                             mask=m)
                tl.debug_barrier()
            tl.store(WS, 0)
            tl.store(WS + 1, 0)
    if RECORD:
        code = tl.where((flag & 1) != 0, bad_index_code, bad_value_code)
        old = tl.load(ERR)
        tl.store(ERR, tl.where((flag != 0) & (old == 0), code, old))


@triton.jit
def _record(ERR, bad, code, BLOCK: tl.constexpr):
    """Records ``code`` in *ERR (unless a code is there) if a lane of ``bad`` is set (each
    program that has one writes the same code: no order matters)."""
    lanes = tl.arange(0, BLOCK)
    write = (lanes == 0) & ((lanes * 0 + tl.max(bad.to(tl.int32), axis=0)) != 0)
    old = tl.load(ERR + lanes * 0, mask=write, other=0)
    tl.store(ERR + lanes * 0, tl.where(old == 0, code, old), mask=write)


@triton.jit
def _priorities_kernel(IDX, RAW, stride_raw, PRIO, PRIO_MIN, HI, MAXP, ERR, k, limit,
                       first_slot, capacity, alpha_hi, alpha_mid, alpha_lo, eps_hi, eps_mid,
                       eps_lo, bad_code, SLOTS: tl.constexpr, RECORD: tl.constexpr,
                       F64: tl.constexpr, BLOCK: tl.constexpr):
    """One program, for a prioritized replay batch: the stored priorities
    ``(raw + eps) ** alpha`` (as csrc/sum_tree.cpp: base and exponent in the leaf dtype, the
    power here in float64) into PRIO, and into PRIO_MIN with +inf for 0; NaN for an entry
    whose index is not in [0, limit), whose raw priority is not finite and >= 0 or whose
    stored one would be too large (then both tree updates drop the batch). SLOTS: the indices
    are the ring-buffer slots (first_slot + t) % capacity, written to IDX. *HI = the largest
    raw priority (float64), NaN for an invalid batch; RECORD: *MAXP = fmax(*MAXP, *HI) for a
    valid batch, and bad_code recorded in *ERR (unless a code is there) for an invalid one."""
    offs = tl.arange(0, BLOCK)
    leaf_t = PRIO.dtype.element_ty
    zero = tl.zeros([BLOCK], tl.float64)
    alpha = (((zero + alpha_hi) + alpha_mid) + alpha_lo).to(leaf_t).to(tl.float64)
    eps = (((zero + eps_hi) + eps_mid) + eps_lo).to(leaf_t)
    if F64:
        largest = tl.full([BLOCK], 1.7976931348623157e308, tl.float64) / (2.0 * (zero + capacity))
    else:
        largest = zero + 3.4028234663852886e38
    bad = tl.zeros([BLOCK], tl.int32)
    hi = tl.full([BLOCK], -float("inf"), tl.float64)
    for start in range(0, k, BLOCK):
        t = start + offs
        m = t < k
        if SLOTS:
            idx = (first_slot + t) % capacity
            tl.store(IDX + t, idx, mask=m)
        else:
            idx = tl.load(IDX + t, mask=m, other=0)
        raw = tl.load(RAW + t * stride_raw, mask=m, other=0.0)
        base = (raw.to(leaf_t) + eps).to(tl.float64)
        prio = tl.where(alpha == 0.0, 1.0, tl.exp(alpha * tl.log(base))).to(leaf_t)
        raw64 = raw.to(tl.float64)
        ok = (idx >= 0) & (idx < limit) & (raw64 >= 0.0) & (raw64 <= 1.7976931348623157e308) \
            & (prio.to(tl.float64) <= largest)
        bad |= (m & ~ok).to(tl.int32)
        hi = tl.maximum(hi, tl.where(m, raw64, -float("inf")))
        tl.store(PRIO + t, tl.where(ok, prio, float("nan")), mask=m)
        tl.store(PRIO_MIN + t, tl.where(ok, tl.where(prio == 0.0, float("inf"), prio),
                                        float("nan")), mask=m)
    invalid = (offs * 0 + tl.max(bad, axis=0)) != 0
    top = tl.where(invalid, float("nan"), offs * 0.0 + tl.max(hi, axis=0))
    first = offs == 0
    tl.store(HI + offs * 0, top, mask=first)
    if RECORD:
        old = tl.load(MAXP + offs * 0, mask=first, other=0.0)
        tl.store(MAXP + offs * 0, tl.where(invalid, old, tl.maximum(old, top)), mask=first)
        _record(ERR, invalid & first, bad_code, BLOCK)


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
        left = _node(LEAVES, INNER, 2 * x, mask, P64, capacity, False, "")
        right = _node(LEAVES, INNER, 2 * x + 1, mask, P64, capacity, False, "")
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
def _sample_kernel(LEAVES, INNER, U, OUT, ERR, MIN_INNER, W, n, capacity, P, H, empty_code,
                   beta_hi, beta_mid, beta_lo, RECORD: tl.constexpr, WEIGHTED: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Draws [pid * BLOCK, ...); with RECORD, program 0 records empty_code in *ERR (unless a
    code is there) when the tree is all zero. WEIGHTED: also the importance weights
    ``(leaf / min) ** -beta`` (min: the root of the min tree MIN_INNER; beta from its three
    float32 parts), as csrc/sum_tree.cpp's sample_weighted: the ratio and the exponent in
    the leaf dtype, the power in float64; NaN for a -1 draw."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u = tl.load(U + offs, mask=mask, other=0.0)
    idx = descend(LEAVES, INNER, u, mask, P, capacity, H, BLOCK)
    tl.store(OUT + offs, idx, mask=mask)
    if WEIGHTED:
        leaf_t = LEAVES.dtype.element_ty
        ratio = tl.load(LEAVES + tl.maximum(idx, 0), mask=mask, other=1.0) / tl.load(
            MIN_INNER + 1 + offs * 0, mask=mask, other=1.0)
        zero = tl.zeros([BLOCK], tl.float64)
        expo = (-(((zero + beta_hi) + beta_mid) + beta_lo)).to(leaf_t).to(tl.float64)
        w = tl.where(expo == 0.0, 1.0, tl.exp(expo * tl.log(ratio.to(tl.float64))))
        tl.store(W + offs, tl.where(idx >= 0, w, float("nan")).to(leaf_t), mask=mask)
    if RECORD:
        first = offs == 0
        old = tl.load(ERR + offs * 0, mask=first, other=0)
        empty = tl.load(INNER + 1 + offs * 0, mask=first, other=1.0) <= 0.0
        tl.store(ERR + offs * 0, tl.where(empty & (old == 0), empty_code, old), mask=first)


@triton.jit
def _scan_kernel(LEAVES, INNER, MASS, OUT, ERR, n, capacity, P, H, bad_code,
                 RECORD: tl.constexpr, BLOCK: tl.constexpr):
    """-1 for a mass that is not finite and >= 0 (and for every mass of an all-zero tree);
    with RECORD, such a mass records bad_code in *ERR. Masses of any real dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(MASS + offs, mask=mask, other=0).to(tl.float64)
    ok = (m >= 0.0) & (m <= 1.7976931348623157e308)
    leaf = descend_mass(LEAVES, INNER, tl.where(ok, m, 0.0), mask, P, capacity, H, BLOCK)
    tl.store(OUT + offs, tl.where(ok, leaf, -1), mask=mask)
    if RECORD:
        _record(ERR, mask & ~ok, bad_code, BLOCK)


@triton.jit
def _query_kernel(LEAVES, INNER, START, END, OUT, ERR, n, capacity, P, H, bad_code,
                  IS_MIN: tl.constexpr, RECORD: tl.constexpr, BLOCK: tl.constexpr):
    """The combination of the leaves [start, end) of every range, as csrc/sum_tree.cpp's
    query_range (same nodes, same order: the same bits). NaN for a range that is not within
    [0, capacity); with RECORD, such a range records bad_code in *ERR."""
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
        acc = _combine(acc, tl.where(take, _node(LEAVES, INNER, l, take, P64, capacity,
                                                 IS_MIN, ""), pad), IS_MIN)
        l = tl.where(take, l + 1, l)
        take = active & ((r & 1) == 1)
        r = tl.where(take, r - 1, r)
        acc = _combine(acc, tl.where(take, _node(LEAVES, INNER, r, take, P64, capacity,
                                                 IS_MIN, ""), pad), IS_MIN)
        l = l >> 1
        r = r >> 1
    tl.store(OUT + offs, tl.where(ok, acc, float("nan")), mask=mask)
    if RECORD:
        _record(ERR, mask & ~ok, bad_code, BLOCK)


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
           values: torch.Tensor, err: Optional[torch.Tensor] = None,
           codes: Tuple[int, int] = (1, 2), online: Optional[tuple] = None,
           fused_max: Optional[int] = None, is_min: bool = False,
           order: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """Writes leaves[indices] = values (last occurrence wins) and their ancestors (of a min
    tree with ``is_min``), unless an index is out of range or a value invalid (for the min
    tree: NaN): then nothing is written, and with ``err`` (an int32 0-dim error flag) its
    code (``codes``: bad index, bad value) is recorded there unless one is.
    ``online = (memory, seen, active, momentum)`` (sum tree only): ``values`` are scores and
    the online sampler's memory update comes first (:mod:`.online_is_triton`). Batches of
    at most ``fused_max`` (default :data:`FUSED_MAX`) entries take one program. Launches: a
    sort (none when ``order``, the ``torch.sort(indices, stable=True)`` of an earlier call,
    is given), then one kernel (fused) or two (multi-program). Shapes/dtypes already
    checked."""
    k = indices.numel()
    if k == 0:
        return
    fused_max = FUSED_MAX if fused_max is None else fused_max
    p, capacity = inner.numel(), leaves.numel()
    h = heap_depth(p)
    sorted_idx, perm = order if order is not None else torch.sort(indices.reshape(-1),
                                                                  stable=True)
    values = values.reshape(-1)
    fused = k <= fused_max
    ws = workspace(leaves.device)
    f64 = leaves.dtype == torch.float64
    memory, seen, active, momentum = online if online is not None else (leaves, ws, ws, 0.0)
    if online is not None:
        seen, active = seen.view(torch.uint8), active.view(torch.uint8)
    per_prog = k if fused else BLOCK
    grid = (1,) if fused else (triton.cdiv(k, per_prog),)
    if not fused:
        _validate_kernel[grid](indices, values, ws, k, capacity, per_prog, IS_MIN=is_min,
                               F64=f64, BLOCK=BLOCK, num_warps=4)
    # Depths whose width 2^d is at most k are recomputed whole (one program only).
    d_dense = min(h - 1, k.bit_length() - 1) if fused else -1
    _update_kernel[grid](leaves, inner, sorted_idx, perm, values, ws,
                         err if err is not None else ws, memory, seen, active, k, capacity, p,
                         h, d_dense, per_prog, momentum, 1.0 - momentum, codes[0], codes[1],
                         FUSED=fused, RECORD=err is not None, ONLINE=online is not None,
                         IS_MIN=is_min, F64=f64, BLOCK=BLOCK, num_warps=8 if fused else 4)


def set_priorities(sum_leaves: torch.Tensor, sum_inner: torch.Tensor,
                   min_leaves: torch.Tensor, min_inner: torch.Tensor,
                   indices: Optional[torch.Tensor], priorities: torch.Tensor, alpha: float,
                   eps: float, limit: int, first_slot: int = 0,
                   max_priority: Optional[torch.Tensor] = None,
                   err: Optional[torch.Tensor] = None,
                   bad_code: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stores ``(priorities + eps) ** alpha`` at ``indices`` in the sum and the min tree
    (+inf there for 0), or drops the batch if an index is not in ``[0, limit)`` or a priority
    is not finite and >= 0 (see :func:`_priorities_kernel`). ``indices=None``: the ring slots
    ``first_slot, first_slot + 1, ...`` (mod capacity). With ``max_priority`` and ``err``,
    the kernel also raises ``max_priority`` (float64 0-dim) and records ``bad_code`` for a
    dropped batch. Returns ``(indices, hi)``: hi the largest priority, float64 0-dim, NaN
    for a dropped batch. Launches: the priorities kernel, one sort, the two tree updates.
    ``priorities``: [k], any stride (e.g. an expanded scalar)."""
    dev = sum_leaves.device
    k = priorities.numel()
    slots = indices is None
    if slots:
        indices = torch.empty(k, dtype=torch.int64, device=dev)
    hi = torch.empty((), dtype=torch.float64, device=dev)
    if k == 0:
        hi.zero_()
        return indices, hi
    prio = torch.empty(k, dtype=sum_leaves.dtype, device=dev)
    prio_min = torch.empty_like(prio)
    record = max_priority is not None
    _priorities_kernel[(1,)](indices, priorities, priorities.stride(0), prio, prio_min, hi,
                             max_priority if record else hi, err if record else indices, k,
                             limit, first_slot, sum_leaves.numel(), *float32_parts(alpha),
                             *float32_parts(eps), bad_code, SLOTS=slots, RECORD=record,
                             F64=sum_leaves.dtype == torch.float64, BLOCK=BLOCK, num_warps=8)
    order = torch.sort(indices, stable=True)
    update(sum_leaves, sum_inner, indices, prio, order=order)
    update(min_leaves, min_inner, indices, prio_min, is_min=True, order=order)
    return indices, hi


def _sample(leaves, inner, u, err, empty_code, min_inner, beta):
    u = u.contiguous()
    n = u.numel()
    out = torch.empty(n, dtype=torch.int64, device=leaves.device)
    w = torch.empty(n if min_inner is not None else 0, dtype=leaves.dtype,
                    device=leaves.device)
    if n > 0:
        p = inner.numel()
        _sample_kernel[(triton.cdiv(n, SAMPLE_BLOCK),)](
            leaves, inner, u, out, err if err is not None else out,
            min_inner if min_inner is not None else inner, w, n, leaves.numel(), p,
            heap_depth(p), empty_code, *float32_parts(beta), RECORD=err is not None,
            WEIGHTED=min_inner is not None, BLOCK=SAMPLE_BLOCK, num_warps=4)
    return out, w


def sample(leaves: torch.Tensor, inner: torch.Tensor, u: torch.Tensor,
           err: Optional[torch.Tensor] = None, empty_code: int = 0) -> torch.Tensor:
    """int64 leaf indices for the float64 uniforms u ([n], in [0, 1)); -1 where total == 0,
    and then ``empty_code`` is recorded in ``err`` (int32 0-dim) unless a code is there.
    SAMPLE_BLOCK draws a program: the descents are latency-bound, so small batches get more
    programs."""
    return _sample(leaves, inner, u, err, empty_code, None, 0.0)[0]


def sample_weighted(leaves: torch.Tensor, inner: torch.Tensor, min_inner: torch.Tensor,
                    u: torch.Tensor, beta: float, err: Optional[torch.Tensor] = None,
                    empty_code: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample` and, in the same kernel, the importance weights
    ``(leaves[i] / min_inner[1]) ** -beta`` of the draws (leaf dtype; NaN for -1)."""
    return _sample(leaves, inner, u, err, empty_code, min_inner, beta)


def query(leaves: torch.Tensor, inner: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
          is_min: bool = False, err: Optional[torch.Tensor] = None,
          bad_code: int = 0) -> torch.Tensor:
    """The sums (float64) or minima (leaf dtype) of the leaves [start, end) ([n] int64 each);
    NaN for a range that is not within [0, capacity), and then ``bad_code`` is recorded in
    ``err`` (int32 0-dim) unless a code is there."""
    start, end = start.contiguous(), end.contiguous()
    n = start.numel()
    out = torch.empty(n, dtype=inner.dtype, device=leaves.device)
    if n > 0:
        p = inner.numel()
        _query_kernel[(triton.cdiv(n, BLOCK),)](leaves, inner, start, end, out,
                                                err if err is not None else out, n,
                                                leaves.numel(), p, heap_depth(p), bad_code,
                                                IS_MIN=is_min, RECORD=err is not None,
                                                BLOCK=BLOCK, num_warps=4)
    return out


def scan_lower_bound(leaves: torch.Tensor, inner: torch.Tensor, mass: torch.Tensor,
                     err: Optional[torch.Tensor] = None, bad_code: int = 0) -> torch.Tensor:
    """int64 leaf indices for the masses ([n], any real dtype, read as float64); -1 for a mass
    that is not finite and >= 0 (then ``bad_code`` is recorded in ``err`` unless a code is
    there), and for all of them where total == 0. SAMPLE_BLOCK masses a program, as
    :func:`sample`."""
    mass = mass.contiguous()
    n = mass.numel()
    out = torch.empty(n, dtype=torch.int64, device=leaves.device)
    if n > 0:
        p = inner.numel()
        _scan_kernel[(triton.cdiv(n, SAMPLE_BLOCK),)](leaves, inner, mass, out,
                                                      err if err is not None else out, n,
                                                      leaves.numel(), p, heap_depth(p),
                                                      bad_code, RECORD=err is not None,
                                                      BLOCK=SAMPLE_BLOCK, num_warps=4)
    return out
