"""Fused linear + cross-entropy + importance score, chunked over rows: never the [N, V] logits.

Public API: :func:`linear_cross_entropy_with_score`. The op
``torch.ops.is_kernels.linear_cross_entropy_with_score`` runs, per chunk of rows, the
projection ``z = x·Wᵀ + b`` (a torch matmul), the fused cross-entropy row kernel (loss,
score and the logits gradient ``p − t`` in one pass: the C++ kernel, or on the CUDA path the
Triton launcher, called directly; the class-probability kernel for ``[N, V]`` float targets,
sliced by the same chunks) and the matmuls of the gradients ``grad_input = G·W``,
``grad_weight += Gᵀ·x``, ``grad_bias += Σ G``. With ``reduction`` ``"mean"``/``"sum"`` the
forward computes the gradients eagerly and the backward only scales them; with ``"none"``
the backward recomputes the chunks, weighting each row by its incoming gradient. On the
CUDA path nothing reads a tensor on the host: the count of the mean stays on the device,
and the backward scales by the incoming gradient on the device. The math is in
``docs/linear_cross_entropy.md``.
"""
from __future__ import annotations

import contextlib
import numbers
import operator
from typing import Optional, Tuple

import torch

from . import output_grad  # registers is_kernels::cross_entropy_with_score
from .cuda_path import cuda_kernel, uses_cuda_path

__all__ = ["linear_cross_entropy_with_score", "default_chunk_size"]

OP = "linear_cross_entropy_with_score"
_REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Rows per chunk: at least this many on CPU (fewer passes over the weight and its gradient).
_MIN_CPU_CHUNK = 1024


