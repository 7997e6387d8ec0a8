"""Tests of is_kernels.integrations.torchrl: TorchRL's segment-tree interface on is_kernels
trees, against float64 references, and TorchRL's prioritized buffers running on them.
Skipped without torchrl (pip install 'is_kernels[torchrl]')."""
import copy
import math
import pickle

import numpy as np
import pytest
import torch
from helpers.chisquare import chisquare
from helpers.docs import docs_example

pytest.importorskip("torchrl")
pytest.importorskip("tensordict")

from is_kernels.integrations import torchrl as itr  # noqa: E402

SUMS = [itr.SumSegmentTreeFp32, itr.SumSegmentTreeFp64]
MINS = [itr.MinSegmentTreeFp32, itr.MinSegmentTreeFp64]


@pytest.fixture
def enabled():
    itr.enable()
    yield
    itr.disable()


def test_enable_disable():
    from torchrl.data.replay_buffers.samplers import prioritized

    before = prioritized.SumSegmentTreeFp32
    itr.enable()
    itr.enable()  # idempotent
    try:
        assert itr.is_enabled()
        assert prioritized.CudaMinSegmentTreeFp64 is itr.CudaMinSegmentTreeFp64
        from torchrl.data.replay_buffers import samplers
        assert samplers.SumSegmentTreeFp64 is itr.SumSegmentTreeFp64
    finally:
        itr.disable()
    assert prioritized.SumSegmentTreeFp32 is before and not itr.is_enabled()


@pytest.mark.parametrize("cls", SUMS + MINS)
def test_get_set_kinds_and_broadcast(cls):
    dtype = cls._dtype
    tree = cls(10)
    assert len(tree) == tree.size == 10 and tree.capacity == 16
    identity = torch.finfo(dtype).max if cls in MINS else 0.0
    assert tree.identity_element == identity and tree[3] == identity
    tree[2] = 1.5  # int index, float value
    tree[np.array([4, 5])] = np.array([2.0, 3.0])  # numpy
    tree[torch.tensor([6, 7, 6])] = torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)
    tree[torch.tensor([8, 9])] = 0.25  # scalar broadcast
    assert isinstance(tree[2], float) and tree[2] == 1.5
    got = tree[np.array([4, 5])]
    assert isinstance(got, np.ndarray) and got.tolist() == [2.0, 3.0]
    got = tree[torch.tensor([[6], [7]])]
    assert got.dtype == dtype and got.shape == (2, 1) and got.flatten().tolist() == [6.0, 5.0]
    assert tree[torch.tensor(9)].shape == () and tree.at(8) == 0.25
    tree[12] = 7.0  # TorchRL's tree has 16 leaves, and its sampler may use all of them
    assert tree[12] == 7.0 and tree.query(0, 10) == (0.25 if cls in MINS else 25.0)
    with pytest.raises(IndexError, match="index 16 is out of range for 16 leaves"):
        tree[16]
    with pytest.raises(ValueError, match="3 values for 2 indices"):
        tree[torch.tensor([0, 1])] = torch.ones(3)


@pytest.mark.parametrize("cls", SUMS + MINS)
def test_torchrl_calls_fast_paths(cls):
    """The calls TorchRL's sampler makes (int64 index tensors, values of the tree's dtype,
    0-dim or of the index's shape; the whole-tree query) give what the general path gives,
    and raise the same errors."""
    dtype = cls._dtype
    g = torch.Generator().manual_seed(3)
    tree, ref = cls(100), cls(100)
    idx = torch.randint(0, 128, (300,), generator=g)
    val = torch.rand(300, generator=g, dtype=torch.float64).to(dtype)
    tree[idx] = val
    ref[idx.numpy()] = val.double().numpy()  # the general path
    tree[idx[:7]] = torch.tensor(0.5, dtype=dtype)  # 0-dim: broadcast
    ref[idx[:7].numpy()] = 0.5
    got, want = tree[idx], ref[idx.numpy()]
    assert got.dtype == dtype and np.array_equal(got.numpy(), want)
    root = tree._tree.min() if cls in MINS else tree._tree.total()
    assert tree.query(0, 100) == float(root.to(dtype)) == ref.query(0, 100)
    for bad in (torch.tensor([3, -1]), torch.tensor([3, 128])):
        with pytest.raises(IndexError, match="is out of range for 128 leaves"):
            tree[bad]
        with pytest.raises(RuntimeError, match=r"indices\[1\] = .* is out of range"):
            tree[bad] = torch.ones(2, dtype=dtype)
    with pytest.raises(RuntimeError, match=r"values\[1\] = nan"):
        tree[torch.tensor([1, 2])] = torch.tensor([1.0, math.nan], dtype=dtype)
    assert np.array_equal(tree[idx].numpy(), want)  # the errors changed nothing


