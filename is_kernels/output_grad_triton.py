"""Triton kernels of the fused output-gradient ops (the CUDA implementation).

The launchers take any tensors Triton can address: CUDA tensors normally, CPU tensors under
``TRITON_INTERPRET=1`` (how the test suite checks these kernels on a machine without a GPU).
Each launcher computes, per row, the loss, the score ``||dloss_i/dz_i||_2`` and, when asked,
the gradient of the logits already scaled for the reduction, with no host synchronisation.

Two cross-entropy kernels: ``_ce_tile_kernel`` holds ``ROWS`` whole rows in registers (small
C: one read of the logits, one write of the gradient); ``_ce_loop_kernel`` walks one long row
in chunks (large C: an online max/sum pass, then a pass that writes the gradient).
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
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _ce_row_stats(zy, s_ne, m, eps, C):
    """From the target logit zy - m, S_{j!=y} and the max: nll, d_y = p_y - t_y, 1/S."""
    ey = tl.exp(zy)
    s = s_ne + ey
    inv = 1.0 / s
    nll = tl.where(zy == 0.0, _log1p(s_ne), tl.log(s) - zy)
    d_y = (eps - eps / C) - s_ne * inv
    return nll, d_y, inv, s


@triton.jit
def _ce_row_outputs(LOSS, SCORE, rows, row_in, row_ok, bad, nll, sq_other, d_y, lse, sum_z,
                    eps, C, SMOOTH: tl.constexpr):
    """Stores loss and score of the rows: 0 for ignored rows, NaN for out-of-range targets."""
    loss = nll
    if SMOOTH:
        loss = (1.0 - eps) * nll + eps * (lse - sum_z / C)
    score = tl.sqrt(sq_other + d_y * d_y)
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
                    eps, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr,
                    MEAN: tl.constexpr, SMOOTH: tl.constexpr, F64: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    row_in = rows < N
    y = tl.load(T + rows, mask=row_in, other=ignore_index)
    row_ok = row_in & (y != ignore_index) & (y >= 0) & (y < C)
    bad = row_in & (y != ignore_index) & ((y < 0) | (y >= C))
    col_in = cols < C
    mask = row_in[:, None] & col_in[None, :]
    ptrs = Z + rows[:, None] * stride_zn + cols[None, :] * stride_zc
    z = tl.load(ptrs, mask=mask, other=-float("inf"))
    z = z.to(tl.float64) if F64 else z.to(tl.float32)
    m = tl.max(z, axis=1)
    # Rows past N are all -inf; shift them by 0 so no NaN is computed for them.
    m = tl.where(row_in, m, 0.0)
    is_y = cols[None, :] == y[:, None]
    e = tl.exp(z - m[:, None])
    s_ne = tl.sum(tl.where(is_y, 0.0, e), axis=1)
    zy = tl.sum(tl.where(is_y, z, 0.0), axis=1) - m
    nll, d_y, inv, s = _ce_row_stats(zy, s_ne, m, eps, C)
    d = e * inv[:, None] - eps / C
    sq_other = tl.sum(tl.where(is_y | ~col_in[None, :], 0.0, d * d), axis=1)
    sum_z = m
    if SMOOTH:
        sum_z = tl.sum(tl.where(col_in[None, :], z, 0.0), axis=1)
    _ce_row_outputs(LOSS, SCORE, rows, row_in, row_ok, bad, nll, sq_other, d_y, m + tl.log(s),
                    sum_z, eps, C, SMOOTH)
    if WRITE_GRAD:
        scale = _grad_scale(COUNT, y, row_ok, bad, MEAN, F64)
        g = tl.where(is_y, d_y[:, None], d) * scale[:, None]
        tl.store(GRAD + rows[:, None] * C + cols[None, :], g.to(GRAD.dtype.element_ty),
                 mask=mask)


@triton.jit
def _ce_loop_kernel(Z, stride_zn, stride_zc, T, LOSS, SCORE, GRAD, COUNT, N, C, ignore_index,
                    eps, BLOCK_C: tl.constexpr, WRITE_GRAD: tl.constexpr, MEAN: tl.constexpr,
                    SMOOTH: tl.constexpr, F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    # Scalars as 1-element vectors, so the row helpers serve both kernels.
    rows = row + tl.arange(0, 1)
    y = tl.load(T + rows)
    row_ok = (y != ignore_index) & (y >= 0) & (y < C)
    bad = (y != ignore_index) & ((y < 0) | (y >= C))
    acc_t = tl.float64 if F64 else tl.float32
    zrow = Z + row * stride_zn
    # Pass 1: online max, S_{j!=y}, Q_{j!=y} = sum e_j^2 and sum z_j.
    m = tl.full([1], -float("inf"), acc_t)
    s_ne = tl.zeros([1], acc_t)
    q_ne = tl.zeros([1], acc_t)
    sum_z = tl.zeros([1], acc_t)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        z = tl.load(zrow + cols * stride_zc, mask=cols < C, other=-float("inf")).to(acc_t)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp(m - shift)
        e = tl.where(cols[None, :] == y[:, None], 0.0, tl.exp(z[None, :] - shift[:, None]))
        s_ne = s_ne * alpha + tl.sum(e, axis=1)
        q_ne = q_ne * alpha * alpha + tl.sum(e * e, axis=1)
        if SMOOTH:
            sum_z += tl.sum(tl.where(cols < C, z, 0.0), axis=0)
        m = m_new
    y_safe = tl.where(row_ok, y, 0)
    zy = tl.load(zrow + y_safe * stride_zc).to(acc_t) - m
    nll, d_y, inv, s = _ce_row_stats(zy, s_ne, m, eps, C)
    sq_other = q_ne * inv * inv
    if WRITE_GRAD or SMOOTH:
        # Pass 2: d_j = p_j - t_j, written (scaled) as the gradient; exact sum of d_j^2.
        scale = _grad_scale(COUNT, y, row_ok, bad, MEAN, F64)
        sq_other = tl.zeros([1], acc_t)
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            col_in = cols < C
            z = tl.load(zrow + cols * stride_zc, mask=col_in, other=-float("inf")).to(acc_t)
            is_y = cols[None, :] == y[:, None]
            d = tl.exp(z[None, :] - m[:, None]) * inv[:, None] - eps / C
            sq_other += tl.sum(tl.where(is_y | ~col_in[None, :], 0.0, d * d), axis=1)
            if WRITE_GRAD:
                g = tl.where(is_y, d_y[:, None], d) * scale[:, None]
                tl.store(GRAD + row * C + cols[None, :], g.to(GRAD.dtype.element_ty),
                         mask=col_in[None, :])
    _ce_row_outputs(LOSS, SCORE, rows, rows < N, row_ok, bad, nll, sq_other, d_y,
                    m + tl.log(s), sum_z, eps, C, SMOOTH)


@triton.jit
def _mse_kernel(P, Y, LOSS, SCORE, GRAD, N, D, grad_scale, ROWS: tl.constexpr,
                BLOCK_D: tl.constexpr, WRITE_GRAD: tl.constexpr, F64: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_in = rows < N
    acc_t = tl.float64 if F64 else tl.float32
    sq = tl.zeros([ROWS], acc_t)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        mask = row_in[:, None] & (cols < D)[None, :]
        offs = rows[:, None] * D + cols[None, :]
        diff = (tl.load(P + offs, mask=mask, other=0.0).to(acc_t)
                - tl.load(Y + offs, mask=mask, other=0.0).to(acc_t))
        sq += tl.sum(diff * diff, axis=1)
        if WRITE_GRAD:
            tl.store(GRAD + offs, (diff * (2.0 * grad_scale / D)).to(GRAD.dtype.element_ty),
                     mask=mask)
    tl.store(LOSS + rows, sq / D, mask=row_in)
    tl.store(SCORE + rows, (2.0 / D * tl.sqrt(sq)).to(tl.float32), mask=row_in)


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
    target = target.contiguous()
    if N > 0:
        flags = dict(WRITE_GRAD=compute_grad, MEAN=reduction == "mean",
                     SMOOTH=label_smoothing != 0.0, F64=f64)
        args = (logits, logits.stride(0), logits.stride(1), target, row_loss, score, grad,
                count, N, C, ignore_index, float(label_smoothing))
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
    grad_scale = {"mean": 1.0 / max(N, 1), "sum": float(D), "none": 1.0}[reduction]
    if N > 0:
        block_d = min(1024, triton.next_power_of_2(D))
        rows = max(1, min(64, 2048 // block_d))
        _mse_kernel[(triton.cdiv(N, rows),)](pred, target, row_loss, score, grad, N, D,
                                             grad_scale, ROWS=rows, BLOCK_D=block_d,
                                             WRITE_GRAD=compute_grad, F64=f64, num_warps=4)
    return _reduce(row_loss, reduction, float(N), float(D), pred.dtype), score, grad
