"""Weighted sampling benchmarks (pytest-benchmark, same-run ratios within each group).

Run: ``python -m pytest bench/bench_sum_tree.py --benchmark-only -q``

Group ``round``: N = 2^20 weights; one round updates 4096 random leaves and draws 4096
indices. Baselines re-read the changed weights every round: ``torch.multinomial`` and
cumsum + searchsorted; cpprb's PrioritizedReplayBuffer (C++ segment tree) runs
``update_priorities`` + ``sample``. On CUDA (when present) the same round at N = 2^24.
Groups ``sum tree update`` and ``sum tree draw`` time the two halves of our round alone.
Group names carry the device and N; on CUDA every timed call ends with a synchronize
(included in the times).
"""
import numpy as np
import pytest
import torch

from is_kernels import SumTree

N = 1 << 20
K = 4096
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _size(device: str) -> int:
    return N if device == "cpu" else 1 << 24


def _group(benchmark, what: str, device: str) -> None:
    benchmark.group = f"{what}, N=2^{_size(device).bit_length() - 1} ({device})"


ROUND = "round: update 4096 + draw 4096"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Round:
    """Random update batches, pre-drawn so that the timed part is the sampler's work."""

    def __init__(self, n: int, device: str, rounds: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.weights = torch.rand(n, generator=g).to(device)
        self.idx = [torch.randint(0, n, (K,), generator=g).to(device) for _ in range(rounds)]
        self.val = [torch.rand(K, generator=g).to(device) for _ in range(rounds)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.idx)
        return self.idx[self.i], self.val[self.i]


def _tree(device: str):
    r = Round(_size(device), device)
    tree = SumTree(r.weights.shape[0], device=device)
    tree.build(r.weights)
    return r, tree


def _bench_tree(benchmark, device: str, what: str, update: bool, draw: bool) -> None:
    r, tree = _tree(device)

    def step():
        out = None
        if update:
            tree.update(*r.next())
        if draw:
            out = tree.sample(K)
        _sync(device)
        return out

    step()  # warm-up (Triton compilation on CUDA)
    _group(benchmark, what, device)
    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_sum_tree(benchmark, device):
    _bench_tree(benchmark, device, ROUND, update=True, draw=True)


@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_sum_tree_update(benchmark, device):
    _bench_tree(benchmark, device, "sum tree update 4096", update=True, draw=False)


@pytest.mark.parametrize("device", DEVICES)
def test_is_kernels_sum_tree_draw(benchmark, device):
    _bench_tree(benchmark, device, "sum tree draw 4096", update=False, draw=True)


def _bench_dense(benchmark, device: str, draw) -> None:
    """Times a round of a baseline that keeps the weights in a dense tensor ``w``: write the
    changed weights, then ``draw(w)``."""
    r = Round(_size(device), device)
    w = r.weights.clone()

    def step():
        idx, val = r.next()
        w[idx] = val
        out = draw(w)
        _sync(device)
        return out

    _group(benchmark, ROUND, device)
    benchmark(step)


@pytest.mark.parametrize("device", DEVICES)
def test_multinomial(benchmark, device):
    _bench_dense(benchmark, device, lambda w: torch.multinomial(w, K, replacement=True))


@pytest.mark.parametrize("device", DEVICES)
def test_cumsum_searchsorted(benchmark, device):
    def draw(w):
        c = torch.cumsum(w, 0, dtype=torch.float64)
        u = torch.rand(K, dtype=torch.float64, device=device) * c[-1]
        return torch.searchsorted(c, u, right=True).clamp_(max=w.shape[0] - 1)

    _bench_dense(benchmark, device, draw)


def test_cpprb(benchmark):
    cpprb = pytest.importorskip("cpprb")
    r = Round(N, "cpu")
    rb = cpprb.PrioritizedReplayBuffer(N, {"obs": {"shape": 1}}, alpha=1.0)
    rb.add(obs=np.zeros((N, 1), dtype=np.float32), priorities=r.weights.numpy())
    idx_np = [i.numpy().astype(np.uint64) for i in r.idx]
    val_np = [v.numpy().astype(np.float64) for v in r.val]
    state = {"i": 0}

    def step():
        state["i"] = (state["i"] + 1) % len(idx_np)
        rb.update_priorities(idx_np[state["i"]], val_np[state["i"]])
        return rb.sample(K, beta=0.4)

    _group(benchmark, ROUND, "cpu")
    benchmark(step)
