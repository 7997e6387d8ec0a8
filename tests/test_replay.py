"""Tests of is_kernels.PrioritizedReplay (prioritized experience replay on the sum and min
trees): distribution, weights against a float64 reference and cpprb, ring buffer, errors."""
import math

import numpy as np
import pytest
import torch
from helpers.chisquare import chisquare
from helpers.docs import docs_example
from helpers.triton_env import interpreted

from is_kernels import PrioritizedReplay
from is_kernels.ops.cuda_path import cuda_path_on_cpu

ALPHA, BETA, EPS = 0.6, 0.4, 1e-4


def filled(n: int, capacity: int, g: torch.Generator, **kw) -> tuple:
    per = PrioritizedReplay(capacity, alpha=kw.pop("alpha", ALPHA), beta=kw.pop("beta", BETA),
                            eps=kw.pop("eps", EPS), **kw)
    raw = torch.rand(n, generator=g) * 3
    per.add(n, raw)
    return per, raw


def reference_priorities(raw: torch.Tensor, alpha=ALPHA, eps=EPS) -> torch.Tensor:
    """Stored priorities (p + eps)^alpha, rounded to float32 as the buffer stores them."""
    return (raw.double() + eps).pow(alpha).float().double()


def reference_weights(prio: torch.Tensor, idx: torch.Tensor, beta: float) -> torch.Tensor:
    """(N P(i))^-beta / max over drawable j of (N P(j))^-beta, in float64."""
    n = prio.numel()
    p = prio / prio.sum()
    w = (n * p).pow(-beta)
    return w[idx] / w[p > 0].max()


def test_draws_chisquare():
    g = torch.Generator().manual_seed(0)
    per, raw = filled(500, 500, g)
    prio = reference_priorities(raw)
    idx, weights = per.sample(200_000, generator=g)
    counts = torch.bincount(idx, minlength=500).double().numpy()
    expected = (prio / prio.sum()).numpy() * idx.numel()
    assert chisquare(counts, expected)[1] > 1e-3
    assert weights.dtype == torch.float32 and idx.dtype == torch.int64


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_weights_equal_float64_reference(beta):
    g = torch.Generator().manual_seed(1)
    per, raw = filled(1000, 1000, g, beta=beta)
    idx, weights = per.sample(5000, generator=g)
    ref = reference_weights(reference_priorities(raw), idx, beta)
    assert torch.allclose(weights.double(), ref, rtol=1e-6, atol=0)
    assert float(weights.max()) <= 1.0


def test_unbiased_with_beta_one():
    """With beta = 1 the weighted mean of f over draws is the plain mean of f over the stored
    items (the weights' normalisation cancels in the ratio)."""
    g = torch.Generator().manual_seed(2)
    per, raw = filled(300, 400, g, beta=1.0)
    f = torch.randn(400, generator=g, dtype=torch.float64)
    idx, w = per.sample(400_000, generator=g)
    estimate = float((w.double() * f[idx]).sum() / w.double().sum())
    exact = float(f[:300].mean())
    assert abs(estimate - exact) < 0.02
    assert (idx < 300).all()  # never an unused slot


def test_ring_buffer_and_max_priority():
    per = PrioritizedReplay(4, alpha=1.0, eps=0.0)
    assert per.add(3).tolist() == [0, 1, 2] and len(per) == 3  # max priority 1 at first
    assert per.priorities.tolist() == [1.0, 1.0, 1.0, 0.0]
    per.update(torch.tensor([1]), torch.tensor([5.0]))
    assert float(per.max_priority) == 5.0
    assert per.add(3).tolist() == [3, 0, 1] and len(per) == 4  # wraps, overwrites 0 and 1
    assert per.priorities.tolist() == [5.0, 5.0, 1.0, 5.0]
    # The minimum follows overwrites: slot 2 (priority 1) is the only one left at 1.
    assert float(per.weights(torch.tensor([0]), beta=1.0)) == pytest.approx(1 / 5)
    per.add(1, torch.tensor([0.5]))  # slot 2 overwritten by a smaller priority
    assert float(per.weights(torch.tensor([0]), beta=1.0)) == pytest.approx(0.5 / 5)


