"""Samplers: which training examples the next mini-batch holds, and with which weights.

Every sampler follows the :class:`Sampler` protocol, so one training loop drives them all:

.. code-block:: python

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for _ in range(len(sampler)):
            idx, w = sampler.sample(score_fn)            # score_fn only used by presamplers
            loss, score = is_kernels.cross_entropy_with_score(model(X[idx]), Y[idx],
                                                              reduction="none")
            (w * loss).mean().backward()
            ...
            sampler.update(idx, score if sampler.score_type == "output_grad" else loss.detach())

Unbiased samplers satisfy ``E[(1/b)·Σ_batch w_i·x_i] = (1/N)·Σ_i x_i`` for any per-sample
values ``x`` (``b`` the number of indices drawn), so ``(w * loss).mean()`` is an unbiased
estimate of the full-data loss.
"""
from __future__ import annotations

import abc
import collections
import math
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch

from .._checks import canonical_device, int_at_least, state_int
from ..ops.cuda_path import uses_cuda_path

__all__ = ["Sampler", "Draw", "ScoreFn", "DeviceLike"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""``score_fn(idx) -> scores``: float32 ``[len(idx)]`` importance scores of the given samples."""

SCORE_TYPES = ("output_grad", "loss")
DeviceLike = Union[torch.device, str, None]


class Sampler(abc.ABC):
    """Base class of all samplers: draws ``(idx, weights)`` mini-batches of a dataset of N.

    Attributes:
        num_samples: dataset size N.
        batch_size: indices per draw b (the last draw of an epoch may hold fewer).
        device: where ``sample`` puts its tensors and ``update`` expects its inputs.
        generator: the ``torch.Generator`` (on ``device``) behind every random draw.
        epoch: the current epoch, as set by :meth:`set_epoch`.
        score_type: which per-sample value :meth:`update` wants: ``"output_grad"`` (the
            norm of the loss gradient at the network output, see
            :func:`is_kernels.output_grad_norm`) or ``"loss"`` (the per-sample loss).
        check_values: whether :meth:`update` checks index ranges and score values
            (``True`` by default on CPU; on CUDA the check costs a host sync, so it is off
            by default there, and inside ``cuda_path_on_cpu()``, and can be switched on
            for debugging).

    Subclasses implement :meth:`_draw` and :meth:`probabilities`; those that keep
    per-sample state override :meth:`_update` (called by :meth:`update` after the inputs
    were checked) and extend :meth:`state_dict`, :meth:`_check_state_dict` and
    :meth:`_load_state` (which :meth:`load_state_dict` runs, with the rollback).

    :meth:`update` accepts only the indices of a draw that has not been updated yet (the
    tensor :meth:`sample` returned, or an equal one, e.g. after a DataLoader collated it; on
    CUDA the tensor itself or one sharing its memory, since comparing values would sync).
    Updating a draw retires it and every older outstanding draw (updates come in draw
    order). Up to :attr:`MAX_PENDING` draws may be outstanding (a prefetching DataLoader);
    a draw beyond that drops the oldest (the first drop warns, and updating a dropped draw
    raises an error saying it was dropped). The outstanding draws
    (indices and weights) are part of :meth:`state_dict`, so that a loader can hand out the
    draws it had prefetched again after a resume (:class:`~is_kernels.ImportanceBatchSampler`).
    """

    score_type: str = "output_grad"
    MAX_PENDING = 64

    def __init__(self, num_samples: int, batch_size: int, *, device: DeviceLike = None,
                 generator: Optional[torch.Generator] = None) -> None:
        name = type(self).__name__
        self.num_samples = int_at_least(name, "num_samples", num_samples, 1)
        self.batch_size = int_at_least(name, "batch_size", batch_size, 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{name}: generator must be a torch.Generator or None, "
                            f"got {type(generator).__name__}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        self.device = canonical_device(name, device)
        if generator is None:
            generator = torch.Generator(device=self.device)
            # Seeded from torch's global RNG, so torch.manual_seed makes runs reproducible.
            generator.manual_seed(int(torch.randint(2 ** 62, (1,)).item()))
        elif canonical_device(name, generator.device) != self.device:
            raise ValueError(f"{name}: generator must be on the sampler's device {self.device}, "
                             f"got {generator.device}")
        self.generator = generator
        self.epoch = 0
        self.num_draws = 0  # draws made so far; the i-th draw has serial number i
        self.check_values = not uses_cuda_path(self.device)
        # The outstanding draws, oldest first, and the latest retired ones (for the message of
        # an update that comes too late).
        self._pending: collections.deque = collections.deque()
        self._retired: collections.deque = collections.deque(maxlen=self.MAX_PENDING)
        self._updating: Any = None  # the record of the draw that _update is applying
        self._loaded_epoch: Optional[int] = None  # the epoch of a state just loaded
        self._warned_drop = False
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"{name}: score_type must be one of {SCORE_TYPES}, "
                             f"got {self.score_type!r}")

    def sample(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws the next mini-batch.

        Args:
            score_fn: ``score_fn(idx) -> scores`` (float32 ``[len(idx)]``), used only by
                samplers that score presampled candidates (DLIS); the others ignore it.

        Returns:
            ``(idx, weights)``: int64 ``[b]`` dataset indices and float32 ``[b]`` loss
            weights, on :attr:`device`.
        """
        idx, weights = self._draw(score_fn)
        if len(self._pending) == self.MAX_PENDING:
            self._drop_oldest_pending()
        self._loaded_epoch = None
        self.num_draws += 1
        self._pending.append(Draw(self.num_draws, idx, weights, self._draw_record()))
        return idx, weights

    def _drop_oldest_pending(self) -> None:
        """Forgets the oldest outstanding draw (MAX_PENDING are): updating it raises, saying
        so; the first drop of a sampler warns."""
        draw = self._pending.popleft()
        self._retired.append((draw, f"dropped from the outstanding draws: more than "
                                    f"MAX_PENDING = {self.MAX_PENDING} draws were made "
                                    f"without an update"))
        if not self._warned_drop:
            self._warned_drop = True
            warnings.warn(f"{type(self).__name__}.sample: more than MAX_PENDING = "
                          f"{self.MAX_PENDING} draws are outstanding (drawn, not updated); "
                          f"the oldest, draw {draw.serial}, is dropped and can no longer be "
                          f"updated. Call update(idx, scores) after training on each draw.",
                          RuntimeWarning, stacklevel=3)

    def outstanding_draws(self) -> List["Draw"]:
        """The draws not updated yet, oldest first: ``Draw(serial, idx, weights, record)``
        (read-only)."""
        return list(self._pending)

    def _draw_record(self) -> Any:
        """What :meth:`_update` needs to know of the draw just made (it reads it as
        ``self._updating`` when that draw is updated, however many draws came after it);
        None by default."""
        return None

    @abc.abstractmethod
    def _draw(self, score_fn: Optional[ScoreFn]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sampler's draw (see :meth:`sample`)."""

    @abc.abstractmethod
    def probabilities(self) -> torch.Tensor:
        """float32 ``[N]`` on :attr:`device`: the probability of each sample in the next draw."""

    def __len__(self) -> int:
        """Steps per epoch, ``ceil(N / b)``, whatever the sampler's state."""
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` (call it before each epoch's first draw).

        Right after :meth:`load_state_dict` (before any draw), ``set_epoch`` of the loaded
        epoch does nothing: a resumed loop that calls ``set_epoch(e)`` continues epoch ``e``
        where the checkpoint left it instead of starting it again. Samplers with epochs also
        start the next one by themselves at the first draw after an epoch's last (see
        :meth:`__len__`)."""
        epoch = int_at_least(f"{type(self).__name__}.set_epoch", "epoch", epoch, 0)
        resumed = epoch == self._loaded_epoch
        self._loaded_epoch = None
        if not resumed:
            self._set_epoch(epoch)

    def _set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` (subclasses extend it, calling ``super()``)."""
        self.epoch = epoch

    def update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """Feeds back the scores (of kind :attr:`score_type`) of the samples just trained on.

        Args:
            idx: int64 ``[k]`` dataset indices, on :attr:`device`.
            scores: floating ``[k]`` finite, non-negative scores of those samples.

        Raises:
            TypeError / ValueError naming the bad argument; the sampler is then unchanged.
        """
        self._check_update(idx, scores)
        pending = _position(self._pending, idx)
        if self.check_values and (pending is None or not self._update_checks_values):
            self._check_update_values(idx, scores)
        if pending is None:
            raise ValueError(f"{type(self).__name__}.update: {self._why_not_pending(idx)}")
        self._updating = self._pending[pending].record
        self._update(idx, scores)
        updated = self._pending[pending].serial
        for k in range(pending + 1):  # this draw and the older ones
            fate = "updated" if k == pending else \
                f"retired without an update when the later draw {updated} was updated " \
                f"(updates come in draw order)"
            self._retired.append((self._pending.popleft(), fate))

    def _why_not_pending(self, idx: torch.Tensor) -> str:
        """The message for an update of indices that are not an outstanding draw."""
        retired = [entry for entry in self._retired if _position([entry[0]], idx) == 0]
        if retired:
            draw, fate = retired[-1]
            return f"idx is draw {draw.serial}, which was already {fate}; each draw is " \
                   f"updated once"
        where = (" (on CUDA: that tensor itself, not an equal copy, whose comparison would "
                 "sync)" if uses_cuda_path(idx) else "")
        return f"idx must be the indices of a draw not updated yet, as returned by " \
               f"sample(){where}; got indices of no recent draw"

    @property
    def _update_checks_values(self) -> bool:
        """Whether :meth:`_update` checks index ranges and score values itself, before it
        changes anything (then :meth:`update` skips its own check of a pending draw)."""
        return False

    def _update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """Applies checked scores; samplers without per-sample state keep this no-op."""

    def _check_update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        op = f"{type(self).__name__}.update"
        for name, t in (("idx", idx), ("scores", scores)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1:
                raise ValueError(f"{op}: {name} must be 1-D, got shape {tuple(t.shape)}")
            if t.device != self.device:
                raise ValueError(f"{op}: {name} must be on the sampler's device {self.device}, "
                                 f"got {t.device}")
        if idx.dtype != torch.int64:
            raise TypeError(f"{op}: idx must be int64, got {idx.dtype}")
        if not scores.dtype.is_floating_point:
            raise TypeError(f"{op}: scores must be a floating tensor, got {scores.dtype}")
        if scores.shape != idx.shape:
            raise ValueError(f"{op}: scores must have the length of idx ({idx.shape[0]}), "
                             f"got {scores.shape[0]}")

    def _check_update_values(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        op = f"{type(self).__name__}.update"
        if idx.numel() == 0:
            return
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= self.num_samples:
            raise ValueError(f"{op}: idx must lie in [0, {self.num_samples}), "
                             f"got values in [{lo}, {hi}]")
        scores = scores.to(torch.float32)  # as the samplers keep them
        if not bool(((scores >= 0) & (scores < math.inf)).all()):  # one pass in the common case
            if not bool(torch.isfinite(scores).all()):
                raise ValueError(f"{op}: scores must be finite in float32, got NaN or inf")
            raise ValueError(f"{op}: scores must be non-negative, got min {float(scores.min())}")

    def _config(self) -> Dict[str, Any]:
        """The configuration a state belongs to (constructor arguments beyond N and b);
        :meth:`load_state_dict` refuses a state saved under another. Subclasses extend it."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue with bit-identical draws: the generator, the
        configuration, and the outstanding draws (indices, weights)."""
        return {
            "type": type(self).__name__,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "config": self._config(),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "num_draws": self.num_draws,
            "pending": [(d.serial, d.idx.cpu().clone(), d.weights.cpu().clone(), d.record)
                        for d in self._pending],
        }

    def _state_keys(self) -> Tuple[str, ...]:
        """The keys of :meth:`state_dict` (what :meth:`load_state_dict` requires)."""
        return tuple(self.state_dict())

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; raises ``ValueError`` (sampler unchanged) on mismatch
        or an invalid entry."""
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{op}: state_dict must be a dict, got {type(state_dict).__name__}")
        self._check_state_dict(op, state_dict)
        snapshot, attributes = self.state_dict(), dict(self.__dict__)
        try:
            self._load_state(state_dict)
        except Exception as e:  # an entry the checks let through: put everything back
            self._load_state(snapshot)
            self.__dict__.update(attributes)  # what the state dict does not hold (timings)
            raise ValueError(f"{op}: state_dict could not be applied ({type(e).__name__}: "
                             f"{e}); the sampler is unchanged") from e
        self._loaded_epoch = self.epoch

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        """Raises ``ValueError`` if ``state_dict`` does not fit this sampler; changes nothing.
        Subclasses with more state extend it (calling ``super()``)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{op}: state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in self._state_keys() if k not in state_dict]
        if missing:
            raise ValueError(f"{op}: state_dict lacks {', '.join(map(repr, missing))}")
        expected = {"type": type(self).__name__, "num_samples": self.num_samples,
                    "batch_size": self.batch_size}
        for key, value in expected.items():
            if type(state_dict[key]) is not type(value) or state_dict[key] != value:
                raise ValueError(f"{op}: state_dict[{key!r}] is {state_dict[key]!r}, "
                                 f"this sampler has {value!r}")
        config = state_dict["config"]
        if not isinstance(config, dict):
            raise TypeError(f"{op}: state_dict['config'] must be a dict, "
                            f"got {type(config).__name__}")
        for key, value in self._config().items():
            if key not in config or type(config[key]) is not type(value) \
                    or config[key] != value:
                got = repr(config[key]) if key in config else "missing"
                raise ValueError(f"{op}: state_dict['config'][{key!r}] is {got}, this sampler "
                                 f"has {value!r} (a state saved under another configuration)")
        state_int(op, state_dict, "epoch", 0)
        num_draws = state_int(op, state_dict, "num_draws", 0)
        self._check_pending(op, state_dict["pending"], num_draws)

    def _check_pending(self, op: str, pending: Any, num_draws: int) -> None:
        what = "state_dict['pending']"
        if not isinstance(pending, list) or len(pending) > self.MAX_PENDING:
            raise TypeError(f"{op}: {what} must be a list of at most {self.MAX_PENDING} "
                            f"(serial, idx, weights, record) tuples")
        last = 0
        for k, entry in enumerate(pending):
            if not isinstance(entry, tuple) or len(entry) != 4:
                raise TypeError(f"{op}: {what}[{k}] must be a (serial, idx, weights, record) "
                                f"tuple")
            serial, idx, weights, _ = entry
            if isinstance(serial, bool) or not isinstance(serial, int) \
                    or not last < serial <= num_draws:
                raise ValueError(f"{op}: {what}[{k}]'s serial must be an int in "
                                 f"({last}, num_draws = {num_draws}], got {serial!r}")
            last = serial
            if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1:
                raise TypeError(f"{op}: {what}[{k}]'s idx must be a 1-D int64 tensor")
            if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < self.num_samples):
                raise ValueError(f"{op}: {what}[{k}]'s idx must lie in [0, {self.num_samples})")
            if not isinstance(weights, torch.Tensor) or weights.dtype != torch.float32 \
                    or weights.shape != idx.shape:
                raise TypeError(f"{op}: {what}[{k}]'s weights must be a float32 tensor of the "
                                f"shape of its idx")

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        """Applies a checked ``state_dict`` (subclasses extend it, calling ``super()``)."""
        self.generator.set_state(state_dict["generator"])
        self.epoch = state_dict["epoch"]
        self.num_draws = state_dict["num_draws"]
        self._pending = collections.deque(
            Draw(serial, idx.to(self.device, copy=True), weights.to(self.device, copy=True),
                 record)
            for serial, idx, weights, record in state_dict["pending"])
        self._retired.clear()
        self._loaded_epoch = None


class Draw(NamedTuple):
    """A draw of :meth:`Sampler.sample`: its serial number (the sampler's ``num_draws``
    right after it), indices, weights and the sampler's record of how it drew them."""

    serial: int
    idx: torch.Tensor
    weights: torch.Tensor
    record: Any


def _position(draws, idx: torch.Tensor) -> Optional[int]:
    """The position of the draw with indices ``idx`` among ``draws`` (None: not there)."""
    for k, draw in enumerate(draws):
        if draw.idx is idx or (draw.idx.shape == idx.shape and (
                # on the CUDA path: the same memory (comparing the values would sync)
                (draw.idx.data_ptr(), draw.idx.stride()) == (idx.data_ptr(), idx.stride())
                if uses_cuda_path(draw.idx) else torch.equal(draw.idx, idx))):
            return k
    return None
