"""The training loop: one (method, seed) run, driven through the sampler protocol.

Training time is measured with the evaluations excluded. On CUDA the step never waits for
the device: losses and sampler statistics accumulate in device tensors that are read only
at evaluation points (where the clock is stopped after a synchronisation).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import cross_entropy_with_score, output_grad_norm
from ..samplers import Sampler
from .data import Dataset
from .methods import make_sampler
from .models import build_model

__all__ = ["TrainConfig", "SAMPLER_STATS", "evaluate", "train_run"]

SAMPLER_STATS = ("tau", "is_on", "data_fraction")
"""Optional sampler attributes recorded when present, read before each draw (DLIS: ``tau``,
``is_on`` — whether the draw about to be made importance-samples; pruning:
``data_fraction``)."""

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}


@dataclasses.dataclass
class TrainConfig:
    """Settings shared by every run of a comparison.

    Training stops after ``epochs`` epochs or ``time_budget`` seconds of training time
    (evaluations excluded), whichever comes first; ``time_budget=None`` means no limit.
    The full train and test sets are evaluated before training, every ``eval_every``
    seconds of training time and at the end. ``lr=None`` picks :data:`DEFAULT_LR` of the
    optimizer.
    """

    model: str = "mlp"
    epochs: int = 6
    time_budget: Optional[float] = 50.0
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: Optional[float] = None
    momentum: float = 0.9
    eval_every: float = 12.5
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
            ("eval_every", self.eval_every > 0, "must be > 0 (seconds)"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise ValueError(f"{name} {requirement}, got {getattr(self, name)!r}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and error rate of ``model`` on ``(x, y)``, as 0-d device tensors."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    errors = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        errors += (logits.argmax(dim=1) != target).sum()
    model.train(was_training)
    return loss_sum / x.shape[0], errors.double() / x.shape[0]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                           momentum=config.momentum)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Training wall-clock that can be paused (for evaluations)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.elapsed, self._start = device, 0.0, None

    def start(self) -> None:
        _synchronize(self.device)
        self._start = time.perf_counter()

    def stop(self) -> None:
        _synchronize(self.device)
        self.elapsed += time.perf_counter() - self._start
        self._start = None

    def now(self) -> float:
        """Elapsed training time without a device sync (may run ahead of the device)."""
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return self.elapsed + running


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, sampler: Sampler,
                data: Dataset, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One optimizer step on ``mean(w·loss)`` of the drawn batch, then the sampler update.

    Returns the sum of the (unweighted) per-sample losses, a device tensor.
    """
    loss, score = cross_entropy_with_score(model(data.x_train[idx]), data.y_train[idx],
                                           reduction="none")
    (weights * loss).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = loss.detach()
    sampler.update(idx, score if sampler.score_type == "output_grad" else loss)
    return loss.sum()


def train_run(method: str, seed: int, data: Dataset, config: TrainConfig) -> Dict[str, Any]:
    """Trains a fresh model with the sampler of ``method``; returns every measured number.

    The model initialisation depends on ``seed`` only, so all methods start from the same
    weights for a given seed. The result holds the curve (one point per evaluation:
    training wall-clock, epoch, step, full train loss, test loss and error, sampler
    statistics) and the totals of the run.
    """
    device = data.x_train.device
    num_samples = data.x_train.shape[0]
    torch.manual_seed(seed)
    model = build_model(config.model, tuple(data.x_train.shape[1:]), data.num_classes)
    model.to(device).train()
    optimizer = _optimizer(model, config)
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler = make_sampler(method, num_samples=num_samples, batch_size=config.batch_size,
                           device=device, generator=generator, epochs=config.epochs)
    max_steps = config.epochs * len(sampler)  # for the progress bar: pruning epochs are shorter
    stats = [name for name in SAMPLER_STATS if hasattr(sampler, name)]

    def score_fn(idx: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            scores = output_grad_norm(model(data.x_train[idx]), data.y_train[idx])
        model.train()
        return scores

    stat_sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in stats}
    batch_loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batch_samples = 0  # since the last evaluation
    curve: List[Dict[str, Any]] = []
    clock = _Clock(device)
    step = samples = 0
    epochs_done = 0.0  # the running epoch counts in proportion of its steps done

    def record() -> None:
        nonlocal batch_samples
        train_loss, train_err = evaluate(model, data.x_train, data.y_train,
                                         config.eval_batch_size)
        test_loss, test_err = evaluate(model, data.x_test, data.y_test, config.eval_batch_size)
        point = {"wall_clock": clock.elapsed, "epoch": epochs_done, "step": step,
                 "samples": samples, "train_loss": float(train_loss),
                 "train_error": float(train_err), "test_loss": float(test_loss),
                 "test_error": float(test_err),
                 "batch_loss": (float(batch_loss_sum) / batch_samples if batch_samples
                                else None)}
        point.update({name: float(getattr(sampler, name)) for name in stats})
        curve.append(point)
        batch_loss_sum.zero_()
        batch_samples = 0
        bar.set_postfix(test_err=f"{point['test_error']:.4f}",
                        train_loss=f"{point['train_loss']:.4f}", refresh=False)

    bar = tqdm(total=max_steps, desc=f"{method} (seed {seed})", disable=not config.progress,
               unit="step", mininterval=1.0)
    record()
    clock.start()
    next_eval = config.eval_every
    out_of_time = False
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        epoch_steps = len(sampler)  # fixed before the epoch's first draw (pruning shortens it)
        for k in range(epoch_steps):
            for name in stats:  # before the draw: is_on tells whether this draw is IS
                stat_sums[name] += getattr(sampler, name)
            idx, weights = sampler.sample(score_fn)
            batch_loss_sum += _train_step(model, optimizer, sampler, data, idx, weights)
            step += 1
            epochs_done = epoch + (k + 1) / epoch_steps
            samples += idx.shape[0]
            batch_samples += idx.shape[0]
            bar.update(1)
            elapsed = clock.now()
            out_of_time = config.time_budget is not None and elapsed >= config.time_budget
            done = out_of_time or (epoch == config.epochs - 1 and k == epoch_steps - 1)
            if done or elapsed >= next_eval:
                next_eval = (elapsed // config.eval_every + 1) * config.eval_every
                clock.stop()
                record()
                if done:
                    break
                clock.start()
        if out_of_time:
            break
    bar.close()

    final = curve[-1]
    result = {
        "method": method, "seed": seed, "steps": step, "samples": samples,
        "epochs": epochs_done, "stopped_by_time_budget": out_of_time,
        "wall_clock": clock.elapsed,
        "samples_per_s": samples / clock.elapsed if clock.elapsed > 0 else math.nan,
        "step_time": clock.elapsed / step if step else math.nan,
        "train_loss": final["train_loss"], "test_error": final["test_error"],
        "test_accuracy": 1.0 - final["test_error"], "test_loss": final["test_loss"],
        "curve": curve,
    }
    for name in stats:
        result[f"{name}_mean"] = float(stat_sums[name]) / step if step else math.nan
        result[f"{name}_final"] = final[name]
    return result
