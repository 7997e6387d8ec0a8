"""The learning tasks of the comparison: what is trained, with which loss and score.

A :class:`Task` bundles a :class:`~is_kernels.train.data.Dataset`, the default network and
the per-sample loss with its importance score (the output-gradient norm the samplers use).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple, Union

import torch
import torch.nn.functional as F

from .. import cross_entropy_with_score, mse_with_score, output_grad_norm
from .data import DEFAULT_DATA_DIR, Dataset, load_fashion_mnist, load_image_regression

__all__ = ["Task", "TASKS", "ERROR_METRICS", "load_task"]

Pair = Tuple[torch.Tensor, torch.Tensor]

ERROR_METRICS = {"fashion_mnist": ("test error (%)", 100.0), "image": ("test MSE", 1.0)}
"""Per task: how the report names its error metric, and the factor to the reported figure."""


@dataclasses.dataclass
class Task:
    """A dataset and how to train and evaluate on it.

    Attributes:
        name: the task's name (a key of :data:`TASKS`).
        data: train and test tensors on the training device.
        model: the default network (a key of :data:`~is_kernels.train.models.MODELS`).
        loss_with_score: ``(outputs, targets) -> (loss [n], score [n])``, per sample.
        score: ``(outputs, targets) -> score [n]`` without autograd (presampling).
        mean_loss: ``(outputs, targets) -> scalar`` (to time a training step).
        error_sum: ``(outputs, targets) -> scalar``: the summed error metric
            (misclassified samples; squared error for regression).
        error_label: how the report names the error metric.
        error_scale: factor from the mean error to the reported figure (100: percent).
    """

    name: str
    data: Dataset
    model: str
    loss_with_score: Callable[[torch.Tensor, torch.Tensor], Pair]
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mean_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    error_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    error_label: str
    error_scale: float


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> Pair:
    return cross_entropy_with_score(outputs, targets, reduction="none")


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> Pair:
    return mse_with_score(outputs, targets, reduction="none")


def _mse_score(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return mse_with_score(outputs, targets, reduction="none")[1]


def fashion_mnist(device: Union[torch.device, str], data_dir: str = DEFAULT_DATA_DIR) -> Task:
    """Fashion-MNIST classification, cross-entropy, test error in percent."""
    return Task(name="fashion_mnist", data=load_fashion_mnist(data_dir, device), model="mlp",
                loss_with_score=_cross_entropy, score=output_grad_norm,
                mean_loss=F.cross_entropy,
                error_sum=lambda out, y: (out.argmax(dim=1) != y).sum().double(),
                error_label=ERROR_METRICS["fashion_mnist"][0],
                error_scale=ERROR_METRICS["fashion_mnist"][1])


def image(device: Union[torch.device, str], data_dir: str = "") -> Task:
    """Image regression (pixel coordinates -> RGB), mean squared error; the error metric
    is the test MSE per colour channel."""
    return Task(name="image", data=load_image_regression(device), model="coord_mlp",
                loss_with_score=_mse, score=_mse_score, mean_loss=F.mse_loss,
                error_sum=lambda out, y: F.mse_loss(out.float(), y, reduction="none")
                .mean(dim=1).sum().double(),
                error_label=ERROR_METRICS["image"][0], error_scale=ERROR_METRICS["image"][1])


TASKS: Dict[str, Callable[..., Task]] = {"fashion_mnist": fashion_mnist, "image": image}


def load_task(name: str, device: Union[torch.device, str], data_dir: str = DEFAULT_DATA_DIR
              ) -> Task:
    """Builds task ``name`` (a key of :data:`TASKS`) with its data on ``device``."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](device, data_dir)
