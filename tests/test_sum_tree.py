"""Tests of is_kernels.SumTree and its ops (C++ on CPU; Triton through the interpreter)."""
import math

import numpy as np
import pytest
import torch
from helpers.chisquare import chisquare
from helpers.samplers import check_seeded_draws
from helpers.triton_env import interpreted

import is_kernels
from is_kernels import SumTree
from is_kernels.ops.sum_tree import heap_size

ops = torch.ops.is_kernels
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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


def reference_descent(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The level-by-level binary descent over a heap of fl64 child sums (the definition)."""
    p = heap_size(w.numel())
    heap = torch.zeros(2 * p, dtype=torch.float64)
    heap[p:p + w.numel()] = w.double()
    width = p // 2
    while width >= 1:  # level by level: heap[x] = heap[2x] + heap[2x + 1]
        heap[width:2 * width] = heap[2 * width:4 * width:2] + heap[2 * width + 1:4 * width:2]
        width //= 2
    x = torch.ones_like(u, dtype=torch.int64)
    r = u * heap[1]
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


@pytest.mark.parametrize("k, dtype", [(1, torch.float32), (5, torch.float64),
                                      (300, torch.float32), (4096, torch.float64),
                                      (70_000, torch.float32)])
def test_update_equals_rebuild(k, dtype):
    # The CPU update recomputes a level whole when it is at most 4k wide (on two threads when
    # wider than 2^14 nodes) and only at the batch's ancestors above that; the leaves' parents
    # right after each leaf. Batches with duplicated indices: the last value wins.
    g = torch.Generator().manual_seed(k)
    cap = 2**17 + 5
    w = sparse(cap, g).to(dtype)
    tree = tree_of(w)
    for _ in range(3):
        idx = torch.randint(0, cap, (k,), generator=g)
        idx[k // 2:k // 2 + k // 4] = idx[:k // 4]  # duplicates, with other values
        val = sparse(k, g).to(dtype)
        tree.update(idx, val)
        last = torch.full((cap,), -1).scatter_reduce_(0, idx, torch.arange(k), "amax")
        final = last[idx] == torch.arange(k)  # the last entry of each index
        w[idx[final]] = val[final]
        assert torch.equal(tree.values, w)
        assert torch.equal(tree._inner, ops.sum_tree_build(w))


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
    assert torch.equal(tree.values, before)


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
