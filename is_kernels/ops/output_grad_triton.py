"""Triton kernels of the fused output-gradient ops (the CUDA implementation).

The launchers take any tensors Triton can address: CUDA tensors normally, CPU tensors under
``TRITON_INTERPRET=1`` (how the test suite checks these kernels on a machine without a GPU).
Each launcher computes, per row, the loss, the score ``||dloss_i/dz_i||_2`` and, when asked,
the gradient of the logits already scaled for the reduction, with no host synchronisation.

Two cross-entropy kernels: ``_ce_tile_kernel`` holds ``ROWS`` whole rows in registers (small
C: one read of the logits, one write of the gradient); ``_ce_loop_kernel`` walks one long row
in chunks (large C: an online max/sum pass, then a pass that writes the gradient).
``_soft_ce_kernel`` serves class-probability targets (any C: columns in chunks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cuda_path import float32_parts, workspace

# Rows with at most this many (padded) columns are held whole in registers.
MAX_TILE_C = 8192
# Elements per program the tile kernel aims for.
TILE_ELEMS = 4096


@triton.jit
def _log1p(x):
    # log(1 + x), accurate for tiny x (Goldberg's trick): no log1p in triton.language.
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _ce_row_stats(delta, s_ne):
    """p_j = a * e_j (j != y) and nll = -log p_y from delta = z_y - m2 and S_{j!=y}.

    m2 = max_{j!=y} z_j is the exponent shift, so e_j <= 1 and no sum underflows; with
    t = exp(-|delta|), 1 - p_y = a * S_{j!=y} has no cancellation as p_y -> 1.
    """
    t = tl.exp(-tl.abs(delta))
    y_is_max = delta >= 0.0
    a = tl.where(y_is_max, t / (1.0 + s_ne * t), 1.0 / (s_ne + t))
    nll = tl.where(y_is_max, _log1p(s_ne * t), tl.log(s_ne + t) - delta)
    return a, nll


@triton.jit
def _ce_lse(zy, m2, nll, s_ne):
    """log sum_j exp(z_j): z_y + nll, or m2 + log(S_{j!=y} + t) where y is not the max (finite
    for z_y = -inf, where z_y + nll is -inf + inf)."""
    delta = zy - m2
    return tl.where(delta >= 0.0, zy + nll, m2 + tl.log(s_ne + tl.exp(-tl.abs(delta))))


@triton.jit
def _ce_row_outputs(LOSS, SCORE, rows, row_in, row_ok, bad, nll, a, s_ne, q_ne, sq_other,
                    zy, m2, sum_z, eps, C, SMOOTH: tl.constexpr):
    """Stores loss and score of the rows: 0 for ignored rows, NaN for `bad` ones."""
    d_y = (eps - eps / C) - s_ne * a
    if SMOOTH:
        loss = (1.0 - eps) * nll + eps * (_ce_lse(zy, m2, nll, s_ne) - sum_z / C)
        score = tl.sqrt(sq_other + d_y * d_y)
    else:
        loss = nll
        score = a * tl.sqrt(q_ne + s_ne * s_ne)
    nan = float("nan")
    loss = tl.where(bad, nan, tl.where(row_ok, loss, 0.0))
    score = tl.where(bad, nan, tl.where(row_ok, score, 0.0))
    tl.store(LOSS + rows, loss, mask=row_in)
    tl.store(SCORE + rows, score.to(tl.float32), mask=row_in)


@triton.jit
def _eps(eps_hi, eps_mid, eps_lo, F64: tl.constexpr):
    """label_smoothing from its three float32 parts: exact in float64, rounded once in
    float32 (kernel float arguments are float32)."""
    zero = tl.zeros([1], tl.float64 if F64 else tl.float32)
    return ((eps_hi + zero) + eps_mid) + eps_lo


@triton.jit
def _count_targets(T, N, ignore_index, BLOCK: tl.constexpr):
    """The number of targets T[0:N] that are not ignore_index (N int64 reads)."""
    acc = tl.zeros([BLOCK], tl.int64)
    for start in range(0, N, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        y = tl.load(T + rows, mask=rows < N, other=ignore_index)
        acc += (y != ignore_index).to(tl.int64)
    return tl.sum(acc, axis=0)


@triton.jit
def _grad_factor(T, N, ignore_index, MEAN: tl.constexpr, F64: tl.constexpr):
    """The gradient factor of the non-ignored rows: 1/count for "mean", else 1. Each program
    counts the targets itself (N int64 reads, from L2 on a GPU) rather than wait for a
    kernel of its own."""
    one = tl.full([1], 1.0, tl.float64 if F64 else tl.float32)
    if MEAN:
        one = one / _count_targets(T, N, ignore_index, 1024).to(one.dtype)
    return one


@triton.jit
def _reduce_loss(ROW_LOSS, T, OUT, WS, N, ignore_index, MEAN: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Called by every program after its rows: the last one to get here (WS counts them, and
    is reset) writes *OUT = the sum of the row losses in index order of BLOCK-wide sums (a
    fixed order: deterministic), over the count of non-ignored rows for MEAN."""
    tl.debug_barrier()
    if tl.atomic_add(WS, 1) == tl.num_programs(0) - 1:
        offs = tl.arange(0, BLOCK)
        total = tl.zeros([BLOCK], ROW_LOSS.dtype.element_ty)
        for start in range(0, N, BLOCK):
            rows = start + offs
            total += tl.load(ROW_LOSS + rows, mask=rows < N, other=0.0, cache_modifier=".cg")
        loss = tl.sum(total, axis=0)
        if MEAN:
            loss = loss / _count_targets(T, N, ignore_index, BLOCK).to(loss.dtype)
        tl.store(OUT + offs * 0, (loss + tl.zeros([BLOCK], loss.dtype)).to(
            OUT.dtype.element_ty), mask=offs == 0)
        tl.store(WS + offs * 0, tl.zeros([BLOCK], tl.int32), mask=offs == 0)


