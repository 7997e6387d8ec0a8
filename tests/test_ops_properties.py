"""The bad-input contract of every public op, on generated inputs (hypothesis): each call
either raises a clear error (naming the op) and leaves its mutable arguments unchanged, or
returns a correct result, and never an index out of range. Run under the sanitizers
(.ci/sanitizers), these also check that no input makes a C++ kernel read or write out of
bounds. The raw ops get tables and trees that their build ops did not make."""
import math

import pytest
import torch

import is_kernels

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import given, settings, strategies as st  # noqa: E402

ops = torch.ops.is_kernels
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
ERRORS = (ValueError, TypeError, IndexError, RuntimeError)

# Floats that reach every branch: 0, subnormals, huge, inf, NaN, negatives.
SPECIAL = [0.0, 5e-324, 1e-310, 1.0, 3e38, 1e300, math.inf, -math.inf, math.nan, -1.0]
floats = st.one_of(st.sampled_from(SPECIAL), st.floats(0.0, 10.0))
sizes = st.integers(1, 40)


def tensor_of(values, dtype):
    return torch.tensor(values, dtype=dtype)


@st.composite
def vectors(draw, n, dtype=torch.float64, elements=floats):
    return tensor_of(draw(st.lists(elements, min_size=n, max_size=n)), dtype)


@st.composite
def uniforms(draw, rows, n):
    """float64 [rows, n] in [0, 1), or (rarely) with an entry outside it."""
    u = torch.tensor(draw(st.lists(st.floats(0.0, 1.0, exclude_max=True),
                                   min_size=rows * n, max_size=rows * n)),
                     dtype=torch.float64).view(rows, n)
    if rows * n and draw(st.integers(0, 9)) == 0:
        u.view(-1)[draw(st.integers(0, rows * n - 1))] = draw(st.sampled_from([1.0, -0.1,
                                                                               math.nan]))
    return u


def raises_naming(op_names, fn, *args):
    """fn(*args), or None if it raised an error naming the op (one of op_names, split by
    "|")."""
    try:
        return fn(*args)
    except ERRORS as e:
        assert any(name in str(e) for name in op_names.split("|")), \
            f"{type(e).__name__} does not name {op_names}: {e}"
        return None


# ---- sum tree ---------------------------------------------------------------------------

@st.composite
def trees(draw):
    """(leaves, inner) with inner from the build, perturbed, or arbitrary."""
    n = draw(sizes)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    leaves = draw(vectors(n, dtype, st.floats(0.0, 10.0)))
    inner = ops.sum_tree_build(leaves)
    kind = draw(st.sampled_from(["built", "perturbed", "arbitrary", "zeroed_leaves"]))
    if kind == "perturbed":
        inner[draw(st.integers(1, inner.numel() - 1))] = draw(floats)
    elif kind == "arbitrary":
        inner = draw(vectors(inner.numel()))
    elif kind == "zeroed_leaves":
        leaves = torch.zeros_like(leaves)
    return leaves, inner


@SETTINGS
@given(trees(), st.data())
def test_sum_tree_sample(tree, data):
    leaves, inner = tree
    u = data.draw(uniforms(1, data.draw(st.integers(0, 600))))[0]
    out = raises_naming("sum_tree_sample", ops.sum_tree_sample, leaves, inner, u)
    if out is None:
        return
    total = float(inner[1])
    if not total > 0:
        assert bool((out == -1).all())
    else:
        assert bool(((out >= 0) & (out < leaves.numel())).all())
        assert bool((leaves[out] > 0).all()), "drew a leaf of weight 0"