def test_zero_priority_never_drawn_nor_in_the_minimum():
    g = torch.Generator().manual_seed(3)
    per = PrioritizedReplay(100, alpha=1.0, beta=1.0, eps=0.0)
    raw = torch.rand(100, generator=g) + 0.5
    raw[::4] = 0.0
    per.add(100, raw)
    idx, w = per.sample(20_000, generator=g)
    assert (raw[idx] > 0).all()
    assert torch.isfinite(w).all() and (w > 0).all()
    positive = raw[raw > 0]
    assert float(per.weights(torch.tensor([int((raw == positive.min()).nonzero()[0])]))) == 1.0


def test_errors():
    per = PrioritizedReplay(4)
    with pytest.raises(RuntimeError, match="the buffer is empty"):
        per.sample(2)
    with pytest.raises(ValueError, match=r"priorities\[1\] = nan is not finite and >= 0"):
        per.add(2, torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match=r"priorities\[0\] = -1(\.0)? is not finite and >= 0"):
        per.add(1, torch.tensor([-1.0]))
    assert len(per) == 0 and float(per._sum.total()) == 0  # nothing written
    with pytest.raises(ValueError, match="n = 5 is more than the capacity 4"):
        per.add(5)
    per.add(2)
    with pytest.raises(ValueError, match=r"indices\[1\] = 2 is out of range \[0, 2\)"):
        per.update(torch.tensor([0, 2]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="priorities must be a float32/float64 tensor of shape"):
        per.update(torch.tensor([0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        PrioritizedReplay(4, alpha=-1.0)
    with pytest.raises(TypeError, match="beta must be a real number"):
        PrioritizedReplay(4, beta="1")
    # The buffer's own name, not its trees' ("SumTree: capacity must be ...").
    with pytest.raises(ValueError, match="^PrioritizedReplay: capacity must be in"):
        PrioritizedReplay(0)
    with pytest.raises(TypeError, match="^PrioritizedReplay: capacity must be an int"):
        PrioritizedReplay(4.0)
    with pytest.raises(TypeError, match="^PrioritizedReplay: dtype must be float32 or float64"):
        PrioritizedReplay(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="^PrioritizedReplay: device 'bogus' is not available"):
        PrioritizedReplay(4, device="bogus")




def test_sample_errors_name_batch_size():
    """sample(-1) said "n must be >= 0": sample has no argument n."""
    per = PrioritizedReplay(4)
    per.add(2)
    with pytest.raises(ValueError, match="PrioritizedReplay.sample: batch_size must be >= 0"):
        per.sample(-1)
    with pytest.raises(TypeError, match="PrioritizedReplay.sample: batch_size must be an int"):
        per.sample(2.0)
    assert per.sample(np.int64(3))[0].shape == (3,)  # as the samplers take numpy ints
    assert per.add(np.int64(1)).tolist() == [2]


def test_beta_attribute_is_checked_when_set():
    """An invalid beta set as an attribute raised only at the next CPU sample, and on the
    CUDA path gave weights above 1 (beta = -1)."""
    per = PrioritizedReplay(4)
    per.beta = 1
    assert per.beta == 1.0
    with pytest.raises(ValueError, match="PrioritizedReplay: beta must be finite and >= 0"):
        per.beta = -1.0
    with pytest.raises(TypeError, match="PrioritizedReplay: beta must be a real number"):
        per.beta = "0.5"
    assert per.beta == 1.0


def test_all_zero_sample_raises_and_bad_input_changes_nothing():
    per = PrioritizedReplay(4, eps=0.0)
    per.add(3, torch.zeros(3))
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    with pytest.raises(RuntimeError, match="all priorities are zero"):
        per.sample(2, generator=g)
    assert torch.equal(g.get_state(), state)  # nothing drawn
    assert per.sample(0)[0].shape == (0,)
    per.update(torch.tensor([0, 2], dtype=torch.int32), torch.tensor([2.0, 3.0]))
    before = [t.clone() for t in (*per._trees, per.max_priority)]
    for idx, raw in ((torch.tensor([0, 3]), torch.tensor([9.0, 1.0])),
                     (torch.tensor([0, 1]), torch.tensor([9.0, -1.0]))):
        with pytest.raises(ValueError, match="PrioritizedReplay.update: "):
            per.update(idx, raw)
    with pytest.raises(ValueError, match=r"PrioritizedReplay.add: priorities\[1\] = inf"):
        per.add(2, torch.tensor([9.0, math.inf]))
    assert all(torch.equal(a, b) for a, b in zip(before, (*per._trees, per.max_priority)))
    assert float(per.max_priority) == 3.0 and len(per) == 3 and per.add(1).tolist() == [3]


def test_state_dict_round_trip():
    g = torch.Generator().manual_seed(4)
    a, _ = filled(40, 50, g)
    a.add(30, torch.rand(30, generator=g))  # wraps
    a.update(torch.tensor([3, 4]), torch.tensor([9.0, 0.0]))
    b = PrioritizedReplay(50)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.priorities, b.priorities) and len(b) == 50
    assert float(b.max_priority) == 9.0
    assert torch.equal(a.sample(100, generator=torch.Generator().manual_seed(0))[1],
                       b.sample(100, generator=torch.Generator().manual_seed(0))[1])
    assert torch.equal(a.add(3), b.add(3))



def _replay_state(per: PrioritizedReplay) -> list:
    return [t.clone() for t in (*per._trees, per.max_priority)] + [len(per), per._next, per.beta]


def _same_state(a: list, b: list) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("key, value, error, match", [
    ("priorities", [1.0] * 8, TypeError, r"state_dict\['priorities'\] must be a tensor"),
    ("priorities", torch.ones(8, dtype=torch.float64), ValueError,
     r"state_dict\['priorities'\] must be a torch.float32 tensor of shape \(8,\)"),
    ("priorities", torch.ones(7), ValueError, r"state_dict\['priorities'\] must be"),
    ("priorities", torch.tensor([1.0, math.nan, 1, 1, 1, 0, 0, 0]), ValueError,
     r"state_dict\['priorities'\]\[1\] = nan"),
    ("priorities", torch.tensor([1.0, 1, 1, 1, 1, 0, 2, 0]), ValueError,
     r"state_dict\['priorities'\] must be 0 at the slots not stored yet"),
    ("next", 8, ValueError, r"state_dict\['next'\] must be an int in \[0, 7\]"),
    ("next", -3, ValueError, r"state_dict\['next'\] must be an int"),
    ("next", 1.5, ValueError, r"state_dict\['next'\] must be an int"),
    ("next", 2, ValueError, r"state_dict\['next'\] must equal state_dict\['stored'\]"),
    ("stored", 9, ValueError, r"state_dict\['stored'\] must be an int in \[0, 8\]"),
    ("stored", None, ValueError, r"state_dict\['stored'\] must be an int"),
    ("max_priority", math.nan, ValueError, r"state_dict\['max_priority'\] must be a finite"),
    ("max_priority", -1.0, ValueError, r"state_dict\['max_priority'\] must be a finite"),
    ("max_priority", None, ValueError, r"state_dict\['max_priority'\] must be a finite"),
    ("beta", "x", ValueError, r"state_dict\['beta'\] must be a finite number"),
    ("beta", -1.0, ValueError, r"state_dict\['beta'\] must be a finite number"),
    ("capacity", torch.tensor([8, 8]), ValueError, r"state_dict\['capacity'\]"),
    ("alpha", torch.tensor([0.6, 0.6]), ValueError, r"state_dict\['alpha'\]"),
])
def test_load_state_dict_rejects_a_corrupt_state_and_changes_nothing(key, value, error, match):
    source = PrioritizedReplay(8)
    source.add(5, torch.arange(1.0, 6.0))
    state = {**source.state_dict(), key: value}
    per = PrioritizedReplay(8)
    per.add(3, torch.tensor([1.0, 2.0, 3.0]))
    before = _replay_state(per)
    with pytest.raises(error, match=f"PrioritizedReplay.load_state_dict: {match}"):
        per.load_state_dict(state)
    assert _same_state(before, _replay_state(per))
    with pytest.raises(TypeError, match="state_dict must be a dict, got list"):
        per.load_state_dict([("capacity", 8)])


def test_weights_of_slots_not_stored_raise():
    per = PrioritizedReplay(8)
    per.add(3, torch.tensor([1.0, 2.0, 3.0]))
    for bad in (torch.tensor([0, 5]), torch.tensor([-1]), torch.tensor([8])):
        with pytest.raises(ValueError, match=r"PrioritizedReplay.weights: indices\[\d\] = "
                                             r"-?\d+ is out of range \[0, 3\)"):
            per.weights(bad)
    with pytest.raises(TypeError, match="PrioritizedReplay.weights: indices must be a 1-D"):
        per.weights([0, 1])
    with pytest.raises(ValueError, match="PrioritizedReplay.weights: indices must be int64"):
        per.weights(torch.tensor([0.0]))
    assert per.weights(torch.tensor([0, 2], dtype=torch.int32)).shape == (2,)


@interpreted
def test_weights_of_slots_not_stored_on_the_cuda_path_are_nan_and_recorded():
    with cuda_path_on_cpu():
        per = PrioritizedReplay(8)
        per.add(3, torch.tensor([1.0, 2.0, 3.0]))
        w = per.weights(torch.tensor([0, 5, 2]))
        assert math.isnan(w[1]) and bool(torch.isfinite(w[[0, 2]]).all())
        with pytest.raises(RuntimeError, match=r"weights\(\) got an index out of range"):
            per.raise_errors()


def test_weights_identical_to_cpprb():
    cpprb = pytest.importorskip("cpprb")
    rng = np.random.default_rng(5)
    n = 1000
    raw = rng.random(n).astype(np.float32)
    rb = cpprb.PrioritizedReplayBuffer(n, {"obs": {}}, alpha=ALPHA, eps=EPS)
    rb.add(obs=np.zeros(n, np.float32), priorities=raw)
    sample = rb.sample(256, beta=BETA)
    per = PrioritizedReplay(n, alpha=ALPHA, beta=BETA, eps=EPS)
    per.add(n, torch.from_numpy(raw))
    ours = per.weights(torch.from_numpy(sample["indexes"].astype(np.int64)))
    np.testing.assert_allclose(ours.numpy(), sample["weights"], rtol=1e-5)


def test_docs_example_runs():
    scope = {}
    exec(docs_example("PrioritizedReplay("), scope)
    assert len(scope["per"]) == 256 and scope["weights"].shape == (256,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_never_syncs_and_records_errors():
    per = PrioritizedReplay(4096, device="cuda")
    per.add(4096, torch.rand(4096, device="cuda"))
    idx, w = per.sample(256)  # warm up (Triton compilation)
    torch.cuda.set_sync_debug_mode("error")
    try:
        slots = per.add(256)
        idx, w = per.sample(256)
        per.update(idx, torch.rand(256, device="cuda"))
        per.update(idx[:2], torch.tensor([1.0, -1.0], device="cuda"))  # dropped, recorded
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert slots.device.type == "cuda" and (w <= 1).all()
    with pytest.raises(RuntimeError, match="that batch was dropped"):
        per.raise_errors()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_weights_out_of_range_are_nan_without_a_sync():
    """An index beyond the capacity was an out-of-bounds read on CUDA (index_select)."""
    per = PrioritizedReplay(64, device="cuda")
    per.add(8, torch.rand(8, device="cuda"))
    per.weights(torch.tensor([0], device="cuda"))  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = per.weights(torch.tensor([0, 5000, 7, 9], device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isnan(w[[1, 3]]).all() and torch.isfinite(w[[0, 2]]).all()
    with pytest.raises(RuntimeError, match=r"weights\(\) got an index out of range"):
        per.raise_errors()
