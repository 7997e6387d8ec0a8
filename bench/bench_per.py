"""Prioritized experience replay benchmarks (pytest-benchmark, same-run ratios per group).

Run: ``python -m pytest bench/bench_per.py --benchmark-only -q``

One step of a full buffer of N = 2^20 CartPole-sized transitions (obs and next_obs 4 float32,
act, rew, done): add 256 transitions, sample 256 (transitions and importance weights), update
the 256 sampled priorities. Every buffer uses alpha = 0.6, beta = 0.4, eps = 1e-4 and the
importance weights of cpprb, ``(priority_i / min over stored priorities) ** -beta``.

- group ``PER step``: :class:`is_kernels.PrioritizedReplay` (sum and min trees, data in
  torch tensors) against cpprb 11's ``PrioritizedReplayBuffer`` and a buffer of dense
  priorities drawn by ``torch.multinomial`` (minimum by a scan);
- group ``TorchRL PER step``: TorchRL's ``TensorDictPrioritizedReplayBuffer`` (with
  ``is_kernels.integrations.torchrl.enable()``) against cpprb; for scale, the same step with
  the sampler's trees doing no work (TorchRL's own work alone), and TorchRL's uniform
  ``TensorDictReplayBuffer`` doing only the add and the sample (TorchRL's storage and
  TensorDict handling, without priorities).

Our entries record ``extra_info["paired_ratios"]``: the steps run alternately with each
alternative (``bench/paired.py``), the ratio robust to the drift of a shared machine.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from paired import paired_ratio

N = 1 << 20
B = 256
ALPHA, BETA, EPS = 0.6, 0.4, 1e-4
OBS = 4
STEPS = 64  # pre-drawn batches, cycled
GROUP = f"PER step: add {B} + sample {B} + update {B}, N=2^20 (cpu)"
TORCHRL_GROUP = f"TorchRL PER step: add {B} + sample {B} + update {B}, N=2^20 (cpu)"


class Data:
    """Pre-drawn transitions and TD errors (numpy and torch views of the same arrays)."""

    def __init__(self, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        self.fill = self._transitions(g, N)
        self.fill_priority = g.random(N).astype(np.float32)
        self.batches = [self._transitions(g, B) for _ in range(STEPS)]
        self.td = [g.random(B).astype(np.float32) for _ in range(STEPS)]
        self.i = 0

    @staticmethod
    def _transitions(g: np.random.Generator, n: int) -> dict:
        return {"obs": g.random((n, OBS), dtype=np.float32),
                "act": g.integers(0, 2, (n, 1)).astype(np.float32),
                "rew": g.random((n, 1), dtype=np.float32),
                "next_obs": g.random((n, OBS), dtype=np.float32),
                "done": (g.random((n, 1)) < 0.01).astype(np.float32)}

    def next(self):
        self.i = (self.i + 1) % STEPS
        return self.batches[self.i], self.td[self.i]


def torch_dict(d: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in d.items()}


FIELDS = {"obs": OBS, "act": 1, "rew": 1, "next_obs": OBS, "done": 1}
WIDTHS = list(FIELDS.values())


def packed(d: dict) -> torch.Tensor:
    """The fields of transitions side by side in one float32 [n, 11] tensor."""
    return torch.cat([torch.from_numpy(d[k]).reshape(-1, w) for k, w in FIELDS.items()], 1)


def unpacked(rows: torch.Tensor) -> dict:
    """Views of the fields of packed rows."""
    return dict(zip(FIELDS, rows.split_with_sizes(WIDTHS, 1)))


class IsKernelsBuffer:
    """PrioritizedReplay for the priorities; the transitions packed in one tensor (one
    index_copy_ to add, one index_select to sample)."""

    def __init__(self, data: Data) -> None:
        from is_kernels import PrioritizedReplay

        self.data = data
        self.per = PrioritizedReplay(N, alpha=ALPHA, beta=BETA, eps=EPS)
        self.store = packed(data.fill)
        self.per.add(N, torch.from_numpy(data.fill_priority))
        self.batches = [packed(b) for b in data.batches]
        self.td = [torch.from_numpy(t) for t in data.td]

    def step(self):
        self.data.next()
        i = self.data.i
        self.store.index_copy_(0, self.per.add(B), self.batches[i])
        idx, weights = self.per.sample(B)
        batch = unpacked(self.store.index_select(0, idx))
        self.per.update(idx, self.td[i])
        return batch, weights


class MultinomialBuffer:
    """Dense priorities: torch.multinomial to draw, a scan for the minimum; the transitions
    packed as for IsKernelsBuffer."""

    def __init__(self, data: Data) -> None:
        self.data = data
        self.store = packed(data.fill)
        self.prio = (torch.from_numpy(data.fill_priority) + EPS).pow(ALPHA)
        self.max_priority = float(data.fill_priority.max())
        self.next = 0
        self.batches = [packed(b) for b in data.batches]
        self.td = [torch.from_numpy(t) for t in data.td]

    def step(self):
        self.data.next()
        i = self.data.i
        slots = torch.arange(self.next, self.next + B) % N
        self.next = (self.next + B) % N
        self.store.index_copy_(0, slots, self.batches[i])
        self.prio[slots] = (self.max_priority + EPS) ** ALPHA
        idx = torch.multinomial(self.prio, B, replacement=True)
        weights = (self.prio[idx] / self.prio.min()).pow(-BETA)
        batch = unpacked(self.store.index_select(0, idx))
        td = self.td[i]
        self.max_priority = max(self.max_priority, float(td.max()))
        self.prio[idx] = (td + EPS).pow(ALPHA)
        return batch, weights


class CpprbBuffer:
    def __init__(self, data: Data) -> None:
        cpprb = pytest.importorskip("cpprb")
        self.data = data
        env = {"obs": {"shape": OBS}, "act": {"shape": 1}, "rew": {}, "next_obs": {"shape": OBS},
               "done": {}}
        self.rb = cpprb.PrioritizedReplayBuffer(N, env, alpha=ALPHA, eps=EPS)
        self.rb.add(**data.fill, priorities=data.fill_priority)

    def step(self):
        batch, td = self.data.next()
        self.rb.add(**batch)
        sample = self.rb.sample(B, beta=BETA)
        self.rb.update_priorities(sample["indexes"], td)
        return sample


class TorchRLBuffer:
    """TorchRL's TensorDictPrioritizedReplayBuffer on is_kernels trees."""

    def __init__(self, data: Data) -> None:
        pytest.importorskip("torchrl")
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer

        from is_kernels.integrations import torchrl as itr

        itr.enable()
        self.data = data
        self.rb = TensorDictPrioritizedReplayBuffer(
            alpha=ALPHA, beta=BETA, eps=EPS, storage=LazyTensorStorage(N), batch_size=B,
            priority_key="td_error")
        fill = TensorDict({**torch_dict(data.fill),
                           "td_error": torch.from_numpy(data.fill_priority)}, batch_size=[N])
        self.rb.extend(fill)
        self.batches = [TensorDict({**torch_dict(b), "td_error": torch.ones(B)},
                                   batch_size=[B]) for b in data.batches]
        self.td = [torch.from_numpy(t) for t in data.td]

    def step(self):
        self.data.next()
        i = self.data.i
        self.rb.extend(self.batches[i])
        sample = self.rb.sample()
        self.rb.update_priority(sample["index"], self.td[i])
        return sample


