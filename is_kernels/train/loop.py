"""The lock-step harness: every compared method trains in one process, in turn.

For one seed, each method gets its own model (the same initial weights for all), optimizer,
sampler and generator. They advance in rounds of ``chunk_steps`` steps each, in an order
drawn afresh every round from the seed, so a slowdown of the machine hits all of them
alike. Each method's clock counts only its own steps (on CUDA with events around each
chunk, no per-step sync; on CPU with one thread, the thread's CPU time, blind to other
processes); it is stopped while the method is evaluated. Evaluations of the
full test set and a fixed subset of the training set happen at fixed fractions of every epoch
(and optionally every ``eval_every`` seconds of the method's own training time); each
point records the method's own time and epoch, so the report can compare the methods at
equal training time and at equal epochs.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from .. import measure_step_costs, tau_threshold
from .methods import make_sampler, parse_spec
from .models import build_model
from .tasks import Task

__all__ = ["TrainConfig", "SAMPLER_STATS", "OPTIMIZERS", "DEFAULT_LR", "clock_kind", "evaluate",
           "run_lockstep"]

SAMPLER_STATS = ("tau", "is_on", "data_fraction")
"""Optional sampler attributes recorded when present, read before each draw (DLIS: ``tau``,
``is_on`` — whether the draw about to be made importance-samples; pruning:
``data_fraction``)."""

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}


@dataclasses.dataclass
class TrainConfig:
    """Settings shared by every run of a comparison.

    Each method trains ``epochs`` epochs, or stops earlier once its own training time
    reaches ``time_budget`` seconds (``None``: no budget). Evaluations: ``evals_per_epoch``
    per epoch (at equal fractions of its steps, the last at its end) and, if
    ``eval_every > 0``, whenever the method's own clock crosses a multiple of
    ``eval_every`` seconds (on a loaded machine the clock runs slower per step, so
    time-triggered evaluations multiply). ``model=None`` takes the task's
    network, ``lr=None`` :data:`DEFAULT_LR` of the optimizer. The train loss is measured
    on a fixed random subset of ``train_eval_size`` training samples (0: all of them).
    """

    model: Optional[str] = None
    epochs: int = 3
    time_budget: Optional[float] = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: Optional[float] = None
    momentum: float = 0.9
    evals_per_epoch: int = 4
    eval_every: float = 0.0
    chunk_steps: int = 8
    train_eval_size: int = 10_000
    eval_batch_size: int = 4096
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("time_budget", self.time_budget is None or self.time_budget > 0, "must be > 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {OPTIMIZERS}"),
            ("lr", self.lr is None or self.lr > 0, "must be > 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("evals_per_epoch", self.evals_per_epoch >= 1, "must be >= 1"),
            ("eval_every", self.eval_every >= 0, "must be >= 0 (seconds, 0 = off)"),
            ("chunk_steps", self.chunk_steps >= 1, "must be >= 1"),
            ("train_eval_size", self.train_eval_size >= 0, "must be >= 0"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise ValueError(f"{name} {requirement}, got {getattr(self, name)!r}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and mean error metric of ``model`` on ``(x, y)``, as 0-d device tensors."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    error_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        out = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += task.loss_with_score(out, target)[0].double().sum()
        error_sum += task.error_sum(out, target)
    model.train(was_training)
    return loss_sum / x.shape[0], error_sum / x.shape[0]


class _Clock:
    """A method's own training time: the sum of its timed chunks.

    ``kind``: ``"cuda_events"`` (a pair of CUDA events around each chunk), ``"thread_cpu"``
    (CPU with one torch thread: the CPU time of the thread that runs the chunk, which is the
    wall-clock time on a dedicated core and does not count the time the OS gives other
    processes on a shared one) or ``"wall"`` (CPU with several threads: ``perf_counter``)."""

    def __init__(self, device: torch.device) -> None:
        self.kind = clock_kind(device)
        self.elapsed = 0.0
        self._now = host_clock(self.kind)

    def time(self, fn) -> None:
        if self.kind == "cuda_events":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # once per chunk: the next method's chunk must not overlap
            self.elapsed += start.elapsed_time(end) / 1000.0
        else:
            t0 = self._now()
            fn()
            self.elapsed += self._now() - t0


def clock_kind(device: torch.device) -> str:
    """How the harness times a method's training on ``device`` (see ``_Clock``)."""
    if device.type == "cuda":
        return "cuda_events"
    return "thread_cpu" if torch.get_num_threads() == 1 else "wall"


