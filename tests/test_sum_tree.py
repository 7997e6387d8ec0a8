"""Tests of is_kernels.SumTree and its ops (C++ on CPU; Triton through the interpreter)."""
import contextlib
import math

import numpy as np
import pytest
import torch
from helpers.chisquare import chisquare
from helpers.samplers import check_seeded_draws
from helpers.triton_env import interpreted

import is_kernels
from is_kernels import SumTree
from is_kernels.ops.cuda_path import cuda_path_on_cpu
from is_kernels.ops.sum_tree import heap_size

ops = torch.ops.is_kernels
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The C++ kernels, and the CUDA path's checks on CPU tensors (which raise before a launch).
PATHS = [pytest.param(contextlib.nullcontext, id="cpp"),
         pytest.param(cuda_path_on_cpu, id="cuda_path", marks=interpreted)]


def gof_pvalue(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit of draws to probs; cells of expectation < 5 are merged."""
    n = draws.numel()
    counts = torch.bincount(draws.cpu(), minlength=probs.numel()).double().numpy()
    expected = probs.double().cpu().numpy() * n
    assert counts[expected == 0].sum() == 0, "an index of probability 0 was drawn"
    order = np.argsort(expected)
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order[expected[order] > 0]:
        acc_o += counts[i]
        acc_e += expected[i]
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    obs[-1] += acc_o
    exp[-1] += acc_e
    obs, exp = np.array(obs), np.array(exp)
    return chisquare(obs, exp * obs.sum() / exp.sum())[1]


def skewed(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) ** 8 * 100


def sparse(n: int, g: torch.Generator) -> torch.Tensor:
    w = torch.rand(n, generator=g)
    w[torch.rand(n, generator=g) < 0.9] = 0
    return w


def tree_of(w: torch.Tensor) -> SumTree:
    t = SumTree(w.numel(), dtype=w.dtype, device=w.device)
    t.build(w)
    return t


@pytest.mark.parametrize("make", [skewed, sparse])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chisquare(make, dtype):
    g = torch.Generator().manual_seed(1)
    w = make(1000, g).to(dtype)
    tree = tree_of(w)
    draws = tree.sample(200_000, generator=g)
    assert draws.dtype == torch.int64 and draws.shape == (200_000,)
    assert gof_pvalue(draws, w / w.sum()) > 1e-3


def test_update_then_chisquare():
    g = torch.Generator().manual_seed(2)
    tree = SumTree(777)
    w = torch.zeros(777)
    for _ in range(5):
        idx = torch.randint(0, 777, (300,), generator=g)
        val = sparse(300, g)
        tree.update(idx, val)
        w[idx] = val  # CPU index_put_: the last duplicate wins
    assert torch.equal(tree.values, w)
    assert gof_pvalue(tree.sample(100_000, generator=g), w / w.sum()) > 1e-3


def adversarial_weights() -> torch.Tensor:
    """Zeros next to tiny and huge weights, at every level of the tree."""
    w = torch.zeros(4096)
    w[1::7] = 1e30
    w[3::11] = 1e-38
    w[5::13] = 1.4e-45  # the smallest float32 subnormal
    w[2048:] = 0
    w[4000] = 3.0e38
    return w


def boundary_uniforms(w: torch.Tensor) -> torch.Tensor:
    """u at, just below and just above every cumulative boundary, plus the extremes."""
    total = w.double().sum()
    c = torch.cumsum(w.double(), 0) / total
    c = c[(c > 0) & (c < 1)]
    u = torch.cat([c, torch.nextafter(c, torch.zeros_like(c)),
                   torch.nextafter(c, torch.ones_like(c)),
                   torch.tensor([0.0, 1 - 2**-53, 0.5])])
    return u[(u >= 0) & (u < 1)].contiguous()


def test_zero_weight_never_returned_adversarial():
    w = adversarial_weights()
    tree = tree_of(w)
    for u in (boundary_uniforms(w), torch.rand(200_000, dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(3))):
        out = ops.sum_tree_sample(tree.values, tree._inner, u)
        assert (out >= 0).all() and (out < w.numel()).all()
        assert (w[out] > 0).all()


def reference_descent(w: torch.Tensor, u: torch.Tensor, mass: bool = False) -> torch.Tensor:
    """The level-by-level binary descent over a heap of fl64 child sums (the definition), of
    u * total, or (``mass``) of u itself."""
    p = heap_size(w.numel())
    heap = torch.zeros(2 * p, dtype=torch.float64)
    heap[p:p + w.numel()] = w.double()
    width = p // 2
    while width >= 1:  # level by level: heap[x] = heap[2x] + heap[2x + 1]
        heap[width:2 * width] = heap[2 * width:4 * width:2] + heap[2 * width + 1:4 * width:2]
        width //= 2
    x = torch.ones_like(u, dtype=torch.int64)
    r = u if mass else u * heap[1]
    while bool((x < p).any()):
        left, right = heap[2 * x], heap[2 * x + 1]
        go_right = (right > 0) & (r >= left)
        r = torch.where(go_right, r - left, r)
        x = 2 * x + go_right.long()
    return x - p


@pytest.mark.parametrize("cap", [1, 2, 3, 5, 8, 9, 17, 100, 1000, 5000])
def test_descent_equals_reference(cap):
    # The CPU kernel reorders the draws (and reads whole vectors of them): same result.
    g = torch.Generator().manual_seed(cap)
    w = sparse(cap, g) + (torch.rand(cap, generator=g) < 0.05) * 1e30 if cap > 1 else torch.ones(1)
    w[torch.randint(0, cap, (1,), generator=g)] = 0.5  # not all zero
    u = torch.cat([torch.rand(3000, dtype=torch.float64, generator=g), boundary_uniforms(w)])
    assert torch.equal(ops.sum_tree_sample(w, ops.sum_tree_build(w), u), reference_descent(w, u))


# Heights 14 to 22: below depth 14 the CPU kernel steps 3 levels at a time (it reads the 8
# nodes 3 levels down and recomputes the 2 levels in between), the last step onto the
# leaves; these heights leave every remainder of (height - 14) mod 3 to the one-level steps.
@pytest.mark.parametrize("cap, dtype", [(2**13 + 1, torch.float64), (2**14 + 1, torch.float32),
                                        (2**16 - 3, torch.float64), (2**16 + 3, torch.float32),
                                        (2**17 + 5, torch.float64), (2**18 + 1, torch.float32),
                                        (2**20, torch.float32), (2**21 + 3, torch.float32)])
def test_deep_descent_equals_reference(cap, dtype):
    g = torch.Generator().manual_seed(cap)
    w = (sparse(cap, g) + (torch.rand(cap, generator=g) < 0.01) * 1e30).to(dtype)
    edges = boundary_uniforms(w)
    u = torch.cat([torch.rand(20_000, dtype=torch.float64, generator=g),
                   edges[torch.randint(0, edges.numel(), (3001,), generator=g)]])
    inner = ops.sum_tree_build(w)
    out = ops.sum_tree_sample(w, inner, u)  # 23001 draws: two threads
    assert torch.equal(out, reference_descent(w, u))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.sum_tree_sample(w, inner, u), out)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 511, 512, 513, 1027])
def test_descent_any_number_of_draws(n):
    # The CPU kernel descends 4 draws per vector and 512 per pass (padding the rest).
    g = torch.Generator().manual_seed(n)
    w = sparse(2**16 + 3, g)
    u = torch.rand(n, dtype=torch.float64, generator=g)
    assert torch.equal(ops.sum_tree_sample(w, ops.sum_tree_build(w), u), reference_descent(w, u))


def test_zero_weight_after_zeroing_updates():
    # Zeroing leaves by update must leave no residue in the sums (no delta propagation).
    g = torch.Generator().manual_seed(4)
    tree = SumTree(1000, dtype=torch.float64)
    tree.build(torch.rand(1000, generator=g, dtype=torch.float64) * 1e10)
    keep = torch.tensor([17, 600])
    zero = torch.tensor([i for i in range(1000) if i not in (17, 600)])
    tree.update(zero, torch.zeros(zero.numel(), dtype=torch.float64))
    tree.update(keep, torch.tensor([1e-300, 1e-300], dtype=torch.float64))
    assert float(tree.total()) == 2e-300
    out = tree.sample(10_000, generator=g)
    assert set(out.tolist()) <= {17, 600}


def test_duplicates_last_wins():
    tree = SumTree(8)
    tree.update(torch.tensor([3, 5, 3, 3, 5]), torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.values.tolist() == [0, 0, 0, 4.0, 0, 0, 0, 0]
    assert float(tree.total()) == 4.0
    assert (tree.sample(100) == 3).all()


def test_int32_indices():
    tree = SumTree(4)
    tree.update(torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1.0, 2.0]))
    assert tree.values.tolist() == [0.0, 1.0, 2.0, 0.0]


def test_no_drift_million_updates():
    g = torch.Generator().manual_seed(5)
    cap, batch = 1 << 16, 4096
    tree = SumTree(cap)
    tree.build(torch.rand(cap, generator=g))
    for _ in range(-(-1_000_000 // batch)):
        idx = torch.randint(0, cap, (batch,), generator=g)
        val = torch.rand(batch, generator=g) * torch.rand(batch, generator=g).lt(0.3) * 1e3
        tree.update(idx, val)
    # Every inner node equals a fresh rebuild from the leaves, bit for bit ...
    assert torch.equal(tree._inner, ops.sum_tree_build(tree.values))
    # ... and the total is the exact sum of the float32 leaves to float64 rounding.
    exact = math.fsum(tree.values.double().tolist())
    assert abs(float(tree.total()) - exact) <= 1e-12 * exact


def min_values(n: int, g: torch.Generator) -> torch.Tensor:
    """Values of either sign, 10% +inf (empty slots of a min tree)."""
    v = torch.randn(n, generator=g)
    v[torch.rand(n, generator=g) < 0.1] = math.inf
    return v


@pytest.mark.parametrize("k, dtype", [(1, torch.float32), (5, torch.float64),
                                      (300, torch.float32), (4096, torch.float64),
                                      (70_000, torch.float32)])
@pytest.mark.parametrize("kind", ["sum", "min"])
def test_update_equals_rebuild(k, dtype, kind):
    # The CPU update recomputes a level whole when it is at most 4k wide (on two threads when
    # wider than 2^14 nodes) and only at the batch's ancestors above that; the leaves' parents
    # right after each leaf. Batches with duplicated indices: the last value wins.
    g = torch.Generator().manual_seed(k)
    cap = 2**17 + 5
    tree_class, values, build = ((SumTree, sparse, ops.sum_tree_build) if kind == "sum" else
                                 (is_kernels.MinTree, min_values, ops.min_tree_build))
    w = values(cap, g).to(dtype)
    tree = tree_class(cap, dtype=dtype)
    tree.build(w)
    for _ in range(3):
        idx = torch.randint(0, cap, (k,), generator=g)
        idx[k // 2:k // 2 + k // 4] = idx[:k // 4]  # duplicates, with other values
        val = values(k, g).to(dtype)
        tree.update(idx, val)
        last = torch.full((cap,), -1).scatter_reduce_(0, idx, torch.arange(k), "amax")
        final = last[idx] == torch.arange(k)  # the last entry of each index
        w[idx[final]] = val[final]
        assert torch.equal(tree.values, w)
        assert torch.equal(tree._inner, build(w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["sum", "min"])
def test_update_stops_at_unchanged_nodes_bit_exact(kind, dtype):
    """The CPU update stops climbing where a node's bits do not change. Values rewritten with
    themselves, values above a subtree's minimum, +0/-0 swaps, runs of slots with one value
    and duplicates all leave the inner nodes equal, bit for bit, to a rebuild."""
    g = torch.Generator().manual_seed(40)
    cap = 5003
    tree_class, build = ((SumTree, ops.sum_tree_build) if kind == "sum" else
                         (is_kernels.MinTree, ops.min_tree_build))
    w = torch.rand(cap, generator=g, dtype=torch.float64).to(dtype)
    w[::3], w[1::6] = 0.0, -0.0
    tree = tree_class(cap, dtype=dtype)
    tree.build(w)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}
    for step in range(24):
        idx = torch.randint(0, cap, (300,), generator=g)
        if step % 4 == 0:  # the same values
            val = tree.values[idx]
        elif step % 4 == 1:  # larger values (a min tree's minima mostly stay)
            val = tree.values[idx] + 1
        elif step % 4 == 2:  # zeros of either sign
            val = torch.where(torch.rand(300, generator=g) < 0.5, 0.0, -0.0).to(dtype)
        else:  # a run of slots with one value, wrapping around
            idx = (int(torch.randint(0, cap, (), generator=g)) + torch.arange(300)) % cap
            val = torch.full((300,), float(torch.rand((), generator=g)), dtype=dtype)
        idx[150:200] = idx[:50]  # duplicates
        tree.update(idx, val)
        last = torch.full((cap,), -1).scatter_reduce_(0, idx, torch.arange(300), "amax")
        final = last[idx] == torch.arange(300)
        w[idx[final]] = val[final]
        assert torch.equal(tree.values.view(bits[dtype]), w.view(bits[dtype]))
        inner_bits = torch.int64 if kind == "sum" else bits[dtype]
        assert torch.equal(tree._inner.view(inner_bits), build(w).view(inner_bits))


def test_inner_nodes_are_child_sums():
    g = torch.Generator().manual_seed(6)
    tree = tree_of(torch.rand(37, generator=g))
    tree.update(torch.randint(0, 37, (50,), generator=g), torch.rand(50, generator=g))
    p = heap_size(37)
    heap = torch.zeros(2 * p, dtype=torch.float64)
    heap[1:p] = tree._inner[1:]
    heap[p:p + 37] = tree.values.double()
    for x in range(1, p):
        assert heap[x] == heap[2 * x] + heap[2 * x + 1]


@pytest.mark.parametrize("cap", [1, 2, 3, 7, 8, 9, 255, 257, 1023, 1025])
def test_capacities(cap):
    g = torch.Generator().manual_seed(cap)
    tree = SumTree(cap)
    w = torch.rand(cap, generator=g) + 0.1
    w[-1] = 0.0 if cap > 1 else 1.0
    tree.build(w)
    out = tree.sample(5000, generator=g)
    assert out.min() >= 0 and out.max() < cap
    assert (w[out] > 0).all()
    if cap > 3:
        assert gof_pvalue(out, w / w.sum()) > 1e-3
    # Only the last leaf positive: every draw is cap - 1.
    tree.update(torch.arange(cap), torch.zeros(cap))
    tree.update(torch.tensor([cap - 1]), torch.tensor([0.5]))
    assert (tree.sample(100, generator=g) == cap - 1).all()


def test_capacity_2_pow_25():
    cap = 1 << 25
    tree = SumTree(cap)
    idx = torch.tensor([0, 12345, cap // 2, cap - 2, cap - 1])
    tree.update(idx, torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0]))
    assert float(tree.total()) == 10.0
    out = tree.sample(20_000, generator=torch.Generator().manual_seed(7))
    assert set(out.unique().tolist()) == {0, 12345, cap // 2, cap - 1}
    counts = torch.bincount(torch.searchsorted(idx, out), minlength=5)
    assert counts[3] == 0
    assert gof_pvalue(torch.searchsorted(idx, out), torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4])) > 1e-3


def test_state_dict_round_trip():
    g = torch.Generator().manual_seed(8)
    a = SumTree(300, dtype=torch.float64)
    a.update(torch.randint(0, 300, (500,), generator=g), torch.rand(500, generator=g,
                                                                     dtype=torch.float64))
    b = SumTree(300, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.values, b.values) and torch.equal(a._inner, b._inner)
    assert torch.equal(a.sample(1000, generator=torch.Generator().manual_seed(0)),
                       b.sample(1000, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="capacity"):
        SumTree(301, dtype=torch.float64).load_state_dict(a.state_dict())
    with pytest.raises(TypeError, match="dtype"):
        SumTree(300).load_state_dict(a.state_dict())


def test_generator_determinism():
    check_seeded_draws(tree_of(torch.rand(100, generator=torch.Generator().manual_seed(9))))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_values_leave_state_unchanged(bad):
    tree = tree_of(torch.tensor([1.0, 2.0, 3.0]))
    before = (tree.values.clone(), tree._inner.clone())
    with pytest.raises(RuntimeError, match=r"values\[1\] = .* not a valid weight"):
        tree.update(torch.tensor([0, 1]), torch.tensor([5.0, bad]))
    with pytest.raises(RuntimeError, match=r"leaves\[2\] = .* not a valid weight"):
        tree.build(torch.tensor([1.0, 1.0, bad]))
    assert torch.equal(tree.values, before[0]) and torch.equal(tree._inner, before[1])


def test_float64_values_whose_sum_would_overflow_are_refused():
    """Leaves of a float64 tree are at most float64 max / (2 capacity): its sums stay finite
    (1e308 + 1e308 = inf made every draw the last leaf)."""
    tree = SumTree(2, dtype=torch.float64)
    tree.build(torch.tensor([1.0, 3.0], dtype=torch.float64))
    before = (tree.values.clone(), tree._inner.clone())
    huge = torch.tensor([1e308, 1e308], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"leaves\[0\] = .* is too large: at most"):
        tree.build(huge)
    with pytest.raises(RuntimeError, match=r"values\[0\] = .* is too large"):
        tree.update(torch.tensor([0]), huge[:1])
    assert torch.equal(tree.values, before[0]) and torch.equal(tree._inner, before[1])
    unchecked = SumTree(2, dtype=torch.float64, check_values=False)
    unchecked.build(huge)  # recorded, not applied
    with pytest.raises(RuntimeError, match="SumTree"):
        unchecked.raise_errors()
    limit = torch.finfo(torch.float64).max / 4
    tree.build(torch.full((2,), limit, dtype=torch.float64))
    assert torch.isfinite(tree.total())
    counts = torch.bincount(tree.sample(20_000, generator=torch.Generator().manual_seed(0)))
    assert abs(int(counts[0]) - 10_000) < 500


def test_bad_arguments():
    tree = tree_of(torch.tensor([1.0, 2.0, 3.0]))
    before = tree.values.clone()
    with pytest.raises(RuntimeError, match=r"indices\[1\] = 3 is out of range"):
        tree.update(torch.tensor([0, 3]), torch.tensor([1.0, 1.0]))
    with pytest.raises(RuntimeError, match=r"indices\[0\] = -1 is out of range"):
        tree.update(torch.tensor([-1]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match="values must have the dtype"):
        tree.update(torch.tensor([0]), torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(TypeError, match="indices must be int64 or int32"):
        tree.update(torch.tensor([0.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="values must have the shape of indices"):
        tree.update(torch.tensor([0, 1]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="tree's device"):
        tree.build(torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="values must have shape"):
        tree.build(torch.ones(4))
    with pytest.raises(ValueError, match="n must be >= 0"):
        tree.sample(-1)
    with pytest.raises(TypeError, match="n must be an int"):
        tree.sample(2.0)
    with pytest.raises(ValueError, match="capacity must be in"):
        SumTree(0)
    with pytest.raises(ValueError, match="capacity must be in"):
        SumTree(2**31)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        SumTree(3, dtype=torch.float16)
    with pytest.raises(ValueError, match="^SumTree: device 'bogus' is not available"):
        SumTree(3, device="bogus")  # torch's RuntimeError did not name the argument
    assert torch.equal(tree.values, before)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["sum_tree", "min_tree"])
def test_update_refuses_inputs_that_share_memory_with_the_tree(kind, path):
    """Indices read from the tree's own memory would change under the update's writes (a leaf
    written over an index that passed the checks: a write out of bounds), values likewise, and
    a tensor passed as both leaves and inner is no tree: each raises, naming both arguments,
    and changes nothing."""
    build, update = getattr(ops, f"{kind}_build"), getattr(ops, f"{kind}_update")
    leaves = torch.zeros(8, dtype=torch.float64)  # as int64: indices 0, all valid
    inner = build(leaves)
    zeros = torch.zeros(8, dtype=torch.float64)
    cases = [(leaves, inner, leaves.view(torch.int64), torch.ones(8, dtype=torch.float64),
              "indices shares memory with leaves"),
             (leaves, inner, inner.view(torch.int64), torch.ones(8, dtype=torch.float64),
              "indices shares memory with inner"),
             (leaves, inner, torch.arange(8).flip(0), leaves, "values shares memory with leaves"),
             (leaves, inner, torch.arange(4), inner[4:], "values shares memory with inner"),
             (leaves, inner, torch.arange(4), leaves[1::2], "values shares memory with leaves"),
             (leaves, leaves, torch.tensor([1]), torch.ones(1, dtype=torch.float64),
              "leaves and inner share memory")]
    for lv, inn, idx, values, msg in cases:
        before = lv.clone(), inn.clone()
        with path(), pytest.raises(RuntimeError, match=f"{kind}_update: {msg}"):
            update(lv, inn, idx, values)
        assert torch.equal(lv, before[0]) and torch.equal(inn, before[1])
    assert torch.equal(leaves, zeros) and torch.equal(inner, build(zeros))
    update(leaves, inner, torch.arange(4), leaves[4:].clone())  # a copy is fine


def test_all_zero_sample_policy():
    tree = SumTree(5)
    with pytest.raises(RuntimeError, match="all weights are zero"):
        tree.sample(3)
    assert torch.equal(tree.sample(3, empty="minus_one"), torch.full((3,), -1))
    with pytest.raises(ValueError, match="empty must be 'raise' or 'minus_one'"):
        tree.sample(3, empty="uniform")
    # The op itself returns -1 for every draw of an all-zero tree.
    u = torch.rand(4, dtype=torch.float64)
    assert torch.equal(ops.sum_tree_sample(tree.values, tree._inner, u), torch.full((4,), -1))
    tree.update(torch.tensor([2]), torch.tensor([1.0]))
    assert torch.equal(tree.sample(3, empty="minus_one"), torch.full((3,), 2))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_errors(device):
    tree = SumTree(3, device=device, check_values=False)
    assert repr(tree).endswith("check_values=False)")
    tree.build(torch.tensor([1.0, 2.0, 3.0], device=device))
    before = (tree.values.clone(), tree._inner.clone())

    def unchanged():
        return torch.equal(tree.values, before[0]) and torch.equal(tree._inner, before[1])

    tree.update(torch.tensor([0, 1], device=device),
                torch.tensor([5.0, float("nan")], device=device))
    tree.update(torch.tensor([7], device=device), torch.tensor([1.0], device=device))
    assert unchanged()
    with pytest.raises(RuntimeError, match="SumTree: an update batch had a weight"):
        tree.raise_errors()  # the first error is kept
    tree.raise_errors()  # cleared
    tree.update(torch.tensor([-1], device=device), torch.tensor([1.0], device=device))
    with pytest.raises(RuntimeError, match="index out of range"):
        tree.state_dict()
    tree.build(torch.tensor([1.0, float("inf"), 0.0], device=device))
    assert unchanged()
    with pytest.raises(RuntimeError, match="build.. got a weight"):
        tree.raise_errors()
    tree.update(torch.tensor([0, 2], device=device), torch.tensor([0.0, 0.5], device=device))
    assert tree.values.tolist() == [0.0, 2.0, 0.5]
    tree.build(torch.zeros(3, device=device))
    assert (tree.sample(4, empty="minus_one") == -1).all()
    tree.raise_errors()  # minus_one records nothing
    assert (tree.sample(4) == -1).all()
    with pytest.raises(RuntimeError, match="weights are all zero; those draws are -1"):
        tree.raise_errors()
    assert tree.state_dict()["capacity"] == 3


def test_check_values_default_and_type():
    assert SumTree(3).check_values is True
    assert SumTree(3, check_values=False).check_values is False
    with pytest.raises(TypeError, match="check_values must be None or a bool"):
        SumTree(3, check_values=1)


def test_sample_op_rejects_u_outside_unit_interval():
    tree = tree_of(torch.ones(4))
    with pytest.raises(RuntimeError, match=r"u\[0\] = 1 is not in \[0, 1\)"):
        ops.sum_tree_sample(tree.values, tree._inner, torch.tensor([1.0], dtype=torch.float64))


def test_opcheck():
    g = torch.Generator().manual_seed(12)
    leaves = torch.rand(37, generator=g)
    inner = ops.sum_tree_build(leaves)
    torch.library.opcheck(ops.sum_tree_build, (leaves,))
    torch.library.opcheck(ops.sum_tree_update,
                          (leaves.clone(), inner.clone(), torch.tensor([3, 36, 3]),
                           torch.tensor([0.5, 0.0, 2.0])))
    torch.library.opcheck(ops.sum_tree_sample,
                          (leaves, inner, torch.rand(64, dtype=torch.float64, generator=g)))


def test_public_exports():
    assert {"SumTree", "AliasTable", "cross_entropy_with_score"} <= set(is_kernels.__all__)


# ---- Triton kernels on CPU tensors (TRITON_INTERPRET=1, set by conftest without a GPU) ----

@interpreted
@pytest.mark.parametrize("cap", [1, 2, 5, 1000])
@pytest.mark.parametrize("fused_max", [1 << 14, 64])
def test_triton_matches_cpp(cap, fused_max):
    from is_kernels.ops import sum_tree_triton as st

    g = torch.Generator().manual_seed(cap)
    w = sparse(cap, g) if cap > 1 else torch.ones(1)
    inner = st.build(w)
    assert torch.equal(inner, ops.sum_tree_build(w))
    k = 300 if fused_max > 300 else 3000  # multi-program: three programs
    idx = torch.randint(0, cap, (k,), generator=g)
    val = sparse(k, g)
    ref_l, ref_i = w.clone(), inner.clone()
    ops.sum_tree_update(ref_l, ref_i, idx, val)
    l, i = w.clone(), inner.clone()
    err = torch.zeros((), dtype=torch.int32)
    st.update(l, i, idx, val, err=err, fused_max=fused_max)
    assert torch.equal(l, ref_l) and torch.equal(i, ref_i) and int(err) == 0
    # An invalid batch writes nothing and records its code (an index out of range first).
    for bad_idx, bad_val, code in ((cap, 1.0, 1), (0, float("nan"), 2), (-1, -1.0, 1)):
        l2, i2 = w.clone(), inner.clone()
        err.zero_()
        st.update(l2, i2, torch.cat([idx, torch.tensor([bad_idx])]),
                  torch.cat([val, torch.tensor([bad_val])]), err=err, fused_max=fused_max)
        assert torch.equal(l2, w) and torch.equal(i2, inner) and int(err) == code
        st.update(l2, i2, idx, val, fused_max=fused_max)  # the workspace was reset
        assert torch.equal(l2, ref_l) and torch.equal(i2, ref_i)
    if ref_i[1] > 0:
        u = torch.cat([torch.rand(500, dtype=torch.float64, generator=g),
                       boundary_uniforms(ref_l)])
        out = st.sample(ref_l, ref_i, u)
        assert torch.equal(out, ops.sum_tree_sample(ref_l, ref_i, u))


@interpreted
def test_triton_adversarial_and_all_zero():
    from is_kernels.ops import sum_tree_triton as st

    w = adversarial_weights()
    inner = st.build(w)
    out = st.sample(w, inner, boundary_uniforms(w))
    assert (w[out] > 0).all()
    zero = torch.zeros(3)
    assert (st.sample(zero, st.build(zero), torch.rand(4, dtype=torch.float64)) == -1).all()


# ---- CUDA -----------------------------------------------------------------------------------

@cuda
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(13)
    w = sparse(100_003, g)
    cpu, dev = tree_of(w), tree_of(w.cuda())
    assert torch.equal(dev._inner.cpu(), cpu._inner)
    for k in (10, 50_000):  # fused and per-level paths
        idx = torch.randint(0, 100_003, (k,), generator=g)
        val = sparse(k, g)
        cpu.update(idx, val)
        dev.update(idx.cuda(), val.cuda())
        assert torch.equal(dev.values.cpu(), cpu.values)
        assert torch.equal(dev._inner.cpu(), cpu._inner)
    u = torch.rand(10_000, dtype=torch.float64, generator=g)
    assert torch.equal(ops.sum_tree_sample(dev.values, dev._inner, u.cuda()).cpu(),
                       ops.sum_tree_sample(cpu.values, cpu._inner, u))
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = dev.sample(100_000, generator=gen)
    assert gof_pvalue(out, cpu.values / cpu.values.sum()) > 1e-3


@cuda
def test_cuda_check_values_raises_at_once():
    tree = SumTree(3, device="cuda", check_values=True)
    tree.build(torch.tensor([1.0, 2.0, 3.0], device="cuda"))
    before = tree._inner.clone()
    with pytest.raises(RuntimeError, match="not a valid weight"):
        tree.update(torch.tensor([0, 1], device="cuda"),
                    torch.tensor([1.0, float("nan")], device="cuda"))
    with pytest.raises(RuntimeError, match="out of range"):
        tree.update(torch.tensor([5], device="cuda"), torch.tensor([1.0], device="cuda"))
    assert torch.equal(tree._inner, before)
    with pytest.raises(RuntimeError, match="all weights are zero"):
        SumTree(4, device="cuda", check_values=True).sample(2)


@cuda
def test_cuda_default_never_syncs():
    tree = SumTree(4096, device="cuda")
    assert tree.check_values is False
    tree.build(torch.rand(4096, device="cuda"))
    idx = torch.randint(0, 4096, (256,), device="cuda")
    val = torch.rand(256, device="cuda")
    tree.update(idx, val)
    tree.sample(256)  # warm up (Triton compilation)
    torch.cuda.set_sync_debug_mode("error")
    try:
        tree.update(idx, val)
        out = tree.sample(256)
        tree.sample(256, empty="minus_one")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (tree.values[out] > 0).all()
    tree.raise_errors()


@cuda
def test_cuda_graph_capture():
    tree = tree_of(torch.rand(4096, device="cuda"))
    idx = torch.randint(0, 4096, (256,), device="cuda")
    val = torch.rand(256, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    tree.update(idx, val)
    tree.sample(256, generator=gen)  # warm up (Triton compilation)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree.update(idx, val)
        out = tree.sample(256)
    graph.replay()
    torch.cuda.synchronize()
    assert (tree.values[out] > 0).all()


# ---- range queries, scan_lower_bound and the min tree ---------------------------------------

def random_ranges(cap: int, n: int, g: torch.Generator):
    """n ranges [start, end) within [0, cap], with the empty, full and end-at-cap cases."""
    a = torch.randint(0, cap + 1, (n,), generator=g)
    b = torch.randint(0, cap + 1, (n,), generator=g)
    start, end = torch.minimum(a, b), torch.maximum(a, b)
    extra_s = torch.tensor([0, 0, cap, cap // 2, 0])
    extra_e = torch.tensor([cap, 0, cap, cap, 1])
    return torch.cat([start, extra_s]), torch.cat([end, extra_e])


@pytest.mark.parametrize("cap", [1, 2, 3, 7, 100, 1000, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_query_equals_float64_reference(cap, dtype):
    g = torch.Generator().manual_seed(cap)
    w = (sparse(cap, g) * 1e3).to(dtype)
    tree = tree_of(w)
    start, end = random_ranges(cap, 500, g)
    got = tree.query(start, end)
    assert got.dtype == torch.float64 and got.shape == start.shape
    exact = torch.tensor([math.fsum(w[s:e].double().tolist()) for s, e in
                          zip(start.tolist(), end.tolist())], dtype=torch.float64)
    assert torch.allclose(got, exact, rtol=1e-12, atol=0)
    assert float(tree.query(0, cap)) == float(tree.total())  # the root, bit for bit
    assert float(tree.query(3 % cap, 3 % cap)) == 0.0
    assert tree.query(0, cap).shape == ()


@pytest.mark.parametrize("cap", [1, 2, 3, 7, 100, 1000, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_min_query_equals_reference(cap, dtype):
    g = torch.Generator().manual_seed(cap)
    v = (torch.randn(cap, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    v[torch.rand(cap, generator=g) < 0.2] = math.inf
    tree = is_kernels.MinTree(cap, dtype=dtype)
    tree.build(v)
    start, end = random_ranges(cap, 500, g)
    got = tree.query(start, end)
    assert got.dtype == dtype
    ref = torch.stack([v[s:e].min() if e > s else torch.tensor(math.inf, dtype=dtype)
                       for s, e in zip(start.tolist(), end.tolist())])
    assert torch.equal(got, ref)
    assert torch.equal(tree.min(), v.min())


def test_min_tree_starts_empty():
    tree = is_kernels.MinTree(5)
    assert torch.equal(tree.values, torch.full((5,), math.inf))
    assert float(tree.min()) == math.inf and float(tree.query(1, 4)) == math.inf
    assert torch.equal(tree._inner, ops.min_tree_build(tree.values))


def test_min_duplicates_last_wins():
    tree = is_kernels.MinTree(8)
    tree.update(torch.tensor([3, 5, 3, 3, 5]), torch.tensor([1.0, 2.0, 0.5, 4.0, 7.0]))
    assert tree.values[3] == 4.0 and tree.values[5] == 7.0 and float(tree.min()) == 4.0


@pytest.mark.parametrize("cap", [1, 2, 5, 100, 5000, 2**16 + 3])
def test_scan_lower_bound_equals_reference(cap):
    g = torch.Generator().manual_seed(cap)
    w = sparse(cap, g) if cap > 1 else torch.ones(1)
    w[torch.randint(0, cap, (1,), generator=g)] = 0.5  # not all zero
    tree = tree_of(w)
    total = float(tree.total())
    edges = boundary_uniforms(w) * total
    mass = torch.cat([torch.rand(3000, dtype=torch.float64, generator=g) * total, edges,
                      torch.tensor([0.0, total, total * 1.5, 1e300], dtype=torch.float64)])
    got = tree.scan_lower_bound(mass)
    assert torch.equal(got, reference_descent(w, mass, mass=True))
    assert (w[got] > 0).all()
    # The definition: prefix(i - 1) <= m < prefix(i), away from rounding at the boundaries.
    prefix = torch.cumsum(w.double(), 0)
    leaf = torch.searchsorted(prefix, mass, right=True)
    below = torch.where(leaf > 0, prefix[(leaf - 1).clamp_min(0)], 0.0)
    above = prefix[leaf.clamp_max(cap - 1)]
    inside = (mass < total * (1 - 1e-9)) & (mass - below > 1e-9 * total)
    inside &= above - mass > 1e-9 * total
    assert inside.sum() > 2000
    assert torch.equal(got[inside], leaf[inside])
    # Masses at or above the total: the last leaf of weight > 0.
    last = int(w.nonzero().max())
    assert (got[mass >= total] == last).all()
    assert tree.scan_lower_bound(0.25).shape == ()
    assert tree.scan_lower_bound(mass.reshape(-1, 1)[:10]).shape == (10, 1)


def test_scan_lower_bound_chisquare_and_zero_tree():
    g = torch.Generator().manual_seed(20)
    w = skewed(1000, g)
    w[::3] = 0
    tree = tree_of(w)
    mass = torch.rand(200_000, dtype=torch.float64, generator=g) * tree.total()
    assert gof_pvalue(tree.scan_lower_bound(mass), w / w.sum()) > 1e-3
    assert (SumTree(4).scan_lower_bound(torch.tensor([0.0, 1.0])) == -1).all()


def test_scan_lower_bound_bad_mass():
    tree = tree_of(torch.tensor([1.0, 2.0]))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(RuntimeError, match=r"mass\[1\] = .* is not finite and >= 0"):
            tree.scan_lower_bound(torch.tensor([0.5, bad]))
    with pytest.raises(TypeError, match="mass must be a real tensor"):
        tree.scan_lower_bound(torch.tensor([True]))
    with pytest.raises(TypeError, match="mass must be a float or a tensor"):
        tree.scan_lower_bound("1")
    deferred = SumTree(2, check_values=False)
    deferred.build(torch.tensor([1.0, 2.0]))
    assert deferred.scan_lower_bound(torch.tensor([0.5, math.nan, 2.0])).tolist() == [0, -1, 1]
    with pytest.raises(RuntimeError, match="scan_lower_bound.. got a mass"):
        deferred.raise_errors()


@pytest.mark.parametrize("tree_class", [SumTree, is_kernels.MinTree])
def test_query_bad_ranges(tree_class):
    tree = tree_class(5)
    for s, e in ((-1, 2), (3, 2), (0, 6)):
        with pytest.raises(RuntimeError, match=r"range \[start\[0\], end\[0\]\) = .* is not "
                                               r"within \[0, 5\)"):
            tree.query(s, e)
    with pytest.raises(TypeError, match="start must be an int"):
        tree.query(0.0, 2)
    with pytest.raises(TypeError, match="end must be an int or an int64/int32 tensor"):
        tree.query(0, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="must broadcast together"):
        tree.query(torch.tensor([0, 1]), torch.tensor([1, 2, 3]))
    deferred = tree_class(5, check_values=False)
    got = deferred.query(torch.tensor([0, 3, 1]), torch.tensor([5, 2, 1]))
    assert math.isnan(float(got[1])) and not got[[0, 2]].isnan().any()
    with pytest.raises(RuntimeError, match="query.. got a range"):
        deferred.raise_errors()


def test_min_tree_bad_values_leave_state_unchanged():
    tree = is_kernels.MinTree(3)
    tree.build(torch.tensor([1.0, -2.0, math.inf]))  # any value but NaN
    before = (tree.values.clone(), tree._inner.clone())
    with pytest.raises(RuntimeError, match=r"values\[1\] = nan is not a valid value"):
        tree.update(torch.tensor([0, 1]), torch.tensor([5.0, math.nan]))
    with pytest.raises(RuntimeError, match=r"leaves\[2\] = nan is not a valid value"):
        tree.build(torch.tensor([1.0, 1.0, math.nan]))
    with pytest.raises(RuntimeError, match=r"indices\[0\] = 3 is out of range"):
        tree.update(torch.tensor([3]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match="values must have the dtype"):
        tree.update(torch.tensor([0]), torch.tensor([1.0], dtype=torch.float64))
    assert torch.equal(tree.values, before[0]) and torch.equal(tree._inner, before[1])
    deferred = is_kernels.MinTree(3, check_values=False)
    deferred.update(torch.tensor([0]), torch.tensor([math.nan]))
    deferred.build(torch.tensor([math.nan, 0.0, 0.0]))
    assert float(deferred.min()) == math.inf
    with pytest.raises(RuntimeError, match="MinTree: an update batch had a NaN value"):
        deferred.raise_errors()
    with pytest.raises(ValueError, match="capacity must be in"):
        is_kernels.MinTree(0)


def test_min_tree_state_dict_round_trip():
    g = torch.Generator().manual_seed(21)
    a = is_kernels.MinTree(300, dtype=torch.float64)
    a.update(torch.randint(0, 300, (100,), generator=g),
             torch.rand(100, generator=g, dtype=torch.float64))
    b = is_kernels.MinTree(300, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.values, b.values) and torch.equal(a._inner, b._inner)
    assert repr(b) == ("MinTree(capacity=300, device=cpu, dtype=torch.float64, "
                       "check_values=True)")
    with pytest.raises(TypeError, match="dtype"):
        is_kernels.MinTree(300).load_state_dict(a.state_dict())


def test_opcheck_queries_and_min_tree():
    g = torch.Generator().manual_seed(22)
    leaves = torch.rand(37, generator=g)
    inner = ops.sum_tree_build(leaves)
    start, end = torch.tensor([0, 3, 10, 37]), torch.tensor([37, 3, 20, 37])
    torch.library.opcheck(ops.sum_tree_query, (leaves, inner, start, end))
    torch.library.opcheck(ops.sum_tree_scan_lower_bound,
                          (leaves, inner, torch.rand(64, dtype=torch.float64, generator=g) * 5))
    torch.library.opcheck(ops.min_tree_build, (leaves,))
    min_inner = ops.min_tree_build(leaves)
    torch.library.opcheck(ops.min_tree_update, (leaves.clone(), min_inner.clone(),
                                                torch.tensor([3, 36, 3]),
                                                torch.tensor([0.5, -1.0, 2.0])))
    torch.library.opcheck(ops.min_tree_query, (leaves, min_inner, start, end))


@interpreted
@pytest.mark.parametrize("cap", [1, 2, 5, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_queries_and_min_tree_match_cpp(cap, dtype):
    from is_kernels.ops import sum_tree_triton as st

    g = torch.Generator().manual_seed(cap)
    w = (sparse(cap, g) if cap > 1 else torch.ones(1)).to(dtype)
    start, end = random_ranges(cap, 40, g)
    sum_inner = ops.sum_tree_build(w)
    assert torch.equal(st.query(w, sum_inner, start, end),
                       ops.sum_tree_query(w, sum_inner, start, end))
    mass = torch.cat([torch.rand(200, dtype=torch.float64, generator=g) * sum_inner[1] * 1.1,
                      boundary_uniforms(w) * sum_inner[1]])
    assert torch.equal(st.scan_lower_bound(w, sum_inner, mass),
                       ops.sum_tree_scan_lower_bound(w, sum_inner, mass))
    bad = torch.tensor([-1.0, math.nan, math.inf, 0.5], dtype=torch.float64)
    assert st.scan_lower_bound(w, sum_inner, bad)[:3].tolist() == [-1, -1, -1]
    v = torch.randn(cap, generator=g).to(dtype)
    v[::3] = math.inf
    min_inner = st.build(v, is_min=True)
    assert torch.equal(min_inner, ops.min_tree_build(v))
    assert torch.equal(st.query(v, min_inner, start, end, is_min=True),
                       ops.min_tree_query(v, min_inner, start, end))
    idx = torch.randint(0, cap, (50,), generator=g)
    val = torch.randn(50, generator=g).to(dtype)
    ref_l, ref_i = v.clone(), min_inner.clone()
    ops.min_tree_update(ref_l, ref_i, idx, val)
    for fused_max in (1 << 14, 16):
        l, i = v.clone(), min_inner.clone()
        err = torch.zeros((), dtype=torch.int32)
        st.update(l, i, idx, val, err=err, fused_max=fused_max, is_min=True)
        assert torch.equal(l, ref_l) and torch.equal(i, ref_i) and int(err) == 0
        # A NaN (or an index out of range) drops the batch and records its code.
        for bad_idx, bad_val, code in ((0, math.nan, 2), (cap, 1.0, 1)):
            st.update(l, i, torch.cat([idx, torch.tensor([bad_idx])]),
                      torch.cat([val, torch.tensor([bad_val], dtype=dtype)]), err=err,
                      fused_max=fused_max, is_min=True)
            assert torch.equal(l, ref_l) and torch.equal(i, ref_i) and int(err) == code
            err.zero_()
    # Ranges out of bounds give NaN, never an out-of-bounds read.
    out = st.query(v, min_inner, torch.tensor([-1, 0, 2]), torch.tensor([1, cap + 1, 1]),
                   is_min=True)
    assert out.isnan().all()


@cuda
def test_cuda_queries_and_min_tree_match_cpu():
    g = torch.Generator().manual_seed(23)
    cap = 100_003
    v = torch.rand(cap, generator=g)
    cpu, dev = is_kernels.MinTree(cap), is_kernels.MinTree(cap, device="cuda")
    cpu.build(v)
    dev.build(v.cuda())
    for k in (10, 50_000):
        idx = torch.randint(0, cap, (k,), generator=g)
        val = torch.rand(k, generator=g)
        cpu.update(idx, val)
        dev.update(idx.cuda(), val.cuda())
        assert torch.equal(dev._inner.cpu(), cpu._inner)
    start, end = random_ranges(cap, 1000, g)
    assert torch.equal(dev.query(start.cuda(), end.cuda()).cpu(), cpu.query(start, end))
    s = tree_of(v)
    d = tree_of(v.cuda())
    assert torch.equal(d.query(start.cuda(), end.cuda()).cpu(), s.query(start, end))
    mass = torch.rand(10_000, dtype=torch.float64, generator=g) * s.total()
    assert torch.equal(d.scan_lower_bound(mass.cuda()).cpu(), s.scan_lower_bound(mass))


# ---- prioritized replay's ops: set_priorities, add_priorities, sample_weighted --------------

def tree_pair(cap: int, dtype: torch.dtype):
    s, m = SumTree(cap, dtype=dtype), is_kernels.MinTree(cap, dtype=dtype)
    return s, m, (s.values, s.inner_nodes, m.values, m.inner_nodes)


def max_of(value: float = 1.0) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def assert_trees_consistent(s: SumTree, m: "is_kernels.MinTree") -> None:
    """Both trees' inner nodes are, bit for bit, those of a rebuild from their leaves."""
    assert torch.equal(s.inner_nodes.view(torch.int64),
                       ops.sum_tree_build(s.values).view(torch.int64))
    bits = torch.int32 if m.values.dtype == torch.float32 else torch.int64
    assert torch.equal(m.inner_nodes.view(bits), ops.min_tree_build(m.values).view(bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_set_priorities_equals_reference(dtype):
    g = torch.Generator().manual_seed(30)
    cap, alpha, eps = 1000, 0.6, 1e-4
    s, m, trees = tree_pair(cap, dtype)
    expected = torch.zeros(cap, dtype=dtype)
    most, expected_max = max_of(2.0), 2.0
    for k in (1, 300, 2000):
        idx = torch.randint(0, cap, (k,), generator=g)
        raw = torch.rand(k, generator=g, dtype=torch.float64) * 5
        raw[::7] = 0.0
        raw[1:40:3] = raw[0]  # repeats of one priority
        raw_max = float(raw.max())
        largest = ops.sum_tree_set_priorities(*trees, most, idx, raw, alpha, eps, cap)
        assert largest.dtype == torch.float64 and float(largest) == raw_max
        expected_max = max(expected_max, raw_max)
        assert float(most) == expected_max  # raised in place
        last = torch.full((cap,), -1).scatter_reduce_(0, idx, torch.arange(k), "amax")
        final = last[idx] == torch.arange(k)  # the last entry of each index wins
        expected[idx[final]] = (raw[final].to(dtype) + eps).pow(alpha)
        assert torch.allclose(s.values, expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
        on_min = torch.where(s.values > 0, s.values, math.inf)
        assert torch.equal(m.values[expected > 0], on_min[expected > 0])
        assert_trees_consistent(s, m)


def test_set_priorities_zero_goes_to_inf_and_errors_change_nothing():
    s, m, trees = tree_pair(8, torch.float32)
    most = max_of()
    ops.sum_tree_set_priorities(*trees, most, torch.tensor([1, 2]), torch.tensor([0.0, 3.0]),
                                1.0, 0.0, 8)
    assert s.values[1] == 0 and m.values[1] == math.inf and float(m.min()) == 3.0
    assert float(most) == 3.0
    before = [t.clone() for t in (*trees, most)]
    bad = [(torch.tensor([0, 5]), torch.tensor([1.0, 1.0]), r"indices\[1\] = 5 is out of range "
            r"\[0, 4\)"),
           (torch.tensor([0, 1]), torch.tensor([9.0, math.nan]), r"priorities\[1\] = nan is not"),
           (torch.tensor([0]), torch.tensor([-1.0]), r"priorities\[0\] = -1 is not finite"),
           (torch.tensor([0, 1]), torch.tensor([9.0, 1e30]), r"gives the weight .* = inf"),
           (torch.tensor([0, 1]), torch.tensor([9.0, 2.0]).double(), r"indices\[1\] = 1 is out"),
           ]
    for idx, raw, msg in bad:
        limit = 1 if raw.dtype == torch.float64 else 4
        with pytest.raises(RuntimeError, match=msg):
            ops.sum_tree_set_priorities(*trees, most, idx, raw, 2.0, 0.0, limit)
    assert all(torch.equal(a, b) for a, b in zip((*trees, most), before))
    with pytest.raises(RuntimeError, match="alpha must be finite and >= 0"):
        ops.sum_tree_set_priorities(*trees, most, torch.tensor([0]), torch.tensor([1.0]), -1.0,
                                    0.0, 8)
    with pytest.raises(RuntimeError, match="max_priority must be a float64 0-dim tensor"):
        ops.sum_tree_set_priorities(*trees, torch.ones(1, dtype=torch.float64),
                                    torch.tensor([0]), torch.tensor([1.0]), 1.0, 0.0, 8)
    with pytest.raises(RuntimeError, match="min tree must have the capacity"):
        other = is_kernels.MinTree(9)
        ops.sum_tree_set_priorities(trees[0], trees[1], other.values, other.inner_nodes, most,
                                    torch.tensor([0]), torch.tensor([1.0]), 1.0, 0.0, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_priorities_equals_set_priorities(dtype):
    """The add's slots wrap around the ring; its priorities (given, or max_priority) give the
    trees, bit for bit, that set_priorities gives on the same slots."""
    g = torch.Generator().manual_seed(34)
    cap, alpha, eps = 1000, 0.6, 1e-4
    s, m, trees = tree_pair(cap, dtype)
    ref_s, ref_m, ref = tree_pair(cap, dtype)
    most, ref_most = max_of(), max_of()
    start = 0
    for n, given in ((700, True), (256, False), (300, True), (1000, False), (0, True)):
        raw = torch.rand(n, generator=g, dtype=dtype) * 3 if given else None
        slots, largest = ops.sum_tree_add_priorities(*trees, most, start, n, raw, alpha, eps)
        assert torch.equal(slots, (start + torch.arange(n)) % cap)
        ref_raw = raw if given else ref_most.expand(n)
        ref_largest = ops.sum_tree_set_priorities(*ref, ref_most, slots, ref_raw, alpha, eps,
                                                  cap)
        assert float(largest) == float(ref_largest) and float(most) == float(ref_most)
        for a, b in zip((*trees, most), (*ref, ref_most)):
            assert torch.equal(a, b)
        assert_trees_consistent(s, m)
        start = (start + n) % cap


def test_add_priorities_errors_change_nothing():
    s, m, trees = tree_pair(8, torch.float32)
    most = max_of(2.0)
    ops.sum_tree_add_priorities(*trees, most, 0, 8, torch.rand(8), 1.0, 0.0)
    before = [t.clone() for t in (*trees, most)]
    bad = [((8, 1, None), "start must be in \\[0, 8\\), got 8"),
           ((-1, 1, None), "start must be in"),
           ((0, 9, None), "n must be in \\[0, 8\\], got 9"),
           ((6, 3, torch.tensor([1.0, math.inf, 2.0])), r"priorities\[1\] = inf is not finite"),
           ((6, 3, torch.tensor([1.0, 2.0])), "priorities must have the shape"),
           ((6, 2, torch.tensor([1, 2])), "priorities must be float32 or float64")]
    for (start, n, raw), msg in bad:
        with pytest.raises(RuntimeError, match=msg):
            ops.sum_tree_add_priorities(*trees, most, start, n, raw, 1.0, 0.0)
    assert all(torch.equal(a, b) for a, b in zip((*trees, most), before))


@pytest.mark.parametrize("path", PATHS)
def test_priorities_refuse_indices_and_trees_that_share_memory(path):
    """set_priorities reads its indices while it writes the trees: indices in the memory of a
    tree or of max_priority raise, and so do (set and add) a sum tree passed as the min tree
    and a max_priority inside a tree, naming both arguments and changing nothing. Raw
    priorities are read before anything is written: the stored priorities are accepted."""
    s, m, trees = tree_pair(8, torch.float64)
    most = max_of()
    ops.sum_tree_set_priorities(*trees, most, torch.arange(8), torch.rand(8, dtype=torch.float64),
                                0.5, 0.0, 8)
    before = [t.clone() for t in (*trees, most)]
    one = torch.tensor([1.0])
    sl, si, ml, mi = trees
    for args, msg in [((sl, si, sl, si, most), "sum_leaves and min_leaves share memory"),
                      ((sl, si, ml, si, most), "sum_inner and min_inner share memory"),
                      ((sl, si, ml, mi, si[1]), "sum_inner and max_priority share memory")]:
        with path(), pytest.raises(RuntimeError, match=f"sum_tree_set_priorities: {msg}"):
            ops.sum_tree_set_priorities(*args, torch.tensor([0]), one, 1.0, 0.0, 8)
        with path(), pytest.raises(RuntimeError, match=f"sum_tree_add_priorities: {msg}"):
            ops.sum_tree_add_priorities(*args, 0, 1, None, 1.0, 0.0)
    for name, t in zip(("sum_leaves", "sum_inner", "min_leaves", "min_inner", "max_priority"),
                       (*trees, most)):
        with path(), pytest.raises(RuntimeError, match=f"indices shares memory with {name}"):
            ops.sum_tree_set_priorities(*trees, most, t.view(-1)[:1].view(torch.int64), one,
                                        1.0, 0.0, 8)
    assert all(torch.equal(a, b) for a, b in zip((*trees, most), before))
    # Raw priorities read from the trees: the same as from a copy.
    ref_s, ref_m, ref = tree_pair(8, torch.float64)
    ref_most = max_of()
    for t, r in zip((*ref, ref_most), (*trees, most)):
        t.copy_(r)
    idx = torch.tensor([3, 0, 5, 1])
    ops.sum_tree_set_priorities(*trees, most, idx, s.values[:4], 0.5, 0.0, 8)
    ops.sum_tree_set_priorities(*ref, ref_most, idx, ref_s.values[:4].clone(), 0.5, 0.0, 8)
    ops.sum_tree_add_priorities(*trees, most, 6, 4, m.values[2:6], 0.5, 0.0)
    ops.sum_tree_add_priorities(*ref, ref_most, 6, 4, ref_m.values[2:6].clone(), 0.5, 0.0)
    assert all(torch.equal(a, b) for a, b in zip((*trees, most), (*ref, ref_most)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_weighted_equals_sample_and_reference(dtype):
    """The draws are those of sum_tree_sample with the uniforms torch.rand gives from the same
    generator state, which the op advances as torch.rand would."""
    g = torch.Generator().manual_seed(31)
    s, m, trees = tree_pair(500, dtype)
    raw = torch.rand(500, generator=g, dtype=torch.float64)
    raw[::5] = 0.0
    ops.sum_tree_set_priorities(*trees, max_of(), torch.arange(500), raw, 0.7, 0.0, 500)
    state = g.get_state()
    idx, w = ops.sum_tree_sample_weighted(*trees, 4000, 0.4, g)
    after = torch.rand(3, generator=g)
    g.set_state(state)
    u = torch.rand(4000, dtype=torch.float64, generator=g)
    assert torch.equal(torch.rand(3, generator=g), after)
    assert torch.equal(idx, ops.sum_tree_sample(s.values, s.inner_nodes, u))
    prio = s.values.double()
    ref = (prio[idx] / prio[prio > 0].min()).pow(-0.4)
    assert w.dtype == dtype and torch.allclose(w.double(), ref, rtol=1e-5, atol=0)
    torch.manual_seed(5)  # no generator: the default one
    idx, _ = ops.sum_tree_sample_weighted(*trees, 100, 0.4)
    torch.manual_seed(5)
    u = torch.rand(100, dtype=torch.float64)
    assert torch.equal(idx, ops.sum_tree_sample(s.values, s.inner_nodes, u))
    zero = tree_pair(4, dtype)[2]
    idx, w = ops.sum_tree_sample_weighted(*zero, 3, 0.4)
    assert (idx == -1).all() and w.isnan().all()
    for n, beta, msg in ((-1, 0.4, "n must be in"), (3, -0.5, "beta must be finite and >= 0")):
        with pytest.raises(RuntimeError, match=msg):
            ops.sum_tree_sample_weighted(*trees, n, beta)
    assert ops.sum_tree_sample_weighted(*trees, 0, 0.4)[0].shape == (0,)


def test_opcheck_prioritized_replay_ops():
    g = torch.Generator().manual_seed(32)
    _, _, trees = tree_pair(37, torch.float32)
    raw = torch.rand(37, generator=g)
    torch.library.opcheck(ops.sum_tree_set_priorities,
                          (*[t.clone() for t in trees], max_of(), torch.tensor([3, 36, 3]),
                           torch.tensor([0.5, 0.0, 2.0]), 0.6, 1e-4, 37))
    for priorities in (None, torch.rand(20, generator=g)):
        torch.library.opcheck(ops.sum_tree_add_priorities,
                              (*[t.clone() for t in trees], max_of(), 30, 20, priorities, 0.6,
                               1e-4))
    ops.sum_tree_set_priorities(*trees, max_of(), torch.arange(37), raw, 0.6, 1e-4, 37)
    torch.library.opcheck(ops.sum_tree_sample_weighted, (*trees, 64, 0.4))


@cuda
def test_cuda_prioritized_replay_ops_match_cpu():
    g = torch.Generator().manual_seed(33)
    cap = 10_007
    cpu = tree_pair(cap, torch.float32)[2]
    s, m = SumTree(cap, device="cuda"), is_kernels.MinTree(cap, device="cuda")
    dev = (s.values, s.inner_nodes, m.values, m.inner_nodes)
    most, most_dev = max_of(), max_of().cuda()
    idx = torch.randint(0, cap, (3000,), generator=g)
    raw = torch.rand(3000, generator=g)
    ops.sum_tree_set_priorities(*cpu, most, idx, raw, 0.6, 1e-4, cap)
    largest = ops.sum_tree_set_priorities(*dev, most_dev, idx.cuda(), raw.cuda(), 0.6, 1e-4,
                                          cap)
    assert float(largest) == float(raw.max()) == float(most_dev)
    assert torch.equal(dev[3].cpu(), cpu[3])
    assert torch.allclose(dev[0].cpu(), cpu[0], rtol=1e-6)
    bad = ops.sum_tree_set_priorities(*dev, most_dev, idx[:2].cuda(),
                                      torch.tensor([1.0, -1.0]).cuda(), 0.6, 1e-4, cap)
    assert bad.isnan() and torch.allclose(dev[0].cpu(), cpu[0], rtol=1e-6)
    assert float(most_dev) == float(raw.max())
    slots, _ = ops.sum_tree_add_priorities(*dev, most_dev, cap - 3, 5, None, 0.6, 1e-4)
    assert slots.tolist() == [cap - 3, cap - 2, cap - 1, 0, 1]
    i_dev, w_dev = ops.sum_tree_sample_weighted(*dev, 1000, 0.4)
    assert i_dev.shape == (1000,) and bool((i_dev >= 0).all())
    assert torch.isfinite(w_dev).all() and float(w_dev.max()) <= 1.0


@pytest.mark.parametrize("cap", [5, 100, 3000])
def test_sample_op_rejects_inner_nodes_that_do_not_match_the_leaves(cap):
    """Inner nodes that claim weight where the leaves have none (the padding, or a leaf of
    weight 0): the descent would end there; the op raises instead of returning it."""
    leaves = torch.rand(cap, dtype=torch.float64) + 0.1
    inner = torch.ops.is_kernels.sum_tree_build(leaves)
    p = inner.numel()
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)[:-1]
    padded = inner.clone()
    if cap < p:  # all weight on the last heap node: the descent ends in the padding
        padded[1:] = 0.0
        x = p - 1
        while x >= 1:
            padded[x] = 1.0
            x //= 2
        with pytest.raises(ValueError, match="inner does not match leaves .* padding"):
            torch.ops.is_kernels.sum_tree_sample(leaves, padded, u)
    # Leaves zeroed behind the tree's back: the stale inner nodes lead to leaves of weight 0.
    with pytest.raises(ValueError, match="inner does not match leaves .* of weight 0"):
        torch.ops.is_kernels.sum_tree_sample(torch.zeros_like(leaves), inner, u)


def test_load_state_dict_type_errors_name_the_field():
    tree = SumTree(4)
    with pytest.raises(TypeError, match=r"state_dict\['values'\] must be a torch.Tensor"):
        tree.load_state_dict({"capacity": 4, "values": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        tree.load_state_dict([("capacity", 4)])
    # A tensor capacity raised torch's "Boolean value of Tensor ... is ambiguous".
    for capacity in (torch.tensor([4, 4]), 4.0, "4"):
        with pytest.raises(ValueError, match=r"SumTree.load_state_dict: state_dict\['capacity'\] "
                                             r"is .*, this tree has 4"):
            tree.load_state_dict({"capacity": capacity, "values": torch.ones(4)})
    assert float(tree.total()) == 0.0