@triton.jit
def _grad_scale(factor, row_ok, bad):
    """Per-row factor of the gradient: `factor` (_grad_factor), 0 ignored, NaN out of range."""
    return tl.where(bad, float("nan"), tl.where(row_ok, factor, 0.0))


@triton.jit
def _ce_tile_kernel(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, OUT, WS, N, C,
                    ignore_index, eps_hi, eps_mid, eps_lo, ROWS: tl.constexpr,
                    BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr, MEAN: tl.constexpr,
                    REDUCE: tl.constexpr, SMOOTH: tl.constexpr, F64: tl.constexpr):
    """Blocks of ROWS whole rows; program p takes blocks p, p + grid, ... (one each unless
    the grid is capped, as for a "mean" gradient, whose count every program reads)."""
    eps = _eps(eps_hi, eps_mid, eps_lo, F64)
    factor = _grad_factor(T, N, ignore_index, MEAN and WRITE_GRAD, F64)
    for block in range(tl.program_id(0).to(tl.int64), tl.cdiv(N, ROWS), tl.num_programs(0)):
        _ce_tile_rows(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, tl.sum(factor, axis=0),
                      block, N, C, ignore_index, tl.sum(eps, axis=0), ROWS, BLOCK_C,
                      WRITE_GRAD, SMOOTH, F64)
    if REDUCE:
        _reduce_loss(LOSS, T, OUT, WS, N, ignore_index, MEAN, 1024)