def same(a, b):
    """Equal, NaN for NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@SETTINGS
@given(trees(), st.data())
def test_sum_tree_update(tree, data):
    leaves, inner = tree
    n = leaves.numel()
    k = data.draw(st.integers(0, 8))
    idx = torch.tensor(data.draw(st.lists(st.integers(-3, n + 3), min_size=k, max_size=k)),
                       dtype=torch.int64)
    values = data.draw(vectors(k, leaves.dtype))
    consistent = same(inner, ops.sum_tree_build(leaves)) if bool(
        (torch.isfinite(leaves) & (leaves >= 0)).all()) else False
    before = leaves.clone(), inner.clone()
    done = raises_naming("sum_tree_update",
                         lambda: ops.sum_tree_update(leaves, inner, idx, values) or True)
    limit = torch.finfo(torch.float64).max / (2 * n) if leaves.dtype == torch.float64 \
        else math.inf
    valid = bool(((idx >= 0) & (idx < n)).all()) and bool(
        (torch.isfinite(values) & (values >= 0) & (values <= limit)).all())
    assert bool(done) == valid
    if not valid:
        assert same(leaves, before[0]) and same(inner, before[1])
        return
    want = before[0].clone()
    for i, v in zip(idx.tolist(), values.tolist()):
        want[i] = v
    assert torch.equal(leaves, want)
    if consistent:
        assert same(inner, ops.sum_tree_build(leaves))


# ---- alias table ------------------------------------------------------------------------

@st.composite
def alias_tables(draw):
    """(prob, alias, sums, weights, group): built, or with entries out of range."""
    group = draw(st.sampled_from([1, 2, 5, 16]))
    n = draw(sizes)
    weights = draw(vectors(n, draw(st.sampled_from([torch.float32, torch.float64])),
                           st.floats(0.01, 10.0)))
    prob, alias, sums = ops.alias_table_build(weights, group)
    m = prob.numel()
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.integers(0, m - 1))
        what = draw(st.sampled_from(["alias", "prob", "sums"]))
        if what == "alias":
            alias[k] = draw(st.sampled_from([-1, m, m + 1, 2**24, 2**31 - 1, -2**31]))
            prob[k] = 0.0
        elif what == "prob":
            prob[k] = draw(floats)
        elif group > 1:
            sums[k] = draw(floats)
    return prob, alias, sums, weights, group


@SETTINGS
@given(alias_tables(), st.data())
def test_alias_table_sample(table, data):
    prob, alias, sums, weights, group = table
    u = data.draw(uniforms(3, data.draw(st.integers(0, 300))))
    out = raises_naming("alias_table_sample", ops.alias_table_sample, prob, alias, sums,
                        weights, u, group)
    if out is not None:
        assert bool(((out >= 0) & (out < weights.numel())).all())
        valid = bool(((alias >= 0) & (alias < prob.numel())).all())
        assert valid or bool((u[1] < prob[(u[0] * prob.numel()).long()]).all())


@SETTINGS
@given(st.data())
def test_alias_table_build(data):
    n = data.draw(sizes)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    weights = data.draw(vectors(n, dtype))
    group = data.draw(st.sampled_from([1, 3, 16]))
    table = raises_naming("AliasTable|alias_table_build",
                          lambda: is_kernels.AliasTable(weights, group_size=group))
    w = weights.double()
    valid = bool((torch.isfinite(w) & (w >= 0)).all()) and float(w.sum()) > 0 \
        and math.isfinite(float(w.sum()))
    assert (table is not None) == valid
    if table is not None:
        torch.testing.assert_close(table.probs, w / w.sum(), rtol=1e-9, atol=1e-12)


# ---- online importance sampling ---------------------------------------------------------

@SETTINGS
@given(trees(), st.data())
def test_online_is_draw(tree, data):
    leaves, inner = tree
    leaves = leaves.float()
    n = leaves.numel()
    memory = data.draw(vectors(n, torch.float32, st.floats(0.0, 3.0000000054977558e+38, width=32)))
    k = data.draw(st.integers(1, 6))
    active_idx = torch.tensor(data.draw(st.lists(st.integers(-2, n + 2), min_size=k,
                                                 max_size=k)), dtype=torch.int64)
    u = data.draw(uniforms(3, data.draw(st.integers(1, 200))))
    mix = data.draw(st.sampled_from([0.0, 0.1, 1.0, 1.5]))
    out = raises_naming("online_is_draw|sum_tree_sample", ops.online_is_draw, leaves, inner,
                        memory, active_idx, u, mix, True)
    if out is not None:
        idx, w = out
        assert bool(((idx >= 0) & (idx < n)).all())


@SETTINGS
@given(st.data())
def test_online_is_update(data):
    n = data.draw(sizes)
    memory = data.draw(vectors(n, torch.float32, st.floats(0.0, 10.0, width=32)))
    seen = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    active = torch.ones(n, dtype=torch.bool)
    leaves = memory.clone()
    inner = ops.sum_tree_build(leaves)
    k = data.draw(st.integers(0, 6))
    idx = torch.tensor(data.draw(st.lists(st.integers(-2, n + 2), min_size=k, max_size=k)),
                       dtype=torch.int64)
    scores = data.draw(vectors(k, torch.float32))
    state = [memory, seen, leaves, inner]
    before = [t.clone() for t in state]
    done = raises_naming("online_is_update", lambda: ops.online_is_update(
        memory, seen, active, leaves, inner, idx, scores, 0.5) or True)
    valid = bool(((idx >= 0) & (idx < n)).all()) and bool(
        (torch.isfinite(scores) & (scores >= 0)).all())
    assert bool(done) == valid
    if not valid:
        for got, want in zip(state, before):
            assert torch.equal(got, want)
    else:
        assert torch.equal(inner, ops.sum_tree_build(leaves))


# ---- fused losses -----------------------------------------------------------------------

@SETTINGS
@given(st.data())
def test_cross_entropy_with_score(data):
    rows, classes = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 5))
    logits = data.draw(vectors(rows * classes, torch.float32,
                               st.one_of(st.floats(-30, 30), st.sampled_from(SPECIAL)))
                       ).view(rows, classes)
    target = torch.tensor(data.draw(st.lists(st.integers(-101, classes + 1), min_size=rows,
                                             max_size=rows)), dtype=torch.int64)
    out = raises_naming("cross_entropy_with_score", is_kernels.cross_entropy_with_score,
                        logits, target)
    valid = bool(((target >= 0) & (target < classes) | (target == -100)).all())
    assert (out is not None) == valid
    if out is not None and bool(torch.isfinite(logits).all()) and rows:
        loss, score = out
        keep = target != -100
        if bool(keep.any()):
            want = torch.nn.functional.cross_entropy(logits.double(), target)
            torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-5)
        assert bool((score[~keep] == 0).all())
