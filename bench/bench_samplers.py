"""Per-step overhead of each sampler over uniform sampling, on the tensor training loop.

The step: draw b indices, forward the Fashion-MNIST MLP (784-512-512-10) on them, fused
loss + score, weighted backward, SGD step, sampler update. Data: 60000 random 784-d inputs
already on the device. ``bench/run_all.py`` reports each sampler against ``uniform``: the
medians of separate runs, and a paired overhead measured against a uniform twin step run
alternately (more robust to the drift of a shared machine than two medians taken minutes
apart).
Run: ``python -m pytest bench/bench_samplers.py``.
"""
import pytest
import torch
from paired import paired_overhead

import is_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N, B = 60000, 128
X = torch.randn(N, 784, generator=torch.Generator().manual_seed(0)).to(DEVICE)
Y = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(1)).to(DEVICE)


def make_sampler(name, g):
    return {
        "uniform": lambda: is_kernels.UniformSampler(N, B, device=DEVICE, generator=g),
        "online": lambda: is_kernels.OnlineImportanceSampler(N, B, warmup_epochs=0,
                                                             device=DEVICE, generator=g),
        "loss": lambda: is_kernels.LossImportanceSampler(N, B, warmup_epochs=0,
                                                         device=DEVICE, generator=g),
        # tau_threshold=1: importance sampling on at every step (the expensive regime).
        "dlis_on": lambda: is_kernels.PresampleImportanceSampler(N, B, tau_threshold=1.0,
                                                                 device=DEVICE, generator=g),
    }[name]()


SAMPLERS = ["uniform", "online", "loss", "dlis_on"]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_step(name):
    """One training step of the MLP with sampler ``name`` (own model, optimizer, sampler)."""
    torch.manual_seed(0)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10)).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    s = make_sampler(name, g)
    if isinstance(s, is_kernels.PresampleImportanceSampler):
        s.tau = 2.0

    def score_fn(idx):
        with torch.no_grad():
            return is_kernels.output_grad_norm(model(X[idx]), Y[idx])

    def step():
        idx, w = s.sample(score_fn)
        loss, score = is_kernels.cross_entropy_with_score(model(X[idx]), Y[idx],
                                                          reduction="none")
        (w * loss).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        s.update(idx, score if s.score_type == "output_grad" else loss.detach())
        _sync()

    for _ in range(3):
        step()
    return step


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_mlp_step(benchmark, sampler):
    step = make_step(sampler)
    benchmark.group = f"MLP training step b={B} ({DEVICE})"
    if sampler != "uniform":
        benchmark.extra_info["paired_overhead_pct"] = paired_overhead(step, make_step("uniform"))
    benchmark.pedantic(step, rounds=200, warmup_rounds=5)


@pytest.mark.parametrize("sampler", SAMPLERS[:3])
def test_sample_and_update_only(benchmark, sampler):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    s = make_sampler(sampler, g)
    scores = torch.rand(B, device=DEVICE)

    def round_trip():
        idx, _ = s.sample()
        s.update(idx, scores[: idx.shape[0]])
        _sync()

    benchmark.group = f"sampler sample+update b={B}, N={N} ({DEVICE})"
    benchmark.pedantic(round_trip, rounds=500, warmup_rounds=10)