class _NoTree:
    """A segment tree whose methods do no work (reads give 1, draws are uniform): TorchRL's
    sampler on it does all of its own work and none of the trees'."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __setitem__(self, index, value) -> None:
        pass

    def __getitem__(self, index):
        return torch.ones(index.shape)

    def query(self, start, end) -> float:
        return 1.0

    def scan_lower_bound(self, mass):
        return torch.randint(0, N, (len(mass),))


class TorchRLNoTreeBuffer(TorchRLBuffer):
    """TorchRLBuffer with the sampler's trees replaced by :class:`_NoTree`: the cost of
    TorchRL's own work in the same step (storage, TensorDict, sampler), trees excluded."""

    def __init__(self, data: Data) -> None:
        super().__init__(data)
        sampler = self.rb._sampler
        sampler._sum_tree = _NoTree(len(sampler._sum_tree))
        sampler._min_tree = _NoTree(len(sampler._min_tree))


class TorchRLUniformBuffer(TorchRLBuffer):
    """TorchRL's TensorDictReplayBuffer with its uniform RandomSampler: extend and sample only
    (no priorities), the cost of TorchRL's storage and TensorDict handling alone."""

    def __init__(self, data: Data) -> None:
        pytest.importorskip("torchrl")
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

        self.data = data
        self.rb = TensorDictReplayBuffer(storage=LazyTensorStorage(N), batch_size=B)
        self.rb.extend(TensorDict(torch_dict(data.fill), batch_size=[N]))
        self.batches = [TensorDict(torch_dict(b), batch_size=[B]) for b in data.batches]

    def step(self):
        self.data.next()
        self.rb.extend(self.batches[self.data.i])
        return self.rb.sample()


ALTERNATIVES = {"cpprb": CpprbBuffer, "multinomial": MultinomialBuffer}


def _run(benchmark, group: str, make, ours_vs: dict) -> None:
    buf = make(Data())
    buf.step()  # warm-up
    ratios = {}
    for name, alt_make in ours_vs.items():
        alt = alt_make(Data())
        alt.step()
        ratios[name] = paired_ratio(buf.step, alt.step, rounds=1000)
    if ratios:
        benchmark.extra_info["paired_ratios"] = ratios
    benchmark.group = group
    benchmark(buf.step)


def test_per_is_kernels(benchmark):
    _run(benchmark, GROUP, IsKernelsBuffer,
         {f"per[{name}]": make for name, make in ALTERNATIVES.items()
          if name != "cpprb" or _has("cpprb")})


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_per(benchmark, name):
    _run(benchmark, GROUP, ALTERNATIVES[name], {})


def test_torchrl_on_is_kernels(benchmark):
    pytest.importorskip("torchrl")
    _run(benchmark, TORCHRL_GROUP, TorchRLBuffer,
         {"cpprb": CpprbBuffer} if _has("cpprb") else {})


def test_torchrl_without_tree_work(benchmark):
    pytest.importorskip("torchrl")
    _run(benchmark, TORCHRL_GROUP, TorchRLNoTreeBuffer,
         {"cpprb": CpprbBuffer} if _has("cpprb") else {})


def test_cpprb(benchmark):
    _run(benchmark, TORCHRL_GROUP, CpprbBuffer, {})


def test_torchrl_uniform_no_priorities(benchmark):
    _run(benchmark, TORCHRL_GROUP, TorchRLUniformBuffer, {})


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False