@triton.jit(noinline=True)
def _ce_tile_rows(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, factor, block, N, C,
                  ignore_index, eps, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
                  WRITE_GRAD: tl.constexpr, SMOOTH: tl.constexpr, F64: tl.constexpr):
    """The rows of one block. A call, not inlined: inlined into the kernel's loop, the body
    compiles for sm_90 to about 1.8x the registers (Triton 3.6 and 3.9). Its arguments are
    scalars: Triton 3.6 does not compile such a call with tensor arguments."""
    rows = block * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    col_in = cols < C
    row_in = rows < N
    y = tl.load(T + rows, mask=row_in, other=ignore_index)
    row_ok = row_in & (y != ignore_index) & (y >= 0) & (y < C)
    bad = row_in & (y != ignore_index) & ((y < 0) | (y >= C))
    mask = row_in[:, None] & col_in[None, :]
    # int64 column offsets: C * stride_zc may pass 2^31 (column-major logits).
    ptrs = Z + rows[:, None] * stride_zn + cols[None, :].to(tl.int64) * stride_zc
    z = tl.load(ptrs, mask=mask, other=-float("inf"))
    z = z.to(tl.float64) if F64 else z.to(tl.float32)
    is_y = cols[None, :] == y[:, None]
    other = ~is_y & col_in[None, :]
    m2 = tl.max(tl.where(is_y, -float("inf"), z), axis=1)
    shift = tl.where(m2 == -float("inf"), 0.0, m2)
    e = tl.where(other, tl.exp(z - shift[:, None]), 0.0)
    s_ne = tl.sum(e, axis=1)
    q_ne = tl.sum(e * e, axis=1)
    zy = tl.sum(tl.where(is_y, z, 0.0), axis=1)
    bad = bad | (row_ok & (zy == float("inf")))  # p_y = inf / inf: NaN, as in PyTorch
    a, nll = _ce_row_stats(zy - m2, s_ne)
    d = e * a[:, None] - eps / C
    sq_other = q_ne
    sum_z = zy
    if SMOOTH:
        sq_other = tl.sum(tl.where(other, d * d, 0.0), axis=1)
        sum_z = tl.sum(tl.where(col_in[None, :], z, 0.0), axis=1)
    _ce_row_outputs(LOSS, SCORE, rows, row_in, row_ok, bad, nll, a, s_ne, q_ne, sq_other,
                    zy, m2, sum_z, eps, C, SMOOTH)
    if WRITE_GRAD:
        scale = _grad_scale(factor, row_ok, bad)
        d_y = (eps - eps / C) - s_ne * a
        g = tl.where(is_y, d_y[:, None], d) * scale[:, None]
        tl.store(GRAD + rows[:, None] * C + cols[None, :], g.to(GRAD.dtype.element_ty),
                 mask=mask)


@triton.jit
def _ce_loop_kernel(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, OUT, WS, N, C,
                    ignore_index, eps_hi, eps_mid, eps_lo, BLOCK_C: tl.constexpr,
                    WRITE_GRAD: tl.constexpr, MEAN: tl.constexpr, REDUCE: tl.constexpr,
                    SMOOTH: tl.constexpr, F64: tl.constexpr):
    """Persistent: program p takes rows p, p + grid, ...; the launcher caps the grid so that
    the rows in flight fit in half the L2, where the second pass finds them."""
    eps = _eps(eps_hi, eps_mid, eps_lo, F64)
    factor = _grad_factor(T, N, ignore_index, MEAN and WRITE_GRAD, F64)
    for row in range(tl.program_id(0).to(tl.int64), N, tl.num_programs(0)):
        _ce_loop_row(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, factor, row, N, C,
                     ignore_index, eps, BLOCK_C, WRITE_GRAD, SMOOTH, F64)
    if REDUCE:
        _reduce_loss(LOSS, T, OUT, WS, N, ignore_index, MEAN, 1024)