@pytest.mark.parametrize("cls", SUMS + MINS)
def test_query_equals_float64_reference(cls):
    g = torch.Generator().manual_seed(0)
    n = 257
    tree = cls(n)
    values = torch.rand(n, generator=g, dtype=torch.float64) * 10
    tree[torch.arange(n)] = values
    stored = values.to(cls._dtype).double()
    starts = torch.randint(0, n, (200,), generator=g)
    ends = torch.clamp(starts + torch.randint(1, n, (200,), generator=g), max=n)
    reduce = (lambda v: v.min()) if cls in MINS else (lambda v: v.sum())
    ref = torch.stack([reduce(stored[s:e]) for s, e in zip(starts.tolist(), ends.tolist())])
    got = tree.query(starts, ends)
    assert got.dtype == cls._dtype
    assert torch.allclose(got.double(), ref, rtol=1e-6 if cls._dtype == torch.float32
                          else 1e-12)
    assert isinstance(tree.query(0, n), float)
    assert tree.query(0, n) == pytest.approx(float(reduce(stored)), rel=1e-6)
    # As TorchRL's tree, a range is intersected with [0, size).
    assert tree.query(-5, n + 7) == tree.query(0, n)
    assert tree.query(np.array([0]), np.array([n])).shape == (1,)


@pytest.mark.parametrize("cls", SUMS)
def test_scan_lower_bound_reference_and_chisquare(cls):
    g = torch.Generator().manual_seed(1)
    n = 300
    tree = cls(n)
    values = torch.rand(n, generator=g, dtype=torch.float64)
    values[::5] = 0
    tree[torch.arange(n)] = values
    stored = values.to(cls._dtype).double()
    prefix = torch.cumsum(stored, 0)
    total = tree.query(0, n)
    mass = torch.rand(100_000, generator=g, dtype=torch.float64) * total
    idx = tree.scan_lower_bound(mass)
    assert idx.dtype == torch.int64 and (stored[idx] > 0).all()
    ref = torch.searchsorted(prefix, mass, right=True).clamp_max(n - 1)
    assert (idx == ref).double().mean() > 0.999  # equal away from float rounding at the edges
    counts = torch.bincount(idx, minlength=n)[stored > 0]
    expected = (stored / stored.sum())[stored > 0] * idx.numel()
    assert chisquare(counts, expected)[1] > 1e-3
    assert isinstance(tree.scan_lower_bound(0.5), int)
    out = tree.scan_lower_bound(np.array([0.0, total * 2]))
    assert isinstance(out, np.ndarray) and out[1] == int(torch.nonzero(stored).max())


@pytest.mark.parametrize("cls", SUMS + MINS)
def test_copies_are_independent(cls):
    tree = cls(6)
    tree[torch.arange(6)] = torch.arange(6, dtype=torch.float64) + 1
    for other in (copy.deepcopy(tree), pickle.loads(pickle.dumps(tree))):
        assert type(other) is cls
        assert other[np.arange(6)].tolist() == tree[np.arange(6)].tolist()
        assert other.query(0, 6) == tree.query(0, 6)
        other[0] = 100.0
        assert tree[0] == 1.0


