"""The networks of the training comparison: the DLIS reference MLP and a small CNN."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from torch import nn

__all__ = ["MODELS", "build_model"]


def mlp(in_shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """784-512-512-10 with ReLU: the fully connected network of the DLIS experiments."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def cnn(in_shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two 3x3 conv + max-pool stages (32, 64 channels) and a 128-unit hidden layer."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


MODELS: Dict[str, Callable[[Tuple[int, int, int], int], nn.Module]] = {"mlp": mlp, "cnn": cnn}


def build_model(name: str, in_shape: Tuple[int, int, int], num_classes: int) -> nn.Module:
    """Builds model ``name`` (a key of :data:`MODELS`) for ``in_shape = (C, H, W)`` inputs."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](in_shape, num_classes)
