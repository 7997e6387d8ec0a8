"""Fused output-gradient ops: loss + per-sample importance score (+ logits gradient).

Public API: :func:`cross_entropy_with_score`, :func:`mse_with_score`, :func:`output_grad_norm`.
Each wraps a ``torch.ops.is_kernels`` custom op: C++ on CPU (``csrc/output_grad.cpp``),
Triton on CUDA (``is_kernels/ops/output_grad_triton.py``), with fake kernels for
``torch.compile`` and an autograd formula whose backward scales the gradient the forward
kernel already wrote (in place when the graph is freed after the backward: the buffer is
donated, see :func:`can_donate`).
"""
from __future__ import annotations

import numbers
import operator
from typing import Optional, Tuple

import torch

from .. import _C  # noqa: F401  (registers the ops and their CPU kernels)
from .cuda_path import cuda_kernel, in_foreign_dispatch_mode, uses_cuda_path

__all__ = ["cross_entropy_with_score", "mse_with_score", "output_grad_norm"]

_REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_logits(op: str, logits: torch.Tensor, label_smoothing: float) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{op}: logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError(f"{op}: logits must have at least one class (C >= 1)")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: logits must be float32, float64, float16 or bfloat16, "
                        f"got {logits.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")


def _check_ce(op: str, logits: torch.Tensor, target: torch.Tensor,
              label_smoothing: float) -> None:
    """Checks of shapes, dtypes and devices (the C++ kernel makes the same on CPU)."""
    _check_logits(op, logits, label_smoothing)
    if target.dtype != torch.int64:
        raise TypeError(f"{op}: target must be int64 class indices, got {target.dtype}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"{op}: target must have shape [N] = [{logits.shape[0]}], "
                         f"got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"{op}: target and logits must be on the same device, "
                         f"got {target.device} and {logits.device}")


def _check_mse(op: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() not in (1, 2):
        raise ValueError(f"{op}: pred must be [N] or [N, D], got shape {tuple(pred.shape)}")
    if pred.dim() == 2 and pred.shape[1] < 1:
        raise ValueError(f"{op}: pred must have at least one feature (D >= 1)")
    if pred.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: pred must be float32, float64, float16 or bfloat16, "
                        f"got {pred.dtype}")
    _check_target_like(op, "target", target, "pred", pred)


def _check_target_like(op: str, what: str, target: torch.Tensor, name: str,
                       like: torch.Tensor) -> None:
    """``target`` (described as ``what``) has the shape, dtype and device of ``like``."""
    if target.shape != like.shape:
        raise ValueError(f"{op}: {what} must have the shape of {name} {tuple(like.shape)}, "
                         f"got {tuple(target.shape)}")
    if target.dtype != like.dtype:
        raise TypeError(f"{op}: {what} must have the dtype of {name} ({like.dtype}), "
                        f"got {target.dtype}")
    if target.device != like.device:
        raise ValueError(f"{op}: target and {name} must be on the same device, "
                         f"got {target.device} and {like.device}")


def _loss_like(x: torch.Tensor, reduction: str) -> torch.Tensor:
    shape = (x.shape[0],) if reduction == "none" else ()
    return x.new_empty(shape)


def _grad_like(x: torch.Tensor, compute_grad: bool) -> torch.Tensor:
    return x.new_empty(x.shape if compute_grad else (0,))


# ---- fake (meta) kernels: shapes only, same argument checks as the real kernels ----------