def host_clock(kind: str) -> Callable[[], float]:
    """The host clock of a clock kind: the thread's CPU time for ``"thread_cpu"``, else
    ``perf_counter`` (CUDA timings synchronise around it)."""
    return time.thread_time if kind == "thread_cpu" else time.perf_counter


class _Run:
    """One method's training for one seed, advanced chunk by chunk."""

    def __init__(self, spec: str, seed: int, task: Task, config: TrainConfig,
                 train_eval_idx: torch.Tensor, dlis_tau_threshold: float) -> None:
        data = task.data
        self.spec, self.seed, self.task, self.config = spec, seed, task, config
        self.device = data.x_train.device
        torch.manual_seed(seed)
        self.model = build_model(config.model or task.model, tuple(data.x_train.shape[1:]),
                                 data.num_classes).to(self.device).train()
        params = self.model.parameters()
        self.optimizer = torch.optim.Adam(params, lr=config.learning_rate) \
            if config.optimizer == "adam" else \
            torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        name, _ = parse_spec(spec)
        defaults = {"tau_threshold": dlis_tau_threshold} if name == "dlis" else {}
        self.sampler = make_sampler(spec, num_samples=data.x_train.shape[0],
                                    batch_size=config.batch_size, device=self.device,
                                    generator=generator, epochs=config.epochs, **defaults)
        self.reweight = getattr(self.sampler, "reweight", None)
        self.stats = [s for s in SAMPLER_STATS if hasattr(self.sampler, s)]
        self.stat_sums = {s: 0.0 for s in self.stats}
        self.train_eval_idx = train_eval_idx
        self.clock = _Clock(self.device)
        self.epoch, self.step_in_epoch, self.epoch_steps = 0, 0, None
        self.steps = self.samples = 0
        self.next_eval = config.eval_every
        self.next_mark = 1  # the next in-epoch evaluation, in 1/evals_per_epoch of the epoch
        self.done = False
        self.stopped_by_time_budget = False
        self.curve: List[Dict[str, Any]] = []
        self.extra = {"tau_threshold": self.sampler.tau_threshold} if name == "dlis" else {}

    @property
    def epochs_done(self) -> float:
        """Epochs completed, the running one in proportion of its steps."""
        if not self.epoch_steps:
            return float(self.epoch)
        return self.epoch + self.step_in_epoch / self.epoch_steps

    def _score_fn(self, idx: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            scores = self.task.score(self.model(self.task.data.x_train[idx]),
                                     self.task.data.y_train[idx])
        self.model.train()
        return scores

    def _step(self) -> None:
        data, sampler = self.task.data, self.sampler
        for s in self.stats:  # before the draw: is_on tells whether this draw is IS
            self.stat_sums[s] += float(getattr(sampler, s))
        idx, weights = sampler.sample(self._score_fn)
        loss, score = self.task.loss_with_score(self.model(data.x_train[idx]),
                                                data.y_train[idx])
        if self.reweight is not None:
            weights = self.reweight(score)
        (weights * loss).mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sampler.update(idx, score if sampler.score_type == "output_grad" else loss.detach())
        self.steps += 1
        self.samples += idx.shape[0]

    def _chunk(self, n: int) -> None:
        if self.epoch_steps is None:  # the epoch's length is fixed at its start (pruning)
            self.sampler.set_epoch(self.epoch)
            self.epoch_steps = len(self.sampler)
        for _ in range(min(n, self.epoch_steps - self.step_in_epoch)):
            self._step()
            self.step_in_epoch += 1

    def advance(self, n: int) -> int:
        """Trains up to ``n`` steps (not past the epoch's end), then evaluates if due;
        returns the number of steps done."""
        before, cfg = self.steps, self.config
        self.clock.time(lambda: self._chunk(n))
        per = cfg.evals_per_epoch
        mark = self.step_in_epoch >= self.next_mark * self.epoch_steps / per
        if mark:
            self.next_mark = self.step_in_epoch * per // self.epoch_steps + 1
        epoch_end = self.step_in_epoch == self.epoch_steps
        if epoch_end:
            self.epoch, self.step_in_epoch, self.epoch_steps = self.epoch + 1, 0, None
            self.next_mark = 1
        self.stopped_by_time_budget = cfg.time_budget is not None and \
            self.clock.elapsed >= cfg.time_budget
        self.done = self.stopped_by_time_budget or self.epoch == cfg.epochs
        timed = cfg.eval_every > 0 and self.clock.elapsed >= self.next_eval
        if timed:
            self.next_eval = (self.clock.elapsed // cfg.eval_every + 1) * cfg.eval_every
        if mark or epoch_end or self.done or timed:
            self.record(epoch_end=epoch_end)
        return self.steps - before

    def record(self, epoch_end: bool = False) -> None:
        """Evaluates the model (the clock is not running) and appends a curve point."""
        data, cfg = self.task.data, self.config
        idx = self.train_eval_idx
        train_loss, train_err = evaluate(self.model, self.task, data.x_train[idx],
                                         data.y_train[idx], cfg.eval_batch_size)
        test_loss, test_err = evaluate(self.model, self.task, data.x_test, data.y_test,
                                       cfg.eval_batch_size)
        point = {"wall_clock": self.clock.elapsed, "epoch": self.epochs_done,
                 "epoch_end": epoch_end, "step": self.steps, "samples": self.samples,
                 "train_loss": float(train_loss), "train_error": float(train_err),
                 "test_loss": float(test_loss), "test_error": float(test_err)}
        point.update({s: float(getattr(self.sampler, s)) for s in self.stats})
        self.curve.append(point)

    def result(self) -> Dict[str, Any]:
        final, elapsed = self.curve[-1], self.clock.elapsed
        result = {
            "method": self.spec, "seed": self.seed, "steps": self.steps,
            "samples": self.samples, "epochs": final["epoch"],
            "stopped_by_time_budget": self.stopped_by_time_budget, "wall_clock": elapsed,
            "samples_per_s": self.samples / elapsed if elapsed > 0 else math.nan,
            "step_time": elapsed / self.steps if self.steps else math.nan,
            "train_loss": final["train_loss"], "test_error": final["test_error"],
            "test_loss": final["test_loss"], "curve": self.curve, **self.extra,
        }
        for s in self.stats:
            result[f"{s}_mean"] = self.stat_sums[s] / self.steps if self.steps else math.nan
            result[f"{s}_final"] = final[s]
        return result


def _dlis_tau_threshold(task: Task, config: TrainConfig, seed: int) -> float:
    """τ_th of DLIS from the per-sample forward and backward costs of the initial network
    on one uniform batch, timed with the clock the runs use (DLIS's rule: IS pays once τ
    exceeds it)."""
    data = task.data
    torch.manual_seed(seed)
    model = build_model(config.model or task.model, tuple(data.x_train.shape[1:]),
                        data.num_classes).to(data.x_train.device)
    idx = torch.randint(data.x_train.shape[0], (config.batch_size,),
                        generator=torch.Generator().manual_seed(seed)).to(data.x_train.device)
    t_f, t_b = measure_step_costs(model, data.x_train[idx], data.y_train[idx],
                                  loss_fn=task.mean_loss, repeats=31,
                                  clock=host_clock(clock_kind(data.x_train.device)))
    return tau_threshold(config.batch_size, 3 * config.batch_size, t_f, t_b)


def run_lockstep(specs: Sequence[str], seed: int, task: Task,
                 config: TrainConfig) -> Dict[str, Dict[str, Any]]:
    """Trains every method of ``specs`` for ``seed``, in lock-step; returns the result of
    each (its curve and totals, see the module docstring), keyed by spec."""
    data = task.data
    n_train = data.x_train.shape[0]
    size = config.train_eval_size
    train_eval_idx = torch.arange(n_train, device=data.x_train.device) \
        if size == 0 or size >= n_train else \
        torch.randperm(n_train, generator=torch.Generator().manual_seed(12345))[:size] \
        .to(data.x_train.device)
    needs_dlis = any(parse_spec(s)[0] == "dlis" for s in specs)
    tau_th = _dlis_tau_threshold(task, config, seed) if needs_dlis else math.nan
    runs = [_Run(s, seed, task, config, train_eval_idx, tau_th) for s in specs]
    order = random.Random(seed)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    bar = tqdm(total=len(runs) * config.epochs * steps_per_epoch, unit="step",
               desc=f"seed {seed}", disable=not config.progress, mininterval=1.0)
    for run in runs:
        run.record()
    active = list(runs)
    while active:
        order.shuffle(active)
        for run in active:
            bar.update(run.advance(config.chunk_steps))
        active = [run for run in active if not run.done]
    bar.close()
    return {run.spec: run.result() for run in runs}