@triton.jit
def _ce_loop_row(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, factor, row, N, C,
                 ignore_index, eps, BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr,
                 SMOOTH: tl.constexpr, F64: tl.constexpr):
    """One row, walked in 1-D chunks: an online max/sum pass, then the gradient pass, whose
    reads should hit L2 (the first pass asks to keep the row there, the second to evict it;
    gradient stores stream out)."""
    # Per-row values as 1-element vectors, so the row helpers serve both kernels.
    rows = row + tl.arange(0, 1)
    y_vec = tl.load(T + rows)
    y = tl.load(T + row)
    row_ok = (y_vec != ignore_index) & (y_vec >= 0) & (y_vec < C)
    bad = (y_vec != ignore_index) & ((y_vec < 0) | (y_vec >= C))
    acc_t = tl.float64 if F64 else tl.float32
    zrow = Z + row * stride_zn
    # Pass 1, online: m2 = max_{j!=y} z_j, S_{j!=y}, Q_{j!=y} = sum e_j^2.
    m2 = tl.full([1], -float("inf"), acc_t)
    s_ne = tl.zeros([1], acc_t)
    q_ne = tl.zeros([1], acc_t)
    sum_z = tl.zeros([1], acc_t)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        z = tl.load(zrow + cols.to(tl.int64) * stride_zc, mask=cols < C,
                    other=-float("inf"), eviction_policy="evict_last").to(acc_t)
        z = tl.where(cols == y, -float("inf"), z)
        m_new = tl.maximum(m2, tl.max(z, axis=0))
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp(m2 - shift)
        e = tl.exp(z - shift)
        s_ne = s_ne * alpha + tl.sum(e, axis=0)
        q_ne = q_ne * alpha * alpha + tl.sum(e * e, axis=0)
        m2 = m_new
    y_safe = tl.where(row_ok, y_vec, 0)
    zy = tl.load(zrow + y_safe * stride_zc).to(acc_t)
    bad = bad | (row_ok & (zy == float("inf")))  # p_y = inf / inf: NaN, as in PyTorch
    a, nll = _ce_row_stats(zy - m2, s_ne)
    shift = tl.where(m2 == -float("inf"), 0.0, m2)
    sq_other = q_ne
    if WRITE_GRAD or SMOOTH:
        # Pass 2: d_j = p_j - t_j, written (scaled) as the gradient; exact sum of d_j^2.
        scale = _grad_scale(factor, row_ok, bad)
        d_y = (eps - eps / C) - s_ne * a
        sq_other = tl.zeros([1], acc_t)
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            col_in = cols < C
            z = tl.load(zrow + cols.to(tl.int64) * stride_zc, mask=col_in,
                        other=-float("inf"), eviction_policy="evict_first").to(acc_t)
            is_y = cols == y
            d = tl.exp(z - shift) * a - eps / C
            if SMOOTH:
                sq_other += tl.sum(tl.where(is_y | ~col_in, 0.0, d * d), axis=0)
                sum_z += tl.sum(tl.where(col_in, z, 0.0), axis=0)
            if WRITE_GRAD:
                g = tl.where(is_y, d_y, d) * scale
                tl.store(GRAD + row * C + cols, g.to(GRAD.dtype.element_ty), mask=col_in,
                         eviction_policy="evict_first")
    _ce_row_outputs(LOSS, SCORE, rows, rows < N, row_ok, bad, nll, a, s_ne, q_ne, sq_other,
                    zy, m2, sum_z, eps, C, SMOOTH)


