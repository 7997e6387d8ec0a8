"""Alias table benchmarks (pytest-benchmark, same-run ratios within each group).

Run: ``python -m pytest bench/bench_alias_table.py --benchmark-only -q``

Group ``alias``: N = 2^20 weights (2^24 on CUDA); build the table and draw 4096 indices,
against one ``torch.multinomial(weights, 4096, replacement=True)`` call, for the default
groups of 16 items and for the plain table (``group_size=1``). Ours also record the paired
ratio (the two run alternately; see ``bench/paired.py``). Groups ``alias build`` and
``alias draw`` time the build alone and 4096 draws from a built table. Group names carry
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


def _build_and_draw(w: torch.Tensor, group: int):
    return _timed(w.device.type, lambda: AliasTable(w, group_size=group).sample(K))


def _multinomial(w: torch.Tensor):
    return _timed(w.device.type, lambda: torch.multinomial(w, K, replacement=True))


def _build_and_draw_group(group: int) -> str:
    return f"alias: build + draw 4096, group_size {group}"


GROUPS = [16, 1]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_alias_build_and_draw(benchmark, device, group):
    w = _weights(device)
    step = _build_and_draw(w, group)
    benchmark.extra_info["paired_ratios"] = {
        f"multinomial[{device}-{group}]": paired_ratio(step, _multinomial(w))}
    _group(benchmark, _build_and_draw_group(group), w)
    benchmark(step)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("device", DEVICES)
def test_multinomial(benchmark, device, group):
    """The same call in each group_size's group (so that each has its alternative)."""
    w = _weights(device)
    _group(benchmark, _build_and_draw_group(group), w)
    benchmark(_multinomial(w))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_alias_build(benchmark, device, group):
    w = _weights(device)
    step = _timed(device, lambda: AliasTable(w, group_size=group))
    step()  # warm-up (Triton compilation on CUDA)
    _group(benchmark, f"alias build, group_size {group}", w)
    benchmark(step)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_alias_draw(benchmark, device, group):
    w = _weights(device)
    table = AliasTable(w, group_size=group)
    _group(benchmark, f"alias draw 4096 from a built table, group_size {group}", w)
    benchmark(_timed(device, lambda: table.sample(K)))