def test_invalid_priority_raises_and_changes_nothing():
    tree = itr.SumSegmentTreeFp32(4)
    tree[torch.arange(4)] = 1.0
    with pytest.raises(RuntimeError, match="not a valid weight"):
        tree[torch.tensor([0, 1])] = torch.tensor([2.0, -1.0])
    assert tree[np.arange(4)].tolist() == [1.0] * 4
    with pytest.raises(RuntimeError, match="nan is not a valid value"):
        itr.MinSegmentTreeFp32(4)[1] = math.nan



def test_bad_size_names_the_argument():
    """A size of 0 raised a TypeError for a value of the right type."""
    with pytest.raises(ValueError, match="SumSegmentTreeFp32: size must be >= 1, got 0"):
        itr.SumSegmentTreeFp32(0)
    with pytest.raises(TypeError, match="MinSegmentTreeFp64: size must be an int, got float"):
        itr.MinSegmentTreeFp64(2.0)
    assert len(itr.SumSegmentTreeFp64(np.int64(3))) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prioritized_buffer_draws_and_weights(enabled, dtype):
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.data.replay_buffers.samplers import PrioritizedSampler

    alpha, beta, eps = 0.7, 0.5, 1e-8
    n = 64
    sampler = PrioritizedSampler(max_capacity=n, alpha=alpha, beta=beta, eps=eps, dtype=dtype)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(n), sampler=sampler, batch_size=4096,
                                priority_key="td_error")
    td_error = torch.linspace(0.1, 2.0, n)
    rb.extend(TensorDict({"obs": torch.arange(n).float(), "td_error": td_error},
                         batch_size=[n]))
    sample = rb.sample()
    idx = sample["index"]
    prio = (td_error.double() + eps).pow(alpha)
    ref = (prio[idx] / prio.min()).pow(-beta)
    assert torch.allclose(sample["priority_weight"].double(), ref, rtol=1e-5)
    counts = torch.zeros(n)
    for _ in range(25):
        counts += torch.bincount(rb.sample()["index"], minlength=n)
    assert chisquare(counts, prio / prio.sum() * counts.sum())[1] > 1e-3
    # New priorities change the draws: only index 3 keeps a priority above 0 (eps aside).
    rb.update_priority(torch.arange(n), torch.zeros(n))
    rb.update_priority(torch.tensor([3]), torch.tensor([5.0]))
    assert (rb.sample()["index"] == 3).float().mean() > 0.99


def test_state_dict_round_trip(enabled):
    from torchrl.data.replay_buffers.samplers import PrioritizedSampler

    a = PrioritizedSampler(max_capacity=20, alpha=0.6, beta=0.4)
    a.update_priority(torch.arange(20), torch.rand(20, generator=torch.Generator()
                                                   .manual_seed(2)))
    b = PrioritizedSampler(max_capacity=20, alpha=0.6, beta=0.4)
    b.load_state_dict(a.state_dict())
    assert b._sum_tree.query(0, 20) == a._sum_tree.query(0, 20)
    assert b._min_tree.query(0, 20) == a._min_tree.query(0, 20)


def test_docs_recipe_runs():
    scope = {}
    try:
        exec(docs_example("enable()"), scope)
    finally:
        itr.disable()
    assert scope["sample"]["priority_weight"].shape == (32,)


@pytest.mark.parametrize("cls", [itr.CudaSumSegmentTreeFp32, itr.CudaMinSegmentTreeFp64])
def test_cuda_twins_take_a_device(cls):
    # TorchRL builds them as Cls(size, device); on CUDA they run the Triton kernels, here
    # the same classes on CPU check the constructor and the device attribute.
    tree = cls(8, torch.device("cpu"))
    assert tree.device == torch.device("cpu") and len(tree) == 8
    tree[torch.tensor([1, 2])] = torch.tensor([2.0, 3.0])
    assert tree.query(0, 8) == (2.0 if "Min" in cls.__name__ else 5.0)
