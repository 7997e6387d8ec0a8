"""Importance scores of sequences from the scores of their tokens.

A sequence's loss is the mean of its token losses, ``L_i = (1/T_i) Σ_t ℓ_t``. Its gradient
with respect to the output logits of all its tokens is the concatenation of
``(1/T_i)·∇_{z_t} ℓ_t``, so its norm is ``sqrt(Σ_t s_t²) / T_i`` with ``s_t = ‖∇_{z_t} ℓ_t‖``,
the token scores of :func:`~is_kernels.cross_entropy_with_score` or
:func:`~is_kernels.linear_cross_entropy_with_score`. ``docs/linear_cross_entropy.md`` has
the derivation.
"""
from __future__ import annotations

import torch

__all__ = ["sequence_scores"]

OP = "sequence_scores"


def _check_lengths(lengths: torch.Tensor, limit: int, what: str) -> None:
    if lengths.dim() != 1:
        raise ValueError(f"{OP}: lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if torch.compiler.is_compiling() or lengths.numel() == 0:
        return  # data-dependent checks run eagerly only
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > limit:
        raise ValueError(f"{OP}: lengths must be in [0, {limit}] ({what}), got values in "
                         f"[{lo}, {hi}]")


def sequence_scores(token_scores: torch.Tensor, mask_or_lengths: torch.Tensor) -> torch.Tensor:
    """``sqrt(Σ_t s_t²) / T_i`` per sequence over its ``T_i`` counted tokens (0 if none).

    Args:
        token_scores: ``[B, T]`` per-token scores (padded), or ``[N]`` for packed sequences
            laid end to end.
        mask_or_lengths: for ``[B, T]`` scores either a bool mask ``[B, T]`` (True: the
            token counts, e.g. ``target != ignore_index``) or integer lengths ``[B]`` (the
            first ``lengths[i]`` tokens of row ``i`` count); for ``[N]`` scores integer
            lengths ``[B]`` summing to ``N``. Tokens that do not count are not read.

    Returns:
        float32 ``[B]``, on the device of ``token_scores``. Sums run in float64, so scores
        of well-learned tokens (far below 1e-19) do not underflow when squared.
    """
    for name, t in (("token_scores", token_scores), ("mask_or_lengths", mask_or_lengths)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not token_scores.dtype.is_floating_point:
        raise TypeError(f"{OP}: token_scores must be floating point, got {token_scores.dtype}")
    m = mask_or_lengths
    if m.device != token_scores.device:
        raise ValueError(f"{OP}: mask_or_lengths and token_scores must be on the same device, "
                         f"got {m.device} and {token_scores.device}")
    if m.dtype.is_floating_point or m.dtype.is_complex:
        raise TypeError(f"{OP}: mask_or_lengths must be a bool mask or integer lengths, "
                        f"got {m.dtype}")
    sq = token_scores.double().square()
    if token_scores.dim() == 2:
        B, T = token_scores.shape
        if m.dtype == torch.bool:
            if m.shape != token_scores.shape:
                raise ValueError(f"{OP}: a mask must have the shape of token_scores "
                                 f"{tuple(token_scores.shape)}, got {tuple(m.shape)}")
            mask = m
        else:
            _check_lengths(m, T, "the padded length T")
            if m.shape[0] != B:
                raise ValueError(f"{OP}: lengths must have B = {B} entries, got {m.shape[0]}")
            mask = torch.arange(T, device=m.device)[None, :] < m[:, None]
        total = torch.where(mask, sq, 0.0).sum(1)
        count = mask.sum(1)
    elif token_scores.dim() == 1:
        if m.dtype == torch.bool:
            raise TypeError(f"{OP}: packed [N] token_scores take integer lengths [B], "
                            "not a mask")
        N = token_scores.shape[0]
        _check_lengths(m, N, "the packed length N")
        if not torch.compiler.is_compiling() and int(m.sum()) != N:
            raise ValueError(f"{OP}: lengths must sum to N = {N} for packed token_scores, "
                             f"got {int(m.sum())}")
        seq = torch.repeat_interleave(torch.arange(m.shape[0], device=m.device), m,
                                      output_size=N)
        total = sq.new_zeros(m.shape[0]).index_add_(0, seq, sq)
        count = m
    else:
        raise ValueError(f"{OP}: token_scores must be [B, T] or packed [N], got shape "
                         f"{tuple(token_scores.shape)}")
    out = total.sqrt() / count.clamp(min=1).double()
    return out.float()