def default_chunk_size(n: int, vocab: int, hidden: int, device: torch.device) -> int:
    """Rows per chunk when none is given: chunk × V about N × H (the logits of a chunk take
    the memory of the input), a power of two, at least 1024 rows on CPU, at most N."""
    per = max(1, -(-n // max(1, -(-vocab // hidden))))  # ceil(N / ceil(V / H))
    rows = 1 << (per - 1).bit_length()  # the power of two at or above
    if torch.device(device).type == "cpu":
        rows = max(rows, _MIN_CPU_CHUNK)
    return max(1, min(rows, n))


def _check(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           target: torch.Tensor, label_smoothing: float, reduction: str,
           chunk_size: int, op: str = OP) -> None:
    """Shape, dtype, device and option checks (the same at trace time, on fake tensors); the
    errors start with ``op``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if input.dim() != 2:
        raise ValueError(f"{op}: input must be [N, H] or [..., H], got shape "
                         f"{tuple(input.shape)}")
    if weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise ValueError(f"{op}: weight must be [V, H] with H = {input.shape[1]} (the "
                         f"nn.Linear layout), got shape {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError(f"{op}: weight must have at least one class (V >= 1)")
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: input must be float32, float64, float16 or bfloat16, "
                        f"got {input.dtype}")
    named = [("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        if t.dtype != input.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of input ({input.dtype}), "
                            f"got {t.dtype}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape [V] = [{weight.shape[0]}], "
                         f"got {tuple(bias.shape)}")
    if target.dtype.is_floating_point:  # class probabilities
        want = (input.shape[0], weight.shape[0])
        if tuple(target.shape) != want:
            raise ValueError(f"{op}: target (class probabilities) must have shape [N, V] = "
                             f"{list(want)}, got {tuple(target.shape)}")
    elif target.dtype != torch.int64:
        raise TypeError(f"{op}: target must be int64 class indices or float class "
                        f"probabilities, got {target.dtype}")
    elif target.dim() != 1 or target.shape[0] != input.shape[0]:
        raise ValueError(f"{op}: target must have shape [N] = [{input.shape[0]}], "
                         f"got {tuple(target.shape)}")
    for name, t in named + [("target", target)]:
        if t.device != input.device:
            raise ValueError(f"{op}: {name} and input must be on the same device, "
                             f"got {t.device} and {input.device}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be >= 1, got {chunk_size}")


def _check_backward(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    target: torch.Tensor, grad_loss: torch.Tensor, label_smoothing: float,
                    chunk_size: int) -> None:
    """The backward op's checks: the forward's (reduction "none") and grad_loss ``[N]``."""
    op = f"{OP}_backward"
    _check(input, weight, bias, target, label_smoothing, "none", chunk_size, op)
    if not grad_loss.dtype.is_floating_point:
        raise TypeError(f"{op}: grad_loss must be a floating-point tensor, got {grad_loss.dtype}")
    if tuple(grad_loss.shape) != (input.shape[0],):
        raise ValueError(f"{op}: grad_loss must have shape [N] = [{input.shape[0]}], "
                         f"got {tuple(grad_loss.shape)}")
    if grad_loss.device != input.device:
        raise ValueError(f"{op}: grad_loss and input must be on the same device, "
                         f"got {grad_loss.device} and {input.device}")


def _row_kernel(input: torch.Tensor, target: torch.Tensor, ignore_index: int,
                label_smoothing: float):
    """``fn(z, rows, compute_grad) -> (loss, score, grad or empty)``: the fused cross-entropy
    of a chunk's logits ``z`` against ``target[rows]`` (class indices, or class
    probabilities rounded to the logits' dtype), per row. On the CUDA path the Triton
    launcher itself, not through the dispatcher: inside this op, under
    ``cuda_path_on_cpu()``, the dispatcher would send CPU tensors to the C++ kernel."""
    if uses_cuda_path(input):
        from . import output_grad_triton as kernels
    else:
        kernels = torch.ops.is_kernels
    if target.dtype.is_floating_point:
        soft = kernels.soft_cross_entropy_with_score
        return lambda z, rows, grad: soft(z, target[rows].to(z.dtype), label_smoothing,
                                          "none", grad)
    hard = kernels.cross_entropy_with_score
    return lambda z, rows, grad: hard(z, target[rows], ignore_index, label_smoothing, "none",
                                      grad)


def _chunks(input, weight, bias, target, ignore_index, label_smoothing, chunk_size,
            want_grad, row_weight=None):
    """One pass over the chunks of rows.

    Returns per-row losses (float32, or float64 for float64 input) and scores (float32),
    both None when ``row_weight`` is given (the backward's recomputation), and, when
    ``want_grad``, the unscaled gradients of ``Σ_i w_i·loss_i`` (``w = row_weight``, or 1)
    with respect to input, weight and bias (bias: None without one). grad_weight and
    grad_bias are accumulated in float32 (float64 for float64) and come back in that dtype.
    """
    N, V = input.shape[0], weight.shape[0]
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    row_ce = _row_kernel(input, target, ignore_index, label_smoothing)
    row_loss = score = None
    if row_weight is None:
        row_loss = input.new_empty((N,), dtype=acc)
        score = input.new_empty((N,), dtype=torch.float32)
    grad_input = grad_weight = grad_bias = None
    if want_grad:
        grad_input = torch.empty_like(input, memory_format=torch.contiguous_format)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_bias = torch.zeros((V,), dtype=acc, device=weight.device) if bias is not None \
            else None
    wt = weight.t()
    for start in range(0, N, chunk_size):
        stop = min(N, start + chunk_size)
        x = input[start:stop]
        z = torch.mm(x, wt) if bias is None else torch.addmm(bias, x, wt)
        loss_c, score_c, g = row_ce(z, slice(start, stop), want_grad)
        del z
        if row_loss is not None:
            row_loss[start:stop] = loss_c
            score[start:stop] = score_c
        if not want_grad:
            continue
        # g = ∂loss_i/∂z_i per row (p - t; 0 for ignored rows). Row weights scale x and
        # grad_input's rows, never the chunk's [rows, V] gradient.
        w = None if row_weight is None else row_weight[start:stop, None].to(g.dtype)
        gi = grad_input[start:stop]
        torch.mm(g, weight, out=gi)
        if w is not None:
            gi.mul_(w)
            x = x * w
        if g.dtype == acc:
            grad_weight.addmm_(g.t(), x)
        else:  # float32 accumulation of the half-precision products
            grad_weight += torch.mm(g.t(), x)
        if grad_bias is not None:
            if w is None:
                grad_bias += g.sum(0, dtype=acc)
            else:
                grad_bias += torch.mv(g.t(), w[:, 0]).to(acc)
        del g
    return row_loss, score, grad_input, grad_weight, grad_bias


def _check_classes(op: str, target: torch.Tensor, ignore_index: int, classes: int) -> None:
    """Raises the error naming the first class index out of range (CPU: the per-chunk kernel
    would name its op and the row within the chunk; the CUDA kernels give NaN there)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: target[{i}] = {int(target[i])} is out of range for {classes} "
                         f"classes (expected 0 <= target < V, or target == ignore_index = "
                         f"{ignore_index})")


def _empty(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((0,))


def _forward(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             target: torch.Tensor, ignore_index: int, label_smoothing: float, reduction: str,
             chunk_size: int, compute_grad: bool
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, score, grad_input, grad_weight, grad_bias). The gradients are those of the
    reduced loss ("mean"/"sum", when compute_grad) and empty otherwise."""
    _check(input, weight, bias, target, label_smoothing, reduction, chunk_size)
    if not uses_cuda_path(input) and not target.dtype.is_floating_point:
        _check_classes(OP, target, ignore_index, weight.shape[0])
    eager = compute_grad and reduction != "none"
    row_loss, score, gi, gw, gb = _chunks(input, weight, bias, target, ignore_index,
                                          label_smoothing, chunk_size, eager)
    if reduction == "none":
        return row_loss.to(input.dtype), score, _empty(input), _empty(input), _empty(input)
    total = row_loss.sum()
    count = None
    if reduction == "mean" and target.dtype.is_floating_point:
        count = total.new_full((), input.shape[0])  # probabilities: a mean over all rows
    elif reduction == "mean":
        # On the device (int() would sync with the host on CUDA).
        count = (target != ignore_index).sum().to(total.dtype)
    if count is not None:
        total = total / count  # 0 / 0: NaN when every row is ignored, as F.cross_entropy
    loss = total.to(input.dtype)
    if not eager:
        return loss, score, _empty(input), _empty(input), _empty(input)
    if count is not None:
        count = count.clamp(min=1)
        for g in (gi, gw, gb):
            if g is not None:
                g.div_(count)
    return (loss, score, gi, gw.to(weight.dtype),
            gb.to(weight.dtype) if gb is not None else _empty(input))


# One function for every device (the row kernel is chosen inside), registered as the CUDA
# kernel too, so that cuda_path_on_cpu() calls it under its mode, where a LaunchCounter sees
# every launch inside it.
_lce_op = torch.library.custom_op(f"is_kernels::{OP}", _forward, mutates_args=())
cuda_kernel(f"is_kernels::{OP}")(_forward)


@_lce_op.register_fake
def _lce_fake(input, weight, bias, target, ignore_index, label_smoothing, reduction,
              chunk_size, compute_grad):
    _check(input, weight, bias, target, label_smoothing, reduction, chunk_size)
    loss = input.new_empty((input.shape[0],) if reduction == "none" else ())
    score = input.new_empty((input.shape[0],), dtype=torch.float32)
    if not compute_grad or reduction == "none":
        return loss, score, _empty(input), _empty(input), _empty(input)
    gb = input.new_empty((weight.shape[0],)) if bias is not None else _empty(input)
    return loss, score, torch.empty_like(input, memory_format=torch.contiguous_format), \
        torch.empty_like(weight, memory_format=torch.contiguous_format), gb


def _recompute_backward(input: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor], target: torch.Tensor,
                        grad_loss: torch.Tensor, ignore_index: int, label_smoothing: float,
                        chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``Σ_i grad_loss_i · loss_i`` (reduction "none"), recomputed by chunks:
    (grad_input, grad_weight, grad_bias or empty)."""
    _check_backward(input, weight, bias, target, grad_loss, label_smoothing, chunk_size)
    if not uses_cuda_path(input) and not target.dtype.is_floating_point:
        _check_classes(f"{OP}_backward", target, ignore_index, weight.shape[0])
    _, _, gi, gw, gb = _chunks(input, weight, bias, target, ignore_index, label_smoothing,
                               chunk_size, True, row_weight=grad_loss)
    return gi, gw.to(weight.dtype), gb.to(weight.dtype) if gb is not None else _empty(input)


_lce_backward_op = torch.library.custom_op(f"is_kernels::{OP}_backward", _recompute_backward,
                                           mutates_args=())
cuda_kernel(f"is_kernels::{OP}_backward")(_recompute_backward)


@_lce_backward_op.register_fake
def _lce_backward_fake(input, weight, bias, target, grad_loss, ignore_index, label_smoothing,
                       chunk_size):
    _check_backward(input, weight, bias, target, grad_loss, label_smoothing, chunk_size)
    gb = input.new_empty((weight.shape[0],)) if bias is not None else _empty(input)
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format), gb)


def _setup_context(ctx, inputs, output):
    input, weight, bias, target, ignore_index, label_smoothing, reduction, chunk_size, \
        compute_grad = inputs
    ctx.reduction, ctx.compute_grad = reduction, compute_grad
    ctx.has_bias = bias is not None
    ctx.options = (ignore_index, label_smoothing, chunk_size)
    if reduction == "none":
        ctx.save_for_backward(input, weight, bias, target)
    else:
        ctx.save_for_backward(*output[2:])
    ctx.set_materialize_grads(False)


def _times(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """grad · grad_loss (a scalar). When nothing else will read the forward's gradient
    (output_grad.can_donate), that buffer itself, scaled in place: on the CUDA path by a
    kernel that reads the scalar on the device and returns at once when it is exactly 1 (no
    host sync); on the C++ path a CPU scalar of 1 is read on the host and nothing runs."""
    if not output_grad.can_donate(grad) or type(grad_loss) is not torch.Tensor:
        return grad * grad_loss
    if uses_cuda_path(grad):
        from . import output_grad_triton

        return output_grad_triton.scale_grad_(grad, grad_loss)
    return grad if grad_loss.item() == 1.0 else grad.mul_(grad_loss)


def _backward(ctx, grad_loss, grad_score, grad_gi, grad_gw, grad_gb):
    none = (None,) * 6
    if grad_loss is None:
        return (None, None, None) + none
    if not ctx.compute_grad:
        raise RuntimeError(f"is_kernels: backward through {OP} called with compute_grad="
                           "False; the public wrapper sets it whenever an input requires grad")
    if ctx.reduction == "none":
        input, weight, bias, target = ctx.saved_tensors
        gi, gw, gb = torch.ops.is_kernels.linear_cross_entropy_with_score_backward(
            input, weight, bias, target, grad_loss, *ctx.options)
    else:
        gi, gw, gb = (_times(g, grad_loss) for g in ctx.saved_tensors)
    return (gi, gw, gb if ctx.has_bias else None) + none


_lce_op.register_autograd(_backward, setup_context=_setup_context)


def _check_arguments(input, weight, target, bias, ignore_index, label_smoothing, chunk_size):
    for name, t in (("input", input), ("weight", weight), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{OP}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"{OP}: label_smoothing must be a float, "
                        f"got {type(label_smoothing).__name__}")
    for name, v in (("ignore_index", ignore_index), ("chunk_size", chunk_size)):
        if v is None and name == "chunk_size":
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{OP}: {name} must be an int, got {type(v).__name__}")
    if target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{OP}: target must be integer class indices or float class "
                        f"probabilities, got {target.dtype}")
    if target.dtype.is_floating_point and target.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{OP}: gradients with respect to class-probability targets are "
                         "not computed; pass target.detach()")


