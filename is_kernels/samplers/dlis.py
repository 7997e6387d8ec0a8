"""DLIS (Katharopoulos & Fleuret 2018): presample B > b, score, select b, switch on by τ.

Algorithm 1 as the reference code runs it (docs/algorithms.md, "DLIS"):

- IS off: b uniform indices (with replacement), weights 1; τ is updated from the scores of
  the training forward pass (:meth:`PresampleImportanceSampler.update`);
- IS on: B uniform candidates are scored by ``score_fn`` (a no-grad forward), b of them are
  drawn with replacement with probabilities ``g = s/Σs`` and weighted ``1/(B·g_i)``; τ is
  updated from the B presample scores;
- ``τ ← a·τ + (1-a)·τ_new`` with ``τ_new = RMS(s)/mean(s)`` (:func:`equivalent_batch_increment`),
  τ starts at 0; IS is on while ``τ > τ_th``, checked every step.

The on/off decision is a host branch, so each step reads τ back (one host sync per step;
the online sampler, :class:`~is_kernels.OnlineImportanceSampler`, needs none).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .._checks import int_at_least, real, state_float, state_int
from .base import DeviceLike, Sampler, ScoreFn

__all__ = ["PresampleImportanceSampler", "equivalent_batch_increment", "tau_threshold",
           "measure_step_costs"]


def _increment(scores: torch.Tensor) -> torch.Tensor:
    """τ of ``scores`` as a float64 0-dim tensor, NaN if a score is not finite and >= 0
    (no host sync)."""
    s = scores.detach().double()
    total = s.sum()
    tau = torch.where(total > 0, torch.sqrt(s.numel() * (s * s).sum()) / total, 1.0)
    return torch.where(((s >= 0) & (s < math.inf)).all(), tau, math.nan)


def equivalent_batch_increment(scores: torch.Tensor) -> torch.Tensor:
    """τ of one score vector: ``sqrt(n·Σs²)/Σs = RMS(s)/mean(s)`` (1 if all scores are 0).

    Equals ``(1 - ||g - u||²/||g||²)^(-1/2)`` with ``g = s/Σs`` and ``u = 1/n``: an importance
    sampled batch of b has the gradient variance of a uniform batch of ``τ·b``.
    Returns a 0-dim float32 tensor on the scores' device. Scores must be finite and >= 0,
    else ``ValueError`` (the check reads τ back: a host sync on CUDA).
    """
    op = "equivalent_batch_increment"
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{op}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"{op}: scores must be a non-empty 1-D tensor, "
                         f"got shape {tuple(scores.shape)}")
    tau = _increment(scores)
    if math.isnan(tau.item()):
        i = int((~((scores >= 0) & (scores < math.inf))).nonzero()[0, 0])
        raise ValueError(f"{op}: scores[{i}] = {scores[i].item()} is not finite and >= 0")
    return tau.float()


def tau_threshold(batch_size: int, presample_size: int, forward_time: float = 1.0,
                  backward_time: float = 2.0) -> float:
    """``τ_th = (B·t_f + b·(t_f + t_b)) / (b·(t_f + t_b))``: IS pays off once τ exceeds it.

    ``forward_time`` / ``backward_time`` are per-sample costs t_f, t_b (only their ratio
    matters); the default ratio t_b = 2·t_f gives ``(B + 3b)/(3b)``. Measure them on your
    model with :func:`measure_step_costs`.
    """
    op = "tau_threshold"
    batch_size = int_at_least(op, "batch_size", batch_size, 1)
    presample_size = int_at_least(op, "presample_size", presample_size, 1)
    if presample_size < batch_size:
        raise ValueError(f"{op}: need 0 < batch_size <= presample_size, got "
                         f"batch_size={batch_size}, presample_size={presample_size}")
    forward_time = real(op, "forward_time", forward_time)
    backward_time = real(op, "backward_time", backward_time)
    if not (0 < forward_time < math.inf and 0 <= backward_time < math.inf):
        raise ValueError(f"{op}: forward_time must be finite and > 0, backward_time finite "
                         f"and >= 0, got {forward_time}, {backward_time}")
    step = batch_size * (forward_time + backward_time)
    return (presample_size * forward_time + step) / step


def measure_step_costs(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                       loss_fn: Optional[Callable[..., torch.Tensor]] = None,
                       repeats: int = 5,
                       clock: Callable[[], float] = time.perf_counter) -> Tuple[float, float]:
    """Measures per-sample forward and backward times ``(t_f, t_b)`` in seconds on a batch.

    t_f: a no-grad forward in eval mode (how DLIS scores its presample); t_b: a training
    forward + backward minus t_f. Median over ``repeats`` after one warm-up, read from
    ``clock`` (e.g. ``time.thread_time`` for one CPU thread on a machine shared with other
    processes). The model's gradients are left cleared and its train/eval mode restored.
    """
    op = "measure_step_costs"
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{op}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{op}: inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"{op}: inputs must hold at least one sample (a batch [n, ...], "
                         f"n >= 1), got shape {tuple(inputs.shape)}")
    repeats = int_at_least(op, "repeats", repeats, 1)
    if not callable(clock):
        raise TypeError(f"{op}: clock must be callable, got {type(clock).__name__}")
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    n = inputs.shape[0]
    sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    was_training = model.training

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync()
            t0 = clock()
            fn()
            sync()
            times.append(clock() - t0)
        return sorted(times)[len(times) // 2]

    def forward():
        with torch.no_grad():
            model(inputs)

    def train_step():
        loss_fn(model(inputs), targets).backward()

    try:
        model.eval()
        t_f = timed(forward)
        model.train()
        t_fb = timed(train_step)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return t_f / n, max(t_fb - t_f, 0.0) / n


MAX_CANDIDATES = 2**24  # torch.multinomial's limit on categories
_default_threshold = tau_threshold  # the argument of the same name shadows it below


class PresampleImportanceSampler(Sampler):
    """DLIS: importance sampling by presampling, switched on when it pays (τ > τ_th).

    Args:
        num_samples: dataset size N.
        batch_size: b, indices per training step.
        presample: B/b; ``B = round(presample·b)`` candidates (at most 2**24) are scored
            when IS is on.
        tau_threshold: τ_th; default ``tau_threshold(b, B)`` (t_b = 2·t_f). Pass a measured
            one: ``tau_threshold(b, B, *measure_step_costs(model, x, y))``.
        tau_smoothing: ``a`` of the τ moving average.
        device, generator: where draws live; the generator of every draw.

    :meth:`sample` needs ``score_fn(idx) -> scores`` (float ``[len(idx)]``, e.g. a no-grad
    eval forward through :func:`is_kernels.output_grad_norm`) once IS is on.

    Attributes:
        tau: the smoothed equivalent batch increment (float).
        is_on: whether the next draw importance-samples (``tau > tau_threshold``).
    """

    score_type = "output_grad"

    def __init__(self, num_samples: int, batch_size: int, *, presample: float = 3.0,
                 tau_threshold: Optional[float] = None, tau_smoothing: float = 0.9,
                 device: DeviceLike = None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(num_samples, batch_size, device=device, generator=generator)
        name = type(self).__name__
        presample, tau_smoothing = real(name, "presample", presample), \
            real(name, "tau_smoothing", tau_smoothing)
        if not 1.0 <= presample < math.inf:
            raise ValueError(f"{name}: presample must be a finite number >= 1, got {presample}")
        if not 0.0 <= tau_smoothing < 1.0:
            raise ValueError(f"{name}: tau_smoothing must be in [0, 1), got {tau_smoothing}")
        self.presample_size = max(self.batch_size, round(presample * self.batch_size))
        if self.presample_size > MAX_CANDIDATES:
            raise ValueError(f"{name}: presample·batch_size = {self.presample_size} must be at "
                             f"most 2**24 (torch.multinomial's limit on the candidates it "
                             f"selects from)")
        if tau_threshold is None:
            tau_threshold = _default_threshold(self.batch_size, self.presample_size)
        if not real(name, "tau_threshold", tau_threshold) >= 1.0:
            raise ValueError(f"{name}: tau_threshold must be >= 1 (τ >= 1 always), "
                             f"got {tau_threshold}")
        self.tau_threshold = float(tau_threshold)
        self.tau_smoothing = float(tau_smoothing)
        self.tau = 0.0
        self.steps = 0
        self.steps_on = 0
        self._selection: Optional[torch.Tensor] = None  # g over the last presample
        self._candidates: Optional[torch.Tensor] = None
        self._drew_uniform = True  # how the latest draw was made

    @property
    def is_on(self) -> bool:
        return self.tau > self.tau_threshold

    @property
    def is_on_fraction(self) -> float:
        """Fraction of the draws so far that importance-sampled."""
        return self.steps_on / self.steps if self.steps else 0.0

    def _update_tau(self, op: str, scores: torch.Tensor) -> None:
        """Moves τ towards the τ of ``scores``; raises ``ValueError`` (τ unchanged) if a score
        is not finite and >= 0 (scores that ``update`` did not check, ``check_values`` off)."""
        tau_new = float(_increment(scores))
        if math.isnan(tau_new):
            raise ValueError(f"{type(self).__name__}.{op}: scores must be finite and >= 0")
        self.tau = self.tau_smoothing * self.tau + (1.0 - self.tau_smoothing) * tau_new

    def _draw(self, score_fn: Optional[ScoreFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draws b indices: uniform while IS is off, presample-score-select while on. A
        missing ``score_fn`` or bad scores raise ``ValueError`` with the sampler unchanged
        (its generator included)."""
        b, dev = self.batch_size, self.device
        uniform = not self.is_on
        if uniform:
            idx = torch.randint(self.num_samples, (b,), device=dev, generator=self.generator)
            weights = torch.ones(b, dtype=torch.float32, device=dev)
        else:
            if score_fn is None:
                raise ValueError(f"{type(self).__name__}.sample: score_fn is required while "
                                 f"importance sampling is on (tau={self.tau:.3f} > "
                                 f"tau_threshold={self.tau_threshold:.3f})")
            generator_state = self.generator.get_state()
            try:
                idx, weights = self._presample_draw(score_fn)
            except BaseException:
                self.generator.set_state(generator_state)
                raise
            self.steps_on += 1
        self.steps += 1
        self._drew_uniform = uniform
        return idx, weights

    def _draw_record(self) -> bool:
        """Whether the draw was uniform: τ learns from the training scores of uniform draws
        only, also when they come back after later draws (a prefetching DataLoader)."""
        return self._drew_uniform

    def _presample_draw(self, score_fn: ScoreFn) -> Tuple[torch.Tensor, torch.Tensor]:
        """B uniform candidates, scored; b of them drawn with probabilities g = s/Σs and
        weighted 1/(B·g). Updates τ from the B scores (after they passed the checks)."""
        b, big_b = self.batch_size, self.presample_size
        cand = torch.randint(self.num_samples, (big_b,), device=self.device,
                             generator=self.generator)
        scores = score_fn(cand)
        self._check_scores("score_fn(idx)", cand, scores)
        scores = scores.detach().double()
        total = scores.sum()
        g = torch.where(total > 0, scores / total, torch.full_like(scores, 1.0 / big_b))
        sel = torch.multinomial(g, b, replacement=True, generator=self.generator)
        self._candidates, self._selection = cand, g.float()
        self._update_tau("sample", scores)
        return cand[sel], (1.0 / (big_b * g[sel])).float()

    def _check_scores(self, what: str, idx: torch.Tensor, scores: torch.Tensor) -> None:
        if not isinstance(scores, torch.Tensor) or scores.shape != idx.shape:
            raise ValueError(f"{type(self).__name__}.sample: {what} must return a tensor of "
                             f"shape {tuple(idx.shape)}, got "
                             f"{getattr(scores, 'shape', type(scores).__name__)}")
        if scores.device != self.device:
            raise ValueError(f"{type(self).__name__}.sample: {what} must return scores on the "
                             f"sampler's device {self.device}, got {scores.device}")
        if not scores.dtype.is_floating_point:
            raise ValueError(f"{type(self).__name__}.sample: {what} must return floating "
                             f"scores, got {scores.dtype}")
        if not bool(torch.isfinite(scores).all() & (scores >= 0).all()
                    & torch.isfinite(scores.double().sum())):
            raise ValueError(f"{type(self).__name__}.sample: {what} returned NaN, inf or "
                             f"negative scores (or scores whose float64 sum overflows)")

    def _update(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """The training scores of a uniform draw update τ; those of an importance-sampled
        draw do not (its presample scores already did)."""
        if self._updating:
            self._update_tau("update", scores)

    def probabilities(self) -> torch.Tensor:
        """Uniform while IS is off; while on, the selection distribution over the last
        presample (``g`` summed per dataset index): the next draw re-presamples, so this is
        the distribution of the *last* selection given its candidates."""
        if self._drew_uniform or self._selection is None:
            return torch.full((self.num_samples,), 1.0 / self.num_samples, device=self.device)
        p = torch.zeros(self.num_samples, device=self.device)
        return p.index_add_(0, self._candidates, self._selection)

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "presample_size": self.presample_size,
                "tau_smoothing": self.tau_smoothing}

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd.update(tau=self.tau, steps=self.steps, steps_on=self.steps_on,
                  tau_threshold=self.tau_threshold, drew_uniform=self._drew_uniform)
        return sd

    def _check_state_dict(self, op: str, state_dict: Dict[str, Any]) -> None:
        super()._check_state_dict(op, state_dict)
        state_float(op, state_dict, "tau", 0.0)
        # inf: importance sampling stays off
        state_float(op, state_dict, "tau_threshold", 1.0, finite=False)
        steps = state_int(op, state_dict, "steps", 0)
        state_int(op, state_dict, "steps_on", 0, steps)
        if not isinstance(state_dict["drew_uniform"], bool):
            raise ValueError(f"{op}: state_dict['drew_uniform'] must be a bool")

    def _load_state(self, state_dict: Dict[str, Any]) -> None:
        super()._load_state(state_dict)
        self.tau = float(state_dict["tau"])
        self.steps, self.steps_on = int(state_dict["steps"]), int(state_dict["steps_on"])
        self.tau_threshold = float(state_dict["tau_threshold"])
        self._drew_uniform = bool(state_dict["drew_uniform"])
        self._selection = self._candidates = None