@triton.jit
def _mse_kernel(P, Y, LOSS, SCORE, GRAD, N, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                WRITE_GRAD: tl.constexpr, MEAN: tl.constexpr, SUM: tl.constexpr,
                F64: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_in = rows < N
    acc_t = tl.float64 if F64 else tl.float32
    sq = tl.zeros([ROWS], acc_t)
    # d(reduced loss)/d pred = factor * (pred - target)
    factor = tl.full([1, 1], 2.0, acc_t)
    if MEAN:
        factor = factor / N / D
    elif not SUM:
        factor = factor / D
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = row_in[:, None] & (cols < D)[None, :]
        offs = rows[:, None] * D + cols[None, :]
        diff = (tl.load(P + offs, mask=mask, other=0.0).to(acc_t)
                - tl.load(Y + offs, mask=mask, other=0.0).to(acc_t))
        sq += tl.sum(diff * diff, axis=1)
        if WRITE_GRAD:
            tl.store(GRAD + offs, (diff * factor).to(GRAD.dtype.element_ty), mask=mask)
    tl.store(LOSS + rows, sq / D, mask=row_in)
    tl.store(SCORE + rows, (2.0 / D * tl.sqrt(sq)).to(tl.float32), mask=row_in)


@triton.jit
def _scale_grad_kernel(GRAD, GL, n, C, PER_ROW: tl.constexpr, F64: tl.constexpr,
                       BLOCK: tl.constexpr):
    """GRAD [n / C, C] *= grad_loss in place (grid-stride): per row (PER_ROW, GL [n / C]) or
    by a scalar read on the device, where exactly 1 returns at once (the usual
    ``loss.backward()``: no pass over the gradient, no host sync)."""
    acc_t = tl.float64 if F64 else tl.float32
    offs = tl.arange(0, BLOCK)
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    if PER_ROW:
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, step):
            i = start + offs
            m = i < n
            g = tl.load(GL + i // C, mask=m, other=0.0).to(acc_t)
            x = tl.load(GRAD + i, mask=m, other=0.0).to(acc_t)
            tl.store(GRAD + i, (x * g).to(GRAD.dtype.element_ty), mask=m)
    else:
        g = tl.load(GL).to(acc_t)
        if g != 1.0:
            for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, step):
                i = start + offs
                m = i < n
                x = tl.load(GRAD + i, mask=m, other=0.0).to(acc_t)
                tl.store(GRAD + i, (x * g).to(GRAD.dtype.element_ty), mask=m)