@torch.library.register_fake("is_kernels::cross_entropy_with_score")
def _ce_fake(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    _check_reduction("cross_entropy_with_score", reduction)
    _check_ce("cross_entropy_with_score", logits, target, label_smoothing)
    score = logits.new_empty((logits.shape[0],), dtype=torch.float32)
    return _loss_like(logits, reduction), score, _grad_like(logits, compute_grad)


@torch.library.register_fake("is_kernels::mse_with_score")
def _mse_fake(pred, target, reduction, compute_grad):
    _check_reduction("mse_with_score", reduction)
    _check_mse("mse_with_score", pred, target)
    score = pred.new_empty((pred.shape[0],), dtype=torch.float32)
    return _loss_like(pred, reduction), score, _grad_like(pred, compute_grad)


def _check_soft_ce(op: str, logits: torch.Tensor, target: torch.Tensor,
                   label_smoothing: float) -> None:
    """Checks of the class-probability variant (the C++ kernel makes the same on CPU)."""
    _check_logits(op, logits, label_smoothing)
    _check_target_like(op, "target (class probabilities)", target, "logits", logits)


@torch.library.register_fake("is_kernels::soft_cross_entropy_with_score")
def _soft_ce_fake(logits, target, label_smoothing, reduction, compute_grad):
    _check_reduction("soft_cross_entropy_with_score", reduction)
    _check_soft_ce("soft_cross_entropy_with_score", logits, target, label_smoothing)
    score = logits.new_empty((logits.shape[0],), dtype=torch.float32)
    return _loss_like(logits, reduction), score, _grad_like(logits, compute_grad)


@torch.library.register_fake("is_kernels::output_grad_norm")
def _norm_fake(logits, target, ignore_index, label_smoothing):
    _check_ce("output_grad_norm", logits, target, label_smoothing)
    return logits.new_empty((logits.shape[0],), dtype=torch.float32)


# ---- CUDA kernels: Triton, imported on first use so CPU-only installs need no Triton -----

@cuda_kernel("is_kernels::cross_entropy_with_score")
def _ce_cuda(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    from . import output_grad_triton

    _check_reduction("cross_entropy_with_score", reduction)
    _check_ce("cross_entropy_with_score", logits, target, label_smoothing)
    return output_grad_triton.cross_entropy_with_score(
        logits, target, ignore_index, label_smoothing, reduction, compute_grad)


@cuda_kernel("is_kernels::soft_cross_entropy_with_score")
def _soft_ce_cuda(logits, target, label_smoothing, reduction, compute_grad):
    from . import output_grad_triton

    _check_reduction("soft_cross_entropy_with_score", reduction)
    _check_soft_ce("soft_cross_entropy_with_score", logits, target, label_smoothing)
    return output_grad_triton.soft_cross_entropy_with_score(
        logits, target, label_smoothing, reduction, compute_grad)


@cuda_kernel("is_kernels::mse_with_score")
def _mse_cuda(pred, target, reduction, compute_grad):
    from . import output_grad_triton

    _check_reduction("mse_with_score", reduction)
    _check_mse("mse_with_score", pred, target)
    return output_grad_triton.mse_with_score(pred, target, reduction, compute_grad)


@cuda_kernel("is_kernels::output_grad_norm")
def _norm_cuda(logits, target, ignore_index, label_smoothing):
    from . import output_grad_triton

    _check_ce("output_grad_norm", logits, target, label_smoothing)
    return output_grad_triton.cross_entropy_with_score(
        logits, target, ignore_index, label_smoothing, "none", False)[1]


# ---- autograd: backward scales the gradient the forward kernel wrote ---------------------

# True while the running backward keeps the graph (retain_graph=True). The forward's gradient
# buffer is then needed again, and is scaled out of place; otherwise it is donated: scaled in
# place and handed on, as AOTAutograd does with the saved tensors of a compiled backward.
_graph_is_kept = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph",
                         lambda: True)


def can_donate(grad: torch.Tensor) -> bool:
    """Whether this backward may scale the forward's gradient buffer in place: an eager
    backward on real tensors (not traced, no create_graph) whose graph is freed after it."""
    return not (torch.is_grad_enabled() or _graph_is_kept() or torch.compiler.is_compiling()
                or in_foreign_dispatch_mode() or type(grad) is not torch.Tensor)


def _setup_context(ctx, inputs, output):
    ctx.reduction, ctx.compute_grad = inputs[-2], inputs[-1]
    ctx.save_for_backward(output[2])
    # Only the loss carries a gradient: without this, autograd would fill a zero tensor the
    # size of the logits for the (unused) gradient output on every backward.
    ctx.set_materialize_grads(False)


def _scaled_grad(ctx, grad_loss: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if grad_loss is None:  # the loss took no part in what was differentiated
        return None
    (grad,) = ctx.saved_tensors
    if not ctx.compute_grad:
        raise RuntimeError("is_kernels: backward through an op called with compute_grad=False; "
                           "call it with compute_grad=True (the public wrappers do this "
                           "whenever the input requires grad)")
    per_row = ctx.reduction == "none" and grad.dim() == 2
    if not can_donate(grad):
        return grad * (grad_loss.unsqueeze(1) if per_row else grad_loss)
    # Donate the buffer: no second logits-sized tensor, and no pass at all for the usual
    # loss.backward(): on CPU the scalar is read on the host (no sync), on CUDA by the
    # scaling kernel, which returns at once when it is exactly 1.
    if uses_cuda_path(grad) and grad.is_contiguous() and grad.dim() == 2 and \
            grad_loss.dim() == (1 if per_row else 0):
        from . import output_grad_triton

        return output_grad_triton.scale_grad_(grad, grad_loss)
    if grad_loss.numel() == 1 and not uses_cuda_path(grad_loss) and grad_loss.item() == 1.0:
        return grad
    return grad.mul_(grad_loss.unsqueeze(1) if per_row else grad_loss)


def _ce_backward(ctx, grad_loss, grad_score, grad_grad):
    return _scaled_grad(ctx, grad_loss), None, None, None, None, None


def _soft_ce_backward(ctx, grad_loss, grad_score, grad_grad):
    return _scaled_grad(ctx, grad_loss), None, None, None, None


def _mse_backward(ctx, grad_loss, grad_score, grad_grad):
    grad_pred = _scaled_grad(ctx, grad_loss)
    grad_target = -grad_pred if ctx.needs_input_grad[1] and grad_pred is not None else None
    return grad_pred, grad_target, None, None


torch.library.register_autograd("is_kernels::cross_entropy_with_score", _ce_backward,
                                setup_context=_setup_context)
torch.library.register_autograd("is_kernels::soft_cross_entropy_with_score", _soft_ce_backward,
                                setup_context=_setup_context)
torch.library.register_autograd("is_kernels::mse_with_score", _mse_backward,
                                setup_context=_setup_context)


# ---- public API ---------------------------------------------------------------------------

def _check_tensors(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_options(op: str, ignore_index: int, label_smoothing: float) -> int:
    """``ignore_index`` as an int; TypeError naming the argument of a bad type."""
    if isinstance(label_smoothing, torch.Tensor) and label_smoothing.dim() == 0 \
            and label_smoothing.dtype.is_floating_point:
        # A 0-dim float tensor, as F.cross_entropy accepts; reading a CUDA one is a host sync.
        if uses_cuda_path(label_smoothing):
            raise TypeError(f"{op}: label_smoothing must be a float or a 0-dim CPU tensor, got "
                            f"a tensor on {label_smoothing.device} (reading it would "
                            "synchronise with the device)")
    elif isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"{op}: label_smoothing must be a float, "
                        f"got {type(label_smoothing).__name__}")
    try:
        if isinstance(ignore_index, bool):
            raise TypeError
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{op}: ignore_index must be an int, "
                        f"got {type(ignore_index).__name__}") from None


def _as_rows(op: str, logits: torch.Tensor, target: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, ...], bool]:
    """The logits as rows ``[M, C]`` and the target as ``[M]`` class indices (int64) or
    ``[M, C]`` class probabilities, as ``F.cross_entropy`` reads them: ``[C]`` logits are
    one sample; ``[N, C, d1, …]`` logits are ``N·d1·…`` samples (class dim moved last).
    Returns ``(rows, target_rows, batch_shape, soft)``: per-sample outputs have
    ``batch_shape`` (``()``, ``(N,)`` or ``(N, d1, …)``)."""
    soft = target.dtype.is_floating_point
    if not soft and (target.dtype.is_complex or target.dtype == torch.bool):
        raise TypeError(f"{op}: target must be integer class indices or float class "
                        f"probabilities, got {target.dtype}")
    if soft and target.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{op}: gradients with respect to class-probability targets are "
                         "not computed; pass target.detach()")
    if logits.dim() == 0:
        raise ValueError(f"{op}: logits must be [C], [N, C] or [N, C, d1, ...], got a "
                         "0-dim tensor")
    if logits.dim() == 1:
        batch_shape: Tuple[int, ...] = ()
    else:
        batch_shape = (logits.shape[0],) + tuple(logits.shape[2:])
    if logits.dim() != 2:
        want = tuple(logits.shape) if soft else batch_shape
        if tuple(target.shape) != want:
            kind = "the shape of logits" if soft else \
                "shape () for [C] logits" if logits.dim() == 1 else "shape [N, d1, ...]"
            raise ValueError(f"{op}: target must have {kind} = {want}, got "
                             f"{tuple(target.shape)}")
        C = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
        logits = logits.reshape(1, C) if logits.dim() == 1 else \
            logits.movedim(1, -1).reshape(-1, C)
        if soft:
            target = target.reshape(1, C) if target.dim() == 1 else \
                target.movedim(1, -1).reshape(-1, C)
        else:
            target = target.reshape(-1)
    return logits, target if soft else target.long(), batch_shape, soft


