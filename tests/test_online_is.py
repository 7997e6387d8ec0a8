"""The online importance sampler's ops (online_is_draw, online_is_update): C++ against a
reference and against the CUDA path, argument checks, opcheck."""

import pytest
import torch
from helpers.triton_env import INTERPRETER_WORKS, interpreted

from is_kernels.ops import online_is
from is_kernels.ops.online_is import mixture


# ---- the sampler's ops: C++ on CPU against their tensor-op composition (the CUDA kernels) --

def _op_state(n=50, seed=0, active_fraction=1.0):
    """(memory, seen, active, leaves, inner): a memory with scores, some samples unseen and
    (for active_fraction < 1) inactive samples with leaf 0."""
    g = torch.Generator().manual_seed(seed)
    memory = torch.rand(n, generator=g) + 0.05
    seen = torch.rand(n, generator=g) < 0.7
    active = torch.rand(n, generator=g) < active_fraction
    active[0] = True
    leaves = torch.where(active, memory, 0.0)
    return memory, seen, active, leaves, torch.ops.is_kernels.sum_tree_build(leaves)


def reference_draw(leaves, inner, memory, active_idx, u, uniform_mix, unbiased):
    """``online_is_draw`` from tensor ops and the sum tree op."""
    n = active_idx.shape[0]
    drawn = torch.ops.is_kernels.sum_tree_sample(leaves, inner, u[0])
    uniform = active_idx[(u[2] * n).long().clamp_(max=n - 1)]
    idx = torch.where((u[1] < uniform_mix) | (drawn < 0), uniform, drawn)
    if not unbiased:
        return idx, torch.ones(idx.shape)
    return idx, 1.0 / (n * mixture(memory[idx], inner[1], n, uniform_mix))


def draw_implementations():
    """The CPU op, and the Triton kernel on CPU tensors where the interpreter runs it."""
    impls = [torch.ops.is_kernels.online_is_draw]
    if INTERPRETER_WORKS:
        from is_kernels.ops import online_is_triton

        impls.append(online_is_triton.draw)
    return impls


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("active_fraction", [1.0, 0.4])
def test_draw_op_equals_reference(unbiased, active_fraction):
    memory, _, active, leaves, inner = _op_state(active_fraction=active_fraction)
    active_idx = active.nonzero().squeeze(1)
    u = torch.rand((3, 300), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    zero = torch.zeros_like(leaves)
    for draw in draw_implementations():
        args = (leaves, inner, memory, active_idx, u, 0.3, unbiased)
        idx, w = draw(*args)
        ref_idx, ref_w = reference_draw(*args)
        assert torch.equal(idx, ref_idx) and bool(active[idx].all())
        torch.testing.assert_close(w, ref_w, rtol=1e-6, atol=0)
        # An all-zero tree: every draw is uniform over the active samples, weights 1.
        args = (zero, torch.ops.is_kernels.sum_tree_build(zero), memory, active_idx, u, 0.3,
                True)
        idx, w = draw(*args)
        assert torch.equal(idx, reference_draw(*args)[0]) and bool(active[idx].all())
        torch.testing.assert_close(w, torch.ones(300))


@interpreted
@pytest.mark.parametrize("active_fraction", [1.0, 0.4])
def test_update_op_equals_the_cuda_kernel(active_fraction):
    """The C++ op against the kernels registered for CUDA, run on CPU."""
    state = _op_state(active_fraction=active_fraction)
    ref = [t.clone() for t in state]
    idx = torch.tensor([3, 17, 3, 49, 0, 17, 17])  # duplicates: the last one is kept
    scores = torch.rand(7, generator=torch.Generator().manual_seed(4)) * 3
    torch.ops.is_kernels.online_is_update(*state, idx, scores, 0.25)
    online_is.update_cuda(*ref, idx, scores, 0.25)
    for got, want in zip(state, ref):
        assert torch.equal(got, want)
    memory, seen, active, leaves, inner = state
    assert bool(seen[idx].all())
    assert torch.equal(leaves, torch.where(active, memory, 0.0))
    assert torch.equal(inner, torch.ops.is_kernels.sum_tree_build(leaves))


@pytest.mark.parametrize("idx,scores,match", [
    ([1, 50], [1.0, 2.0], r"idx must lie in \[0, 50\), got idx\[1\] = 50"),
    ([-1, 2], [1.0, 2.0], r"idx must lie in"),
    ([1, 2], [1.0, float("nan")], r"scores must be finite, got scores\[1\]"),
    ([1, 2], [float("inf"), 1.0], r"scores must be finite, got scores\[0\]"),
    ([1, 2], [1.0, -0.5], r"scores must be non-negative"),
])
def test_update_op_checks_before_writing(idx, scores, match):
    state = _op_state()
    before = [t.clone() for t in state]
    with pytest.raises(ValueError, match=match):
        torch.ops.is_kernels.online_is_update(*state, torch.tensor(idx), torch.tensor(scores),
                                              0.2)
    for got, want in zip(state, before):
        assert torch.equal(got, want)


@pytest.mark.parametrize("momentum,inner_size,match", [
    (1.0, None, r"momentum must be in \[0, 1\)"), (-0.1, None, "momentum must be in"),
    (0.2, 3, "inner must have shape"),
])
def test_update_op_checks_momentum_and_tree_before_writing(momentum, inner_size, match):
    state = list(_op_state())
    if inner_size is not None:
        state[4] = torch.zeros(inner_size, dtype=torch.float64)
    before = [t.clone() for t in state]
    for update in (torch.ops.is_kernels.online_is_update, online_is.update_cuda):
        with pytest.raises((ValueError, RuntimeError), match=match):
            update(*state, torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), momentum)
        for got, want in zip(state, before):
            assert torch.equal(got, want)


