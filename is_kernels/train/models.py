"""The networks of the training comparison: the DLIS reference MLP, a small CNN (both
classify ``[C, H, W]`` images) and a coordinate network (regression of ``[D]`` inputs)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
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


class FourierFeatures(nn.Module):
    """``x -> [sin(2π·xB), cos(2π·xB)]`` with a fixed Gaussian ``B`` (``[D, m]``, std
    ``sigma``): random Fourier features (Tancik et al. 2020), which let an MLP fit the high
    frequencies of an image."""

    def __init__(self, in_dim: int, features: int, sigma: float) -> None:
        super().__init__()
        self.register_buffer("b", torch.randn(in_dim, features) * sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * (x @ self.b)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def coord_mlp(in_shape: Tuple[int, ...], num_outputs: int) -> nn.Module:
    """Coordinate network: 256 random Fourier features (sigma 10), 256-256 ReLU, linear out."""
    (d,) = in_shape
    return nn.Sequential(
        FourierFeatures(d, 256, 10.0),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, num_outputs),
    )


MODELS: Dict[str, Callable[[Tuple[int, ...], int], nn.Module]] = {
    "mlp": mlp, "cnn": cnn, "coord_mlp": coord_mlp}


def build_model(name: str, in_shape: Tuple[int, ...], num_classes: int) -> nn.Module:
    """Builds model ``name`` (a key of :data:`MODELS`) for inputs of shape ``in_shape``
    (``(C, H, W)`` images, ``(D,)`` coordinates) and ``num_classes`` outputs."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](in_shape, num_classes)