def cross_entropy_with_score(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: str = "mean",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy and the importance score of every sample, in one pass.

    Takes what ``F.cross_entropy`` takes: logits ``[N, C]``, ``[C]`` (one sample) or
    ``[N, C, d1, …]`` (one sample per position); targets as class indices (``[N]``, ``[]``,
    ``[N, d1, …]``) or class probabilities (float, the shape of the logits).

    Args:
        logits: float32/float16/bfloat16 (math in float32) or float64.
        target: integer class indices in ``[0, C)`` or ``ignore_index``; or float class
            probabilities of the logits' dtype (not differentiated).
        ignore_index: samples with this class-index target contribute no loss, no
            gradient, score 0 (not used with probabilities, as ``F.cross_entropy``).
        label_smoothing: ``ε`` in ``[0, 1]``; target ``t = (1-ε)·q + ε/C`` (``q`` the
            one-hot class or the given probabilities).
        reduction: ``"mean"`` (over non-ignored samples; with probabilities over all
            samples), ``"sum"`` or ``"none"`` (the per-sample shape).

    Returns:
        ``(loss, score)``: ``loss`` equals ``F.cross_entropy`` with the same arguments
        (differentiable w.r.t. ``logits``); ``score`` is the detached float32 per-sample
        (per-position) norm of the gradient of that sample's loss w.r.t. its logits:
        ``||softmax(z_i) - t_i||_2`` (class indices, 0 for ignored samples), or
        ``||(Σ_c t_ic)·softmax(z_i) - t_i||_2`` (probabilities).
    """
    op = "cross_entropy_with_score"
    _check_tensors(op, logits=logits, target=target)
    ignore_index = _check_options(op, ignore_index, label_smoothing)
    rows, target, batch_shape, soft = _as_rows(op, logits, target)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    if soft:
        loss, score, _ = torch.ops.is_kernels.soft_cross_entropy_with_score(
            rows, target, float(label_smoothing), reduction, compute_grad)
    else:
        loss, score, _ = torch.ops.is_kernels.cross_entropy_with_score(
            rows, target, ignore_index, float(label_smoothing), reduction, compute_grad)
    if reduction == "none":
        loss = loss.reshape(batch_shape)
    return loss, score.detach().reshape(batch_shape)


def mse_with_score(pred: torch.Tensor, target: torch.Tensor, *,
                   reduction: str = "mean") -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error and the importance score of every sample, in one pass.

    Args:
        pred, target: ``[N, D]`` (or ``[N]``, meaning ``D = 1``), same dtype and device.
        reduction: ``"mean"``/``"sum"`` as ``F.mse_loss``; ``"none"`` gives the per-sample
            mean over features, shape ``[N]``.

    Returns:
        ``(loss, score)`` with ``score = (2/D)·||pred_i - target_i||_2`` (float32 ``[N]``,
        detached), the norm of the per-sample loss gradient w.r.t. ``pred_i``.
    """
    _check_tensors("mse_with_score", pred=pred, target=target)
    compute_grad = torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad)
    loss, score, _ = torch.ops.is_kernels.mse_with_score(pred, target, reduction, compute_grad)
    return loss, score.detach()


def output_grad_norm(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """The cross-entropy score alone (no loss, no autograd): one read of the logits.

    Used to score presampled candidates. Takes the shapes and targets of
    :func:`cross_entropy_with_score`; returns its float32 per-sample score, 0 for ignored
    samples.
    """
    op = "output_grad_norm"
    _check_tensors(op, logits=logits, target=target)
    ignore_index = _check_options(op, ignore_index, label_smoothing)
    with torch.no_grad():
        rows, target, batch_shape, soft = _as_rows(op, logits, target)
        if soft:
            score = torch.ops.is_kernels.soft_cross_entropy_with_score(
                rows, target, float(label_smoothing), "none", False)[1]
        else:
            score = torch.ops.is_kernels.output_grad_norm(rows, target, ignore_index,
                                                          float(label_smoothing))
    return score.reshape(batch_shape)
