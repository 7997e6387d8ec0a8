"""TorchRL's prioritized replay on is_kernels trees: ``enable()``.

TorchRL's ``PrioritizedSampler`` (and with it ``PrioritizedSliceSampler``,
``PrioritizedReplayBuffer`` and ``TensorDictPrioritizedReplayBuffer``) builds its sum and min
trees from the classes ``SumSegmentTreeFp32``, ``SumSegmentTreeFp64``, ``MinSegmentTreeFp32``,
``MinSegmentTreeFp64`` and their ``Cuda*`` twins, looked up in
``torchrl.data.replay_buffers.samplers.prioritized`` when a sampler is created. They come from
TorchRL's compiled extension, which loads only with the torch it was built for. :func:`enable`
puts the classes of this module there instead: the same Python interface, on
:class:`~is_kernels.SumTree` and :class:`~is_kernels.MinTree` (C++ on CPU, Triton on CUDA),
so TorchRL's prioritized replay runs with whatever torch is_kernels was built against.

The interface is TorchRL's (``torchrl/csrc/segment_tree.h``): ``Tree(size)`` (CPU) or
``Tree(size, device)`` (CUDA); ``tree[index]`` and ``tree[index] = value`` for an int, a numpy
array or a tensor of indices (a scalar value is broadcast; the last of duplicated indices
wins); ``query(start, end)``; ``scan_lower_bound(mass)`` on the sum trees; ``len``, ``size``,
``capacity``, ``identity_element``, ``update``, ``at``; copy and pickle. An int or float in
gives a Python number out, a numpy array a numpy array, a tensor a tensor on the tree's device.

Differences, all within TorchRL's own use of the trees:

- sums are accumulated in float64 (TorchRL: in the leaf dtype), and are exact to float64
  rounding whatever the history of updates;
- ``scan_lower_bound(m)`` returns the leaf ``i`` of priority > 0 with
  ``prefix(i - 1) <= m < prefix(i)`` and, for ``m >= total``, the last leaf of priority > 0
  (TorchRL: the first ``i`` with ``prefix(i) >= m``, possibly a leaf of priority 0, and
  ``size`` for ``m > total``; its sampler then clamps the index and steps back over leaves of
  priority 0, which gives the same leaf);
- a priority must be finite and >= 0 (a min tree value: not NaN); an invalid one raises
  (CPU) or is recorded on the device (CUDA, no host sync; ``raise_errors()`` raises it);
- as in TorchRL, the tree has ``capacity`` leaves (the smallest power of two above
  ``size``): TorchRL's sampler writes and draws the leaves ``[size, capacity)`` when its
  storage is larger than its ``max_capacity``; an index beyond ``capacity`` raises
  ``IndexError`` (CPU) where TorchRL's tree would write out of bounds.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .._checks import int_at_least
from ..ops.sum_tree import MinTree, SumTree

__all__ = ["enable", "disable", "is_enabled", "SumSegmentTreeFp32", "SumSegmentTreeFp64",
           "MinSegmentTreeFp32", "MinSegmentTreeFp64", "CudaSumSegmentTreeFp32",
           "CudaSumSegmentTreeFp64", "CudaMinSegmentTreeFp32", "CudaMinSegmentTreeFp64"]

Index = Union[int, np.ndarray, torch.Tensor]
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


class _SegmentTree:
    """TorchRL's segment tree interface on a :class:`SumTree` or :class:`MinTree`."""

    _is_min: bool
    _dtype: torch.dtype

    def __init__(self, size: int, device: Optional[torch.device | str] = None) -> None:
        self._size = int_at_least(type(self).__name__, "size", size, 1)
        # TorchRL's tree has `capacity` leaves, and its sampler writes and draws the leaves
        # [size, capacity) too (a storage larger than the sampler's max_capacity does).
        tree_class = MinTree if self._is_min else SumTree
        self._tree = tree_class(self.capacity, device=device, dtype=self._dtype)
        if self._is_min:  # TorchRL's min tree starts at the dtype's max
            self._tree.build(torch.full((self.capacity,), self.identity_element,
                                        dtype=self._dtype, device=self._tree.device))
        # CPU: the inner nodes as a numpy view (the root read without a tensor op), and the
        # fast paths of TorchRL's own calls below.
        self._cpu = self._tree.device.type == "cpu"
        self._inner_np = self._tree.inner_nodes.numpy() if self._cpu else None

    # ---- TorchRL's attributes ----

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """The smallest power of two above ``size``: the number of leaves."""
        return 1 << self._size.bit_length()

    @property
    def identity_element(self) -> float:
        return torch.finfo(self._dtype).max if self._is_min else 0.0

    # ---- conversions ----

    def _indices(self, index: Index) -> Tuple[torch.Tensor, str]:
        """``index`` as an int64 tensor on the tree's device, and the kind it came as."""
        if isinstance(index, torch.Tensor):
            if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"{type(self).__name__}: index must be integer, "
                                f"got {index.dtype}")
            return index.to(device=self._tree.device, dtype=torch.int64), "tensor"
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            return torch.tensor(int(index), device=self._tree.device), "scalar"
        arr = np.asarray(index)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{type(self).__name__}: index must be integer, got {arr.dtype}")
        return torch.from_numpy(arr.astype(np.int64)).to(self._tree.device), "numpy"

    def _check_range(self, idx: torch.Tensor) -> None:
        if not (idx.is_cpu and idx.numel()):
            return
        cap = self.capacity
        lo, hi = torch.aminmax(idx)
        if int(lo) < 0 or int(hi) >= cap:
            bad = idx[(idx < 0) | (idx >= cap)].reshape(-1)[0]
            raise IndexError(f"{type(self).__name__}: index {int(bad)} is out of range for "
                             f"{cap} leaves")

    @staticmethod
    def _out(t: torch.Tensor, kind: str):
        if kind == "scalar":
            return t.item()
        if kind == "numpy":
            return t.cpu().numpy()
        return t

    # ---- reads and writes ----

    def __getitem__(self, index: Index):
        if (self._cpu and type(index) is torch.Tensor and index.dtype == torch.int64
                and index.dim() == 1 and index.is_cpu):
            try:  # TorchRL's call: one op, which raises IndexError out of [0, capacity)
                return self._tree.values.index_select(0, index)
            except IndexError:
                pass  # the checks below raise the error
        idx, kind = self._indices(index)
        self._check_range(idx)
        return self._out(self._tree.values.take(idx), kind)

    at = __getitem__

    def __setitem__(self, index: Index, value: Any) -> None:
        if (self._cpu and type(index) is torch.Tensor and index.dtype == torch.int64
                and index.dim() == 1 and index.is_cpu and type(value) is torch.Tensor
                and value.dtype == self._dtype and value.is_cpu and not value.requires_grad
                and (value.dim() == 0 or value.shape == index.shape)):
            # TorchRL's call: straight to the tree (the C++ kernel checks everything)
            self._tree.update(index, value.expand(index.shape) if value.dim() == 0 else value)
            return
        idx, _ = self._indices(index)
        idx = idx.reshape(-1)
        if isinstance(value, torch.Tensor):
            val = value.detach().to(device=self._tree.device, dtype=self._dtype)
        else:
            val = torch.as_tensor(np.asarray(value, dtype=np.float64),
                                  device=self._tree.device).to(self._dtype)
        if val.numel() == 1:
            val = val.reshape(1).expand(idx.numel())
        elif val.numel() != idx.numel():
            raise ValueError(f"{type(self).__name__}: {val.numel()} values for "
                             f"{idx.numel()} indices")
        if idx.numel():
            self._tree.update(idx, val.reshape(-1).contiguous())

    update = __setitem__

    def query(self, start: Index, end: Index):
        """The sum (or minimum) of the leaves ``[start, end)`` as TorchRL's tree: a range
        that covers ``[0, size)`` covers all ``capacity`` leaves, others are intersected with
        ``[0, capacity)``. A Python float for ints, else the tree dtype in the input's kind."""
        if (isinstance(start, numbers.Integral) and isinstance(end, numbers.Integral)
                and start <= 0 and end >= self._size):  # the whole tree: its root
            if self._cpu:
                return float(self._inner_np[1].astype(_NUMPY[self._dtype]))
            root = self._tree.min() if self._is_min else self._tree.total()
            return root.to(self._dtype).item()
        s, kind = self._indices(start)
        e, _ = self._indices(end)
        cap = self.capacity
        e = torch.where((s <= 0) & (e >= self._size), cap, e.clamp(0, cap))
        s = s.clamp(0, cap)
        e = torch.maximum(e, s)
        return self._out(self._tree.query(s, e).to(self._dtype), kind)

    def raise_errors(self) -> None:
        """Raises the first invalid input recorded on the device (CUDA trees; a sync)."""
        self._tree.raise_errors()

    def __getstate__(self) -> Dict[str, Any]:
        return {"size": self._size, "values": self._tree.values.cpu().clone(),
                "device": str(self._tree.device)}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        _SegmentTree.__init__(self, state["size"], device=state["device"])
        self._tree.build(state["values"].to(self._tree.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, device={self._tree.device})"


class _SumSegmentTree(_SegmentTree):
    _is_min = False

    def scan_lower_bound(self, mass: Union[float, np.ndarray, torch.Tensor]):
        """For every mass ``m``, the leaf of priority > 0 whose prefix-sum interval holds it
        (the last one for ``m >= total``); an int for a number, else in the input's kind."""
        if isinstance(mass, torch.Tensor):
            m, kind = mass.to(device=self._tree.device, dtype=torch.float64), "tensor"
        elif isinstance(mass, numbers.Real):
            m, kind = torch.tensor(float(mass), dtype=torch.float64), "scalar"
        else:
            m = torch.from_numpy(np.asarray(mass, dtype=np.float64))
            kind = "numpy"
        return self._out(self._tree.scan_lower_bound(m.to(self._tree.device)), kind)


class _MinSegmentTree(_SegmentTree):
    _is_min = True


class _CudaTree:
    """The ``Cuda*`` twins take ``(size, device)`` and tell their ``device``."""

    def __init__(self, size: int, device: torch.device | str = "cuda") -> None:
        super().__init__(size, device=device)  # type: ignore[call-arg]

    @property
    def device(self) -> torch.device:
        return self._tree.device  # type: ignore[attr-defined]


class SumSegmentTreeFp32(_SumSegmentTree):
    _dtype = torch.float32


class SumSegmentTreeFp64(_SumSegmentTree):
    _dtype = torch.float64


class MinSegmentTreeFp32(_MinSegmentTree):
    _dtype = torch.float32


class MinSegmentTreeFp64(_MinSegmentTree):
    _dtype = torch.float64


class CudaSumSegmentTreeFp32(_CudaTree, SumSegmentTreeFp32):
    pass


class CudaSumSegmentTreeFp64(_CudaTree, SumSegmentTreeFp64):
    pass


class CudaMinSegmentTreeFp32(_CudaTree, MinSegmentTreeFp32):
    pass


class CudaMinSegmentTreeFp64(_CudaTree, MinSegmentTreeFp64):
    pass


_TREES = {cls.__name__: cls for cls in (
    SumSegmentTreeFp32, SumSegmentTreeFp64, MinSegmentTreeFp32, MinSegmentTreeFp64,
    CudaSumSegmentTreeFp32, CudaSumSegmentTreeFp64, CudaMinSegmentTreeFp32,
    CudaMinSegmentTreeFp64)}
_SAVED: Dict[Tuple[str, str], Any] = {}  # (module, name) -> what enable() replaced


def _modules() -> list:
    """The TorchRL modules that hold the tree classes (the sampler looks them up in the
    first; the second re-exports them)."""
    try:
        import torchrl.data.replay_buffers.samplers as samplers
    except ImportError as e:
        raise ImportError("is_kernels.integrations.torchrl needs torchrl "
                          "(pip install 'is_kernels[torchrl]')") from e
    prioritized = getattr(samplers, "prioritized", None)
    return [m for m in (prioritized, samplers) if m is not None]


def enable() -> None:
    """Makes TorchRL's prioritized samplers and buffers created from now on use is_kernels
    trees (CPU and CUDA). Idempotent; :func:`disable` undoes it."""
    for module in _modules():
        for name, cls in _TREES.items():
            key = (module.__name__, name)
            if key not in _SAVED:
                _SAVED[key] = getattr(module, name, None)
            setattr(module, name, cls)


def disable() -> None:
    """Puts back the tree classes that :func:`enable` replaced."""
    for module in _modules():
        for name in _TREES:
            key = (module.__name__, name)
            if key in _SAVED:
                setattr(module, name, _SAVED.pop(key))


def is_enabled() -> bool:
    """Whether TorchRL's sampler module currently holds this module's trees."""
    return all(getattr(_modules()[0], name, None) is cls for name, cls in _TREES.items())