def scale_grad_(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad.mul_(grad_loss)`` (a 0-dim or a per-row ``[N]`` grad_loss) in one launch that
    leaves ``grad`` untouched when a 0-dim ``grad_loss`` is exactly 1. grad: contiguous."""
    n = grad.numel()
    if n > 0:
        per_row = grad_loss.dim() == 1
        grid = (min(triton.cdiv(n, 4096), 4 * _programs_per_device(grad.device)),)
        _scale_grad_kernel[grid](grad, grad_loss.contiguous(), n, grad.shape[-1] if per_row
                                 else 1, PER_ROW=per_row, F64=grad.dtype == torch.float64,
                                 BLOCK=4096, num_warps=8)
    return grad


@triton.jit
def _soft_ce_block(Z, stride_zn, stride_zc, Q, stride_qn, stride_qc, rows, row_in, start, C,
                   BLOCK_C: tl.constexpr, acc_t: tl.constexpr):
    """Mask, logits (-inf outside) and target probabilities (0 outside) of a column block."""
    cols = start + tl.arange(0, BLOCK_C)
    mask = row_in[:, None] & (cols < C)[None, :]
    z = tl.load(Z + rows[:, None] * stride_zn + cols[None, :].to(tl.int64) * stride_zc,
                mask=mask, other=-float("inf")).to(acc_t)
    q = tl.load(Q + rows[:, None] * stride_qn + cols[None, :].to(tl.int64) * stride_qc,
                mask=mask, other=0.0).to(acc_t)
    return mask, z, q


@triton.jit
def _soft_ce_kernel(Z, stride_zn, stride_zc, Q, stride_qn, stride_qc, LOSS, SCORE, GRAD, N, C,
                    EPS, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr,
                    MEAN: tl.constexpr, F64: tl.constexpr):
    """Class-probability targets q, smoothed to t = (1-eps)·q + eps/C: loss = Σ_j t_j
    (lse - z_j), gradient (Σ_j t_j)·p - t, score its norm. ROWS rows per program, columns
    in chunks: an online max / sum-of-exp pass, then a pass for loss, score and gradient."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_in = rows < N
    acc_t = tl.float64 if F64 else tl.float32
    eps = tl.load(EPS)
    m = tl.full([ROWS], -float("inf"), acc_t)
    s = tl.zeros([ROWS], acc_t)
    t_sum = tl.zeros([ROWS], acc_t)
    for start in range(0, C, BLOCK_C):
        mask, z, q = _soft_ce_block(Z, stride_zn, stride_zc, Q, stride_qn, stride_qc, rows,
                                    row_in, start, C, BLOCK_C, acc_t)
        t_sum += tl.sum(tl.where(mask, (1.0 - eps) * q + eps / C, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        m = m_new
    lse = tl.where(m == -float("inf"), 0.0, m) + tl.log(s)
    scale = tl.full([ROWS], 1.0, acc_t)
    if MEAN:
        scale = scale / N
    loss = tl.zeros([ROWS], acc_t)
    sq = tl.zeros([ROWS], acc_t)
    for start in range(0, C, BLOCK_C):
        mask, z, q = _soft_ce_block(Z, stride_zn, stride_zc, Q, stride_qn, stride_qc, rows,
                                    row_in, start, C, BLOCK_C, acc_t)
        t = (1.0 - eps) * q + eps / C
        d = t_sum[:, None] * tl.exp(z - lse[:, None]) - t
        loss += tl.sum(tl.where(mask, t * (lse[:, None] - z), 0.0), axis=1)
        sq += tl.sum(tl.where(mask, d * d, 0.0), axis=1)
        if WRITE_GRAD:
            cols = start + tl.arange(0, BLOCK_C)
            tl.store(GRAD + rows[:, None] * C + cols[None, :],
                     (d * scale[:, None]).to(GRAD.dtype.element_ty), mask=mask)
    tl.store(LOSS + rows, loss, mask=row_in)
    tl.store(SCORE + rows, tl.sqrt(sq).to(tl.float32), mask=row_in)


def _reduce(row_loss: torch.Tensor, reduction: str, mean_divisor, sum_factor: float,
            dtype: torch.dtype) -> torch.Tensor:
    if reduction == "none":
        return row_loss.to(dtype)
    total = row_loss.sum()
    total = total / mean_divisor if reduction == "mean" else total * sum_factor
    return total.to(dtype)


def _programs_per_device(device: torch.device) -> int:
    """About one resident program per SM (4 under the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


# The L2 of an H100 (50 MB): the size assumed where the device does not report one.
L2_BYTES = 50 << 20
# Tile-kernel programs per SM for a "mean" gradient: each reads all N targets to count them.
MEAN_TILE_PROGRAMS_PER_SM = 4


def _l2_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or L2_BYTES
    return L2_BYTES


def loop_programs(n: int, row_bytes: int, sms: int, l2_bytes: int) -> int:
    """Programs of the large-C kernel: at most one per SM and one per row, and few enough
    that their rows in flight (one each) fill at most half the L2, so that the second pass
    over a row reads it from L2, not HBM."""
    return max(1, min(n, sms, l2_bytes // 2 // row_bytes))


def cross_entropy_with_score(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                             label_smoothing: float, reduction: str, compute_grad: bool,
                             max_tile_c: int = MAX_TILE_C):
    """Launches the CE kernel; returns (loss, score, grad or empty). Inputs already checked.

    One launch, no host sync. The gradient is written already scaled for the reduction; for
    ``"mean"`` every program first counts the non-ignored targets itself (N int64 reads per
    program, from L2 on a GPU; the tile kernel's grid is then capped at
    ``MEAN_TILE_PROGRAMS_PER_SM`` per SM, so at most about 4 * SMs * N * 8 bytes in all).
    The last program of the CE kernel reduces the row losses."""
    N, C = logits.shape
    dev = logits.device
    f64 = logits.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    reduce = reduction != "none"
    # The row losses: in the output for "none", else a buffer the last program reduces.
    row_loss = torch.empty(N, dtype=acc if reduce else logits.dtype, device=dev)
    out = torch.empty((), dtype=logits.dtype, device=dev) if reduce else row_loss
    score = torch.empty(N, dtype=torch.float32, device=dev)
    grad = torch.empty((N, C) if compute_grad else (0,), dtype=logits.dtype, device=dev)
    target = target.contiguous()
    mean = reduction == "mean"
    if N == 0:
        if reduce:  # as F.cross_entropy: a mean over nothing is NaN
            out = torch.full((), float("nan") if mean else 0.0, dtype=logits.dtype,
                             device=dev)
        return out, score, grad
    flags = dict(WRITE_GRAD=compute_grad, MEAN=mean, REDUCE=reduce,
                 SMOOTH=label_smoothing != 0.0, F64=f64)
    args = (logits, logits.stride(0), logits.stride(1), target, row_loss, score, grad,
            out, workspace(dev)[2:], N, C, ignore_index, *float32_parts(label_smoothing))
    block_c = triton.next_power_of_2(C)
    sms = _programs_per_device(dev)
    if block_c <= max_tile_c:
        rows = max(1, min(16, TILE_ELEMS // block_c))
        warps = min(16, max(4, rows * block_c // 512))
        grid = triton.cdiv(N, rows)
        if mean and compute_grad:
            grid = min(grid, MEAN_TILE_PROGRAMS_PER_SM * sms)
        _ce_tile_kernel[(grid,)](*args, ROWS=rows, BLOCK_C=block_c, num_warps=warps, **flags)
    else:
        grid = loop_programs(N, C * logits.element_size(), sms, _l2_bytes(dev))
        _ce_loop_kernel[(grid,)](*args, BLOCK_C=min(4096, max_tile_c), num_warps=8, **flags)
    return out, score, grad


def mse_with_score(pred: torch.Tensor, target: torch.Tensor, reduction: str,
                   compute_grad: bool):
    """Launches the MSE kernel; returns (loss, score, grad or empty). Inputs already checked."""
    pred, target = pred.contiguous(), target.contiguous()
    N = pred.shape[0]
    D = pred.shape[1] if pred.dim() == 2 else 1
    f64 = pred.dtype == torch.float64
    row_loss = torch.empty(N, dtype=torch.float64 if f64 else torch.float32,
                           device=pred.device)
    score = torch.empty(N, dtype=torch.float32, device=pred.device)
    grad = torch.empty(pred.shape if compute_grad else (0,), dtype=pred.dtype,
                       device=pred.device)
    if N > 0:
        block_d = min(1024, triton.next_power_of_2(D))
        rows = max(1, min(64, 2048 // block_d))
        _mse_kernel[(triton.cdiv(N, rows),)](
            pred, target, row_loss, score, grad, N, D, ROWS=rows, BLOCK_D=block_d,
            WRITE_GRAD=compute_grad, MEAN=reduction == "mean", SUM=reduction == "sum", F64=f64,
            num_warps=4)
    return _reduce(row_loss, reduction, float(N), float(D), pred.dtype), score, grad


def soft_cross_entropy_with_score(logits: torch.Tensor, target: torch.Tensor,
                                  label_smoothing: float, reduction: str, compute_grad: bool):
    """Launches the class-probability CE kernel; returns (loss, score, grad or empty).
    Inputs already checked."""
    N, C = logits.shape
    f64 = logits.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    row_loss = torch.empty(N, dtype=acc, device=logits.device)
    score = torch.empty(N, dtype=torch.float32, device=logits.device)
    grad = torch.empty((N, C) if compute_grad else (0,), dtype=logits.dtype,
                       device=logits.device)
    eps = torch.full((1,), label_smoothing, dtype=acc, device=logits.device)
    if N > 0:
        block_c = min(4096, triton.next_power_of_2(C))
        rows = max(1, min(16, TILE_ELEMS // block_c))
        _soft_ce_kernel[(triton.cdiv(N, rows),)](
            logits, logits.stride(0), logits.stride(1), target, target.stride(0),
            target.stride(1), row_loss, score, grad, N, C, eps, ROWS=rows, BLOCK_C=block_c,
            WRITE_GRAD=compute_grad, MEAN=reduction == "mean", F64=f64, num_warps=4)
    return _reduce(row_loss, reduction, float(N), 1.0, logits.dtype), score, grad
