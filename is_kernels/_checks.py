"""Argument and state checks shared across is_kernels.

- Arguments: :func:`int_at_least`, :func:`real`, :func:`fraction`, :func:`flag`,
  :func:`canonical_device` (TypeError / ValueError naming the argument).
- ``state_dict`` entries: :func:`state_int`, :func:`state_float`, :func:`state_indices`.
- In-place ops: :func:`check_no_overlap` (no written tensor shares memory with another or
  with an input read while writing).
- Weights of the weighted samplers (sum tree, alias table): on CPU the C++ kernels check the
  values themselves; these helpers serve the Python side: dtype/shape/device checks, and the
  value checks of the CUDA path, where a device-side flag (:class:`ErrorFlag`) is computed
  without a host sync and read back only to raise.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Dict, Optional, Tuple

import torch

WEIGHT_DTYPES = (torch.float32, torch.float64)
# Alias table entries and sum tree capacities fit in int32 / a 2^31-slot heap.
MAX_SIZE = 2**31 - 1


def check_weight_dtype(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}")


def max_leaf(dtype: torch.dtype, capacity: int) -> Optional[float]:
    """The largest leaf of a sum tree whose float64 sums cannot overflow: float64 max /
    (2 capacity) for float64 leaves; None (any finite value) for float32 ones."""
    if dtype != torch.float64:
        return None
    return torch.finfo(torch.float64).max / (2.0 * capacity)


def _valid_entries(w: torch.Tensor, limit: Optional[float]) -> torch.Tensor:
    ok = torch.isfinite(w) & (w >= 0)
    return ok if limit is None else ok & (w <= limit)


def weights_valid(w: torch.Tensor, limit: Optional[float] = None) -> torch.Tensor:
    """0-dim bool tensor (on w's device, no sync): every entry finite, >= 0 (and <= limit)."""
    return _valid_entries(w, limit).all()


def raise_invalid_weights(op: str, name: str, w: torch.Tensor,
                          limit: Optional[float] = None) -> None:
    """Raises the error naming the first invalid entry of w (call only when there is one)."""
    i = int((~_valid_entries(w, limit)).nonzero()[0, 0])
    value = w[i].item()
    if limit is not None and math.isfinite(value) and value > limit:
        raise RuntimeError(f"{op}: {name}[{i}] = {value} is too large: at most {limit} "
                           "(float64 max / (2 * capacity)), so that the sums cannot overflow")
    raise RuntimeError(f"{op}: {name}[{i}] = {value} is not a valid weight "
                       "(weights must be finite and >= 0)")


def can_sync(t: torch.Tensor) -> bool:
    """Whether reading a device flag back is allowed (not inside CUDA graph capture)."""
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _span(t: torch.Tensor) -> Optional[Tuple[torch.device, int, int]]:
    """(device, first byte, end byte) of the bytes spanned by t's elements, from the first
    element to the last; None if t is empty."""
    if t.numel() == 0:
        return None
    start = t.data_ptr()
    if t.is_contiguous():
        return t.device, start, start + t.numel() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.device, start, start + (last + 1) * t.element_size()


def _overlap(a: Optional[Tuple[torch.device, int, int]],
             b: Optional[Tuple[torch.device, int, int]]) -> bool:
    return a is not None and b is not None and a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def check_no_overlap(op: str, written: Dict[str, torch.Tensor],
                     read: Dict[str, torch.Tensor]) -> None:
    """Raises (RuntimeError naming both arguments) unless the tensors an op writes share no
    memory with each other or with the inputs it reads while writing (as csrc/overlap.h does
    for the C++ kernels). Runs on every call of the CUDA path: each span is computed once."""
    w_spans = [(name, _span(t)) for name, t in written.items()]
    r_spans = [(name, _span(t)) for name, t in read.items()]
    for i, (w, ws) in enumerate(w_spans):
        for o, os_ in w_spans[i + 1:]:
            if _overlap(ws, os_):
                raise RuntimeError(f"{op}: {w} and {o} share memory; each must be a tensor of "
                                   "its own")
        for r, rs in r_spans:
            if _overlap(ws, rs):
                raise RuntimeError(f"{op}: {r} shares memory with {w}, which the op writes; "
                                   f"pass a copy ({r}.clone())")


class ErrorFlag:
    """A sticky error code on a device (int32 0-dim, 0: no error) for checks that would
    otherwise need a host sync: :meth:`record` keeps the first nonzero code without syncing;
    :meth:`raise_errors` reads it back (a sync on CUDA), clears it and raises its message.

    Args:
        owner: the name the errors start with (e.g. ``"SumTree"``).
        messages: the message of every nonzero code.
        device: where the code lives.
    """

    def __init__(self, owner: str, messages: Dict[int, str], device: torch.device) -> None:
        self.owner = owner
        self.messages = messages
        self.code = torch.zeros((), dtype=torch.int32, device=device)

    def record(self, code: torch.Tensor) -> None:
        """Records ``code`` (an int 0-dim tensor on the device, 0 for no error) unless an
        error is already recorded. No host sync; allowed during CUDA graph capture."""
        self.code.copy_(torch.where(self.code == 0, code.to(torch.int32), self.code))

    def raise_errors(self) -> None:
        """Raises (and clears) the recorded error, if any. A host sync on CUDA."""
        code = int(self.code)
        if code != 0:
            self.code.zero_()
            raise RuntimeError(f"{self.owner}: {self.messages[code]}")


def int_at_least(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a TypeError / ValueError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def real(owner: str, name: str, value: Any) -> float:
    """``value`` (a real number or a 0-dim real tensor) as a float, or a TypeError naming
    ``name`` (a bool or not a real number)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and \
            not value.dtype.is_complex and value.dtype != torch.bool:
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}")
    return float(value)


def canonical_device(owner: str, device: Any) -> torch.device:
    """``device`` as torch resolves it (``"cuda"`` -> ``cuda:<current>`` etc., so device
    comparisons with tensors are exact), or an error naming ``device`` if torch cannot place
    a tensor there."""
    try:
        return torch.empty(0, device=device).device
    except TypeError:
        raise TypeError(f"{owner}: device must be a torch.device, a string or None, "
                        f"got {type(device).__name__}") from None
    except (RuntimeError, AssertionError) as e:  # unknown, or not built in / present
        raise ValueError(f"{owner}: device {device!r} is not available ({e})") from None


def flag(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a TypeError naming ``name`` (a truthy string or an int
    would otherwise pass as a flag)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__}")
    return value


def state_int(op: str, state_dict: Dict[str, Any], key: str, lo: int,
              hi: Optional[int] = None) -> int:
    """``state_dict[key]`` if it is an int in ``[lo, hi]``, else a ValueError naming it."""
    value = state_dict[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or \
            (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{op}: state_dict[{key!r}] must be an int {bounds}, got {value!r}")
    return value


def state_float(op: str, state_dict: Dict[str, Any], key: str, lo: float,
                finite: bool = True) -> float:
    """``state_dict[key]`` if it is a number >= ``lo`` (finite, or also +inf), else a
    ValueError naming it."""
    value = state_dict[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (lo <= value < math.inf if finite else lo <= value):
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{op}: state_dict[{key!r}] must be {kind} >= {lo}, got {value!r}")
    return float(value)


def state_indices(op: str, state_dict: Dict[str, Any], key: str, n: int) -> torch.Tensor:
    """``state_dict[key]`` if it is a 1-D int64 tensor of distinct indices in ``[0, n)``."""
    value = state_dict[key]
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.int64 \
            or value.numel() > n or (value.numel() and not (
                0 <= int(value.min()) and int(value.max()) < n
                and value.unique().numel() == value.numel())):
        raise ValueError(f"{op}: state_dict[{key!r}] must be a 1-D int64 tensor of distinct "
                         f"indices in [0, {n})")
    return value


def fraction(owner: str, name: str, value: float) -> float:
    """``value`` as a float in ``[0, 1)``, or an error naming ``name``."""
    value = real(owner, name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value}")
    return value