@pytest.mark.parametrize("shared,match", [
    ("idx_in_memory", "idx shares memory with memory"),
    ("idx_in_seen", "idx shares memory with seen"),
    ("idx_in_leaves", "idx shares memory with leaves"),
    ("idx_in_inner", "idx shares memory with inner"),
    ("memory_is_leaves", "memory and leaves share memory"),
])
def test_update_op_refuses_state_that_shares_memory(shared, match):
    """idx is read while the op writes the memory, seen and the tree: idx inside one of them
    (each a valid index until a write lands on it) raises, as does one tensor passed as both
    memory and leaves, naming both arguments and changing nothing."""
    state = list(_op_state(n=64))
    memory, seen, _, leaves, inner = state
    memory[:2] = 0.0  # as int64: index 0
    seen[:8] = False
    leaves[:2] = 0.0
    inner[:2] = 0.0
    state[4] = inner = torch.ops.is_kernels.sum_tree_build(leaves)
    inner[0] = 0.0  # (slot 0 is unused)
    idx = {"idx_in_memory": memory[:2].view(torch.int64), "idx_in_seen": seen[:8].view(torch.int64),
           "idx_in_leaves": leaves[:2].view(torch.int64),
           "idx_in_inner": inner[:1].view(torch.int64)}.get(shared, torch.tensor([0]))
    if shared == "memory_is_leaves":
        state[0] = state[3]
    before = [t.clone() for t in state]
    for update in (torch.ops.is_kernels.online_is_update, online_is.update_cuda):
        with pytest.raises(RuntimeError, match=f"online_is_update: {match}"):
            update(*state, idx, torch.ones(idx.numel()), 0.2)
        for got, want in zip(state, before):
            assert torch.equal(got, want)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -10.0])
def test_update_op_names_a_memory_value_that_is_not_valid(value):
    """A seen sample whose memory is not finite and >= 0 gives an invalid leaf: the error
    names the memory entry (not the leaf values the op passes on to the tree update)."""
    state = _op_state()
    memory, seen = state[0], state[1]
    memory[3], seen[3] = value, True
    before = [t.clone() for t in state]
    with pytest.raises(ValueError, match=r"online_is_update: memory\[3\] = .* and scores\[1\] "
                       r"= 1 give the memory value"):
        torch.ops.is_kernels.online_is_update(*state, torch.tensor([0, 3]),
                                              torch.tensor([2.0, 1.0]), 0.2)
    for got, want in zip(state, before):
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


def test_update_op_reads_scores_before_writing():
    """Scores are read before anything is written: scores in the memory are accepted, and
    give what a copy gives."""
    state = list(_op_state())
    ref = [t.clone() for t in state]
    idx = torch.tensor([5, 1, 7, 1])
    torch.ops.is_kernels.online_is_update(*state, idx, state[0][:4], 0.2)
    torch.ops.is_kernels.online_is_update(*ref, idx, ref[0][:4].clone(), 0.2)
    for got, want in zip(state, ref):
        assert torch.equal(got, want)


