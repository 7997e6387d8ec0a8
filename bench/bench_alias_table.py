"""Alias table benchmarks (pytest-benchmark, same-run ratios within each group).

Run: ``python -m pytest bench/bench_alias_table.py --benchmark-only -q``

Group ``alias``: N = 2^20 weights (2^24 on CUDA); build the table and draw 4096 indices,
against one ``torch.multinomial(weights, 4096, replacement=True)`` call. Ours also records
the paired ratio (the two run alternately; see ``bench/paired.py``).
"""
import pytest
import torch
from paired import paired_ratio

from is_kernels import AliasTable

K = 4096
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _weights(device: str) -> torch.Tensor:
    n = 1 << 20 if device == "cpu" else 1 << 24
    return torch.rand(n, generator=torch.Generator().manual_seed(0)).to(device)


def _timed(device: str, draw):
    """``draw`` as a benchmark step: on CUDA, it waits for the device."""
    def step():
        out = draw()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return step


def _build_and_draw(w: torch.Tensor):
    return _timed(w.device.type, lambda: AliasTable(w).sample(K))


def _multinomial(w: torch.Tensor):
    return _timed(w.device.type, lambda: torch.multinomial(w, K, replacement=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.benchmark(group="alias: build + draw 4096")
def test_is_kernels_alias_build_and_draw(benchmark, device):
    w = _weights(device)
    step = _build_and_draw(w)
    benchmark.extra_info["paired_ratios"] = {
        f"multinomial[{device}]": paired_ratio(step, _multinomial(w))}
    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.benchmark(group="alias: build + draw 4096")
def test_multinomial(benchmark, device):
    benchmark(_multinomial(_weights(device)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.benchmark(group="alias: draw 4096 from a built table")
def test_is_kernels_alias_draw(benchmark, device):
    table = AliasTable(_weights(device))
    benchmark(_timed(device, lambda: table.sample(K)))
