"""Alias table benchmarks (pytest-benchmark, same-run ratios within each group).

Run: ``python -m pytest bench/bench_alias_table.py --benchmark-only -q``

Group ``alias``: N = 2^20 weights (2^24 on CUDA); build the table and draw 4096 indices,
against one ``torch.multinomial(weights, 4096, replacement=True)`` call. Ours also records
the paired ratio (the two run alternately; see ``bench/paired.py``). Groups ``alias build``
and ``alias draw`` time the build alone and 4096 draws from a built table. Group names carry
the device and N; on CUDA every timed call ends with a synchronize (included in the times).
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


def _group(benchmark, what: str, w: torch.Tensor) -> None:
    benchmark.group = f"{what}, N=2^{w.shape[0].bit_length() - 1} ({w.device.type})"


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


BUILD_AND_DRAW = "alias: build + draw 4096"


@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_alias_build_and_draw(benchmark, device):
    w = _weights(device)
    step = _build_and_draw(w)
    benchmark.extra_info["paired_ratios"] = {
        f"multinomial[{device}]": paired_ratio(step, _multinomial(w))}
    _group(benchmark, BUILD_AND_DRAW, w)
    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
def test_multinomial(benchmark, device):
    w = _weights(device)
    _group(benchmark, BUILD_AND_DRAW, w)
    benchmark(_multinomial(w))


@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_alias_build(benchmark, device):
    w = _weights(device)
    step = _timed(device, lambda: AliasTable(w))
    step()  # warm-up (Triton compilation on CUDA)
    _group(benchmark, "alias build", w)
    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_alias_draw(benchmark, device):
    w = _weights(device)
    table = AliasTable(w)
    _group(benchmark, "alias draw 4096 from a built table", w)
    benchmark(_timed(device, lambda: table.sample(K)))