def linear_cross_entropy_with_score(
    input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *,
    bias: Optional[torch.Tensor] = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: str = "mean", chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(F.linear(input, weight, bias), target, …)`` and the importance score
    of every row, without materialising the ``[N, V]`` logits.

    Args:
        input: ``[N, H]`` float32/float64/float16/bfloat16 (e.g. the last hidden states),
            or ``[..., H]``: leading dims are rows (as ``F.linear`` reads them; the loss is
            that of the flattened logits ``[-1, V]`` and targets ``[-1]``).
        weight: ``[V, H]``, the ``nn.Linear`` layout (e.g. ``lm_head.weight``).
        target: ``input.shape[:-1]`` integer class indices in ``[0, V)`` or
            ``ignore_index``; or class probabilities ``input.shape[:-1] + (V,)`` of
            input's dtype (not differentiated; ``ignore_index`` unused, ``"mean"`` over
            all rows, as ``F.cross_entropy``). Such a target is itself O(N × V): the op
            adds O(chunk_size × V) to it (see ``docs/linear_cross_entropy.md``).
        bias: ``[V]`` or None.
        ignore_index, label_smoothing, reduction: as ``F.cross_entropy``.
        chunk_size: rows per chunk; None picks one (:func:`default_chunk_size`). The extra
            memory is O(chunk_size × V + V × H).

    Under autocast (CPU or CUDA) the projection runs in the autocast dtype and the loss
    comes back in float32, as for ``F.linear`` followed by ``F.cross_entropy``; class
    probabilities of any float dtype are then rounded, a chunk at a time, to the autocast
    dtype of the logits.

    Returns:
        ``(loss, score)``: ``loss`` as ``F.cross_entropy`` (differentiable w.r.t. input,
        weight and bias; ``"none"``: shape ``input.shape[:-1]``); ``score`` the detached
        float32 ``input.shape[:-1]`` ``‖softmax(z_i) − t_i‖₂``
        with ``z = input·Wᵀ + b``, 0 for ignored rows (probabilities:
        ``‖(Σ_c t_ic)·softmax(z_i) − t_i‖₂``), as :func:`cross_entropy_with_score`.
    """
    _check_arguments(input, weight, target, bias, ignore_index, label_smoothing, chunk_size)
    ignore_index = operator.index(ignore_index)
    soft = target.dtype.is_floating_point
    if not soft:
        target = target.long()
    batch_shape = tuple(input.shape[:-1])
    if input.dim() > 2:
        classes = tuple(weight.shape[:1]) if soft else ()
        if tuple(target.shape) != batch_shape + classes:
            what = "input.shape[:-1] + (V,)" if soft else "input.shape[:-1]"
            raise ValueError(f"{OP}: target must have shape {what} = "
                             f"{batch_shape + classes}, got {tuple(target.shape)}")
        input = input.reshape(-1, input.shape[-1])
        target = target.reshape((-1,) + classes)
    device = input.device.type
    autocast = torch.is_autocast_enabled(device) if device in ("cpu", "cuda") else False
    if soft and not autocast and target.dtype != input.dtype:
        raise TypeError(f"{OP}: target (class probabilities) must have the dtype of input "
                        f"({input.dtype}), got {target.dtype}")
    if autocast:
        dtype = torch.get_autocast_dtype(device)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if chunk_size is None:
        chunk_size = default_chunk_size(input.shape[0], weight.shape[0], weight.shape[-1],
                                        input.device) if input.dim() == 2 and weight.dim() == 2 \
            else 1
    compute_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias))
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        loss, score, *_ = torch.ops.is_kernels.linear_cross_entropy_with_score(
            input, weight, bias, target, ignore_index, float(label_smoothing), reduction,
            int(chunk_size), compute_grad)
    if autocast:
        loss = loss.float()
    if reduction == "none":
        loss = loss.reshape(batch_shape)
    return loss, score.detach().reshape(batch_shape)
