"""Alias table benchmarks (pytest-benchmark, same-run ratios within each group).

Run: ``python -m pytest bench/bench_alias_table.py --benchmark-only -q``

Group ``alias``: N = 2^20 weights (2^24 on CUDA); build the table and draw 4096 indices,
against one ``torch.multinomial(weights, 4096, replacement=True)`` call.
"""
import pytest
import torch

from is_kernels import AliasTable

K = 4096
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _weights(device: str) -> torch.Tensor:
    n = 1 << 20 if device == "cpu" else 1 << 24
    return torch.rand(n, generator=torch.Generator().manual_seed(0)).to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.benchmark(group="alias: build + draw 4096")
def test_is_kernels_alias_build_and_draw(benchmark, device):
    w = _weights(device)

    def step():
        out = AliasTable(w).sample(K)
        _sync(device)
        return out

    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.benchmark(group="alias: build + draw 4096")
def test_multinomial(benchmark, device):
    w = _weights(device)

    def step():
        out = torch.multinomial(w, K, replacement=True)
        _sync(device)
        return out

    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.benchmark(group="alias: draw 4096 from a built table")
def test_is_kernels_alias_draw(benchmark, device):
    table = AliasTable(_weights(device))

    def step():
        out = table.sample(K)
        _sync(device)
        return out

    benchmark(step)