@pytest.mark.parametrize("active_idx,uniform_mix,match", [
    ([10**12], 1.0, r"active_idx must lie in \[0, 50\), got active_idx\[0\]"),
    ([3, -1], 1.0, r"active_idx must lie in"), ([3], 1.5, r"uniform_mix must be in \[0, 1\]"),
])
def test_draw_op_checks_its_arguments(active_idx, uniform_mix, match):
    memory, _, _, leaves, inner = _op_state()
    u = torch.full((3, 4), 0.75, dtype=torch.float64)  # the pick lands on the last entry
    with pytest.raises(ValueError, match=match):
        torch.ops.is_kernels.online_is_draw(leaves, inner, memory, torch.tensor(active_idx), u,
                                            uniform_mix, False)


@interpreted
@pytest.mark.parametrize("idx,scores", [([1, 2], [1.0, float("nan")]), ([1, 2], [-0.5, 1.0])])
def test_cuda_kernel_drops_a_bad_batch(idx, scores):
    """The CUDA update cannot raise without a sync: a bad batch leaves the state unchanged
    (run here on CPU tensors)."""
    state = _op_state()
    before = [t.clone() for t in state]
    online_is.update_cuda(*state, torch.tensor(idx), torch.tensor(scores), 0.2)
    for got, want in zip(state, before):
        assert torch.equal(got, want)
    online_is.update_cuda(*state, torch.tensor([1, 50]), torch.ones(2), 0.2)
    for got, want in zip(state, before):
        assert torch.equal(got, want)


def test_ops_opcheck():
    memory, seen, active, leaves, inner = _op_state(active_fraction=0.5)
    active_idx = active.nonzero().squeeze(1)
    u = torch.rand((3, 40), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.library.opcheck(torch.ops.is_kernels.online_is_draw,
                          (leaves, inner, memory, active_idx, u, 0.1, True))
    torch.library.opcheck(torch.ops.is_kernels.online_is_update,
                          (memory, seen, active, leaves, inner, torch.tensor([4, 9, 4]),
                           torch.tensor([0.5, 2.0, 1.5]), 0.2))


def test_draw_op_rejects_inner_nodes_that_do_not_match_the_leaves():
    """N = 5: heap slots 5..7 are padding. Inner nodes leading there made the draw read memory
    out of bounds (and return index 6 with weight inf); the op raises instead. The CUDA
    descent (run here on CPU tensors) returns -1 there, so the draw falls back to a uniform
    pick: never an index out of range."""
    memory, _, active, leaves, inner = _op_state(n=5)
    bad = torch.zeros_like(inner)
    bad[1] = bad[3] = bad[7] = 1.0  # root -> 3 -> 7: leaf 7 - 8 + 8 = padding slot 6
    active_idx = active.nonzero().squeeze(1)
    u = torch.rand((3, 64), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="inner does not match leaves"):
        torch.ops.is_kernels.online_is_draw(leaves, bad, memory, active_idx, u, 0.1, True)
    if INTERPRETER_WORKS:
        from is_kernels.ops import online_is_triton

        idx, w = online_is_triton.draw(leaves, bad, memory, active_idx, u, 0.1, True)
        assert bool(((idx >= 0) & (idx < 5)).all()) and bool(torch.isfinite(w).all())


@pytest.mark.parametrize("impl", range(2))
def test_draw_op_total_beyond_float32_max(impl):
    """Scores whose sum passes float32 max: the total stays float64, so the weights are
    1/(n p) of the true mixture (not 1/λ for all, from a float32 total of inf)."""
    impls = draw_implementations()
    if impl >= len(impls):
        pytest.skip("the Triton interpreter does not run here")
    n = 8
    memory = torch.full((n,), 3e38)
    memory[0] = 1e38
    leaves = memory.clone()
    inner = torch.ops.is_kernels.sum_tree_build(leaves)
    u = torch.rand((3, 500), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    idx, w = impls[impl](leaves, inner, memory, torch.arange(n), u, 0.1, True)
    p = 0.9 * memory.double() / memory.double().sum() + 0.1 / n
    torch.testing.assert_close(w, (1.0 / (n * p[idx])).float(), rtol=1e-6, atol=0)
    assert bool((w < 5).all())
