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
def _grad_scale(COUNT, y, row_ok, bad, MEAN: tl.constexpr, F64: tl.constexpr):
    """Per-row factor of the gradient: 1/count for "mean", 0 ignored, NaN out of range."""
    one = tl.full(y.shape, 1.0, tl.float64 if F64 else tl.float32)
    if MEAN:
        one = one / tl.load(COUNT).to(one.dtype)
    return tl.where(bad, float("nan"), tl.where(row_ok, one, 0.0))


@triton.jit
def _ce_tile_kernel(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, COUNT, N, C, ignore_index,
                    EPS, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr,
                    MEAN: tl.constexpr, SMOOTH: tl.constexpr, F64: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    eps = tl.load(EPS)
    row_in = rows < N
    y = tl.load(T + rows, mask=row_in, other=ignore_index)
    row_ok = row_in & (y != ignore_index) & (y >= 0) & (y < C)
    bad = row_in & (y != ignore_index) & ((y < 0) | (y >= C))
    col_in = cols < C
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
    _ce_row_outputs(LOSS, SCORE, rows, row_in, row_ok, bad, nll, a, s_ne, q_ne, sq_other, zy,
                    m2, sum_z, eps, C, SMOOTH)
    if WRITE_GRAD:
        scale = _grad_scale(COUNT, y, row_ok, bad, MEAN, F64)
        d_y = (eps - eps / C) - s_ne * a
        g = tl.where(is_y, d_y[:, None], d) * scale[:, None]
        tl.store(GRAD + rows[:, None] * C + cols[None, :], g.to(GRAD.dtype.element_ty),
                 mask=mask)


@triton.jit
def _ce_loop_kernel(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, COUNT, N, C, ignore_index,
                    EPS, BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr, MEAN: tl.constexpr,
                    SMOOTH: tl.constexpr, F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    eps = tl.load(EPS)
    # Scalars as 1-element vectors, so the row helpers serve both kernels.
    rows = row + tl.arange(0, 1)
    y = tl.load(T + rows)
    row_ok = (y != ignore_index) & (y >= 0) & (y < C)
    bad = (y != ignore_index) & ((y < 0) | (y >= C))
    acc_t = tl.float64 if F64 else tl.float32
    zrow = Z + row * stride_zn
    # Pass 1, online: m2 = max_{j!=y} z_j, S_{j!=y}, Q_{j!=y} = sum e_j^2, sum_j z_j.
    m2 = tl.full([1], -float("inf"), acc_t)
    s_ne = tl.zeros([1], acc_t)
    q_ne = tl.zeros([1], acc_t)
    sum_z = tl.zeros([1], acc_t)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        z = tl.load(zrow + cols.to(tl.int64) * stride_zc, mask=cols < C,
                    other=-float("inf")).to(acc_t)
        z = tl.where(cols[None, :] == y[:, None], -float("inf"), z[None, :])
        m_new = tl.maximum(m2, tl.max(z, axis=1))
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp(m2 - shift)
        e = tl.exp(z - shift[:, None])
        s_ne = s_ne * alpha + tl.sum(e, axis=1)
        q_ne = q_ne * alpha * alpha + tl.sum(e * e, axis=1)
        m2 = m_new
    y_safe = tl.where(row_ok, y, 0)
    zy = tl.load(zrow + y_safe * stride_zc).to(acc_t)
    bad = bad | (row_ok & (zy == float("inf")))  # p_y = inf / inf: NaN, as in PyTorch
    a, nll = _ce_row_stats(zy - m2, s_ne)
    shift = tl.where(m2 == -float("inf"), 0.0, m2)
    sq_other = q_ne
    if WRITE_GRAD or SMOOTH:
        # Pass 2: d_j = p_j - t_j, written (scaled) as the gradient; exact sum of d_j^2.
        scale = _grad_scale(COUNT, y, row_ok, bad, MEAN, F64)
        d_y = (eps - eps / C) - s_ne * a
        sq_other = tl.zeros([1], acc_t)
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            col_in = cols < C
            z = tl.load(zrow + cols.to(tl.int64) * stride_zc, mask=col_in,
                        other=-float("inf")).to(acc_t)
            is_y = cols[None, :] == y[:, None]
            d = tl.exp(z[None, :] - shift[:, None]) * a[:, None] - eps / C
            if SMOOTH:
                sq_other += tl.sum(tl.where(is_y | ~col_in[None, :], 0.0, d * d), axis=1)
                sum_z += tl.sum(tl.where(col_in, z, 0.0), axis=0)
            if WRITE_GRAD:
                g = tl.where(is_y, d_y[:, None], d) * scale[:, None]
                tl.store(GRAD + row * C + cols[None, :], g.to(GRAD.dtype.element_ty),
                         mask=col_in[None, :])
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


def cross_entropy_with_score(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                             label_smoothing: float, reduction: str, compute_grad: bool,
                             max_tile_c: int = MAX_TILE_C):
    """Launches the CE kernel; returns (loss, score, grad or empty). Inputs already checked."""
    N, C = logits.shape
    f64 = logits.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    row_loss = torch.empty(N, dtype=acc, device=logits.device)
    score = torch.empty(N, dtype=torch.float32, device=logits.device)
    grad = torch.empty((N, C) if compute_grad else (0,), dtype=logits.dtype,
                       device=logits.device)
    count = (target != ignore_index).sum()
    # A device scalar, not a kernel float argument (those are float32): exact in float64 too.
    eps = torch.full((1,), label_smoothing, dtype=acc, device=logits.device)
    target = target.contiguous()
    if N > 0:
        flags = dict(WRITE_GRAD=compute_grad, MEAN=reduction == "mean",
                     SMOOTH=label_smoothing != 0.0, F64=f64)
        args = (logits, logits.stride(0), logits.stride(1), target, row_loss, score, grad,
                count, N, C, ignore_index, eps)
        block_c = triton.next_power_of_2(C)
        if block_c <= max_tile_c:
            rows = max(1, min(16, TILE_ELEMS // block_c))
            warps = min(16, max(4, rows * block_c // 512))
            _ce_tile_kernel[(triton.cdiv(N, rows),)](*args, ROWS=rows, BLOCK_C=block_c,
                                                     num_warps=warps, **flags)
        else:
            _ce_loop_kernel[(N,)](*args, BLOCK_C=min(4096, max_tile_c), num_warps=8, **flags)
    return _reduce(row_loss, reduction, count, 1.0, logits.dtype), score, grad


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
