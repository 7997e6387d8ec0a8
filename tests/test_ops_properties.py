"""The bad-input contract of every public op, on generated inputs (hypothesis): each call
either raises a clear error (naming the op) and leaves its mutable arguments unchanged, or
returns a correct result, and never an index out of range. Run under the sanitizers
(.ci/sanitizers), these also check that no input makes a C++ kernel read or write out of
bounds. The raw ops get tables and trees that their build ops did not make, inputs that are
strided or expanded views, and (the in-place ops) indices inside the memory they write."""
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
def laid_out(draw, t):
    """A 1-D t as is, or its values as a strided view (every other element of a larger
    tensor), or its first value as a stride-0 view of its length (an expanded scalar)."""
    layout = draw(st.sampled_from(["contiguous", "strided", "expanded"]))
    if layout == "strided":
        wide = torch.empty(2 * t.numel(), dtype=t.dtype)
        wide[::2] = t
        return wide[::2]
    if layout == "expanded" and t.numel():
        return t[:1].expand(t.numel())
    return t


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
    u = data.draw(laid_out(data.draw(uniforms(1, data.draw(st.integers(0, 600))))[0]))
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


@st.composite
def min_trees(draw):
    """(leaves, inner) of a min tree (values: anything but NaN), inner from the build,
    perturbed (NaN included), or arbitrary."""
    n = draw(sizes)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    values = st.one_of(st.floats(-10.0, 10.0), st.sampled_from([math.inf, -math.inf, 3e38]))
    leaves = draw(vectors(n, dtype, values))
    inner = ops.min_tree_build(leaves)
    kind = draw(st.sampled_from(["built", "perturbed", "arbitrary"]))
    if kind == "perturbed":  # (1e300 in float32: inf)
        inner[draw(st.integers(1, inner.numel() - 1))] = torch.tensor(draw(floats)).to(dtype)
    elif kind == "arbitrary":
        inner = draw(vectors(inner.numel(), torch.float64)).to(dtype)
    return leaves, inner


def indices_in(draw, n, k):
    """k int64 indices around [0, n) (some out of it), in some layout."""
    return draw(laid_out(torch.tensor(draw(st.lists(st.integers(-2, n + 2), min_size=k,
                                                    max_size=k)), dtype=torch.int64)))


@pytest.mark.parametrize("kind", ["sum_tree", "min_tree"])
@SETTINGS
@given(data=st.data())
def test_tree_query(kind, data):
    leaves, inner = data.draw(trees() if kind == "sum_tree" else min_trees())
    n = leaves.numel()
    k = data.draw(st.integers(0, 8))
    start, end = indices_in(data.draw, n, k), indices_in(data.draw, n, k)
    out = raises_naming(f"{kind}_query", getattr(ops, f"{kind}_query"), leaves, inner, start,
                        end)
    assert (out is not None) == bool(((start >= 0) & (start <= end) & (end <= n)).all())
    if out is None or not same(inner, getattr(ops, f"{kind}_build")(leaves)):
        return
    for got, s, e in zip(out.tolist(), start.tolist(), end.tolist()):
        part = leaves[s:e].double()
        if kind == "min_tree":
            assert got == (float(part.min()) if e > s else math.inf)
        else:
            assert math.isclose(got, float(part.sum()), rel_tol=1e-12)


@SETTINGS
@given(trees(), st.data())
def test_sum_tree_scan_lower_bound(tree, data):
    leaves, inner = tree
    total = float(inner[1])
    scale = total if math.isfinite(total) and total > 0 else 1.0
    masses = st.one_of(st.sampled_from(SPECIAL), st.floats(0.0, 1.5).map(lambda f: f * scale))
    mass = data.draw(laid_out(data.draw(vectors(data.draw(st.integers(0, 40)), torch.float64,
                                                masses))))
    out = raises_naming("sum_tree_scan_lower_bound", ops.sum_tree_scan_lower_bound, leaves,
                        inner, mass)
    valid = bool((torch.isfinite(mass) & (mass >= 0)).all())
    if not valid:
        assert out is None
    if out is None:
        return
    if not total > 0:
        assert bool((out == -1).all())
    else:
        assert bool(((out >= 0) & (out < leaves.numel())).all())
        assert bool((leaves[out] > 0).all()), "reached a leaf of weight 0"


def update_is_valid(kind, idx, values, n):
    """Whether a tree update is valid: indices in [0, n); sum tree values finite, >= 0 and
    at most the largest leaf; min tree values not NaN."""
    in_range = bool(((idx >= 0) & (idx < n)).all())
    if kind == "min_tree":
        return in_range and not bool(values.isnan().any())
    limit = torch.finfo(torch.float64).max / (2 * n) if values.dtype == torch.float64 \
        else math.inf
    return in_range and bool((torch.isfinite(values) & (values >= 0) & (values <= limit)).all())


@pytest.mark.parametrize("kind", ["sum_tree", "min_tree"])
@SETTINGS
@given(data=st.data())
def test_tree_update(kind, data):
    leaves, inner = data.draw(trees() if kind == "sum_tree" else min_trees())
    build, update = getattr(ops, f"{kind}_build"), getattr(ops, f"{kind}_update")
    n = leaves.numel()
    k = data.draw(st.integers(0, 8))
    idx = indices_in(data.draw, n, k)
    values = data.draw(laid_out(data.draw(vectors(k, leaves.dtype))))
    consistent = same(inner, build(leaves))
    before = leaves.clone(), inner.clone()
    done = raises_naming(f"{kind}_update", lambda: update(leaves, inner, idx, values) or True)
    valid = update_is_valid(kind, idx, values, n)
    assert bool(done) == valid
    if not valid:
        assert same(leaves, before[0]) and same(inner, before[1])
        return
    want = before[0].clone()
    for i, v in zip(idx.tolist(), values.tolist()):
        want[i] = v
    assert torch.equal(leaves, want)
    if consistent:
        assert same(inner, build(leaves))


# ---- prioritized replay's ops -----------------------------------------------------------

@st.composite
def priority_trees(draw):
    """[sum_leaves, sum_inner, min_leaves, min_inner, max_priority] holding priorities."""
    n = draw(sizes)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    state = [torch.zeros(n, dtype=dtype), None, torch.full((n,), math.inf, dtype=dtype), None,
             torch.tensor(1.0, dtype=torch.float64)]
    state[1], state[3] = ops.sum_tree_build(state[0]), ops.min_tree_build(state[2])
    raw = draw(vectors(n, torch.float64, st.floats(0.0, 10.0)))
    ops.sum_tree_set_priorities(*state, torch.arange(n), raw, 0.6, 0.01, n)
    return state


exponents = st.sampled_from([0.0, 0.5, 1.0, 2.0, 1e-300, -1.0, math.nan, math.inf])
offsets = st.sampled_from([0.0, 1e-6, 1.0, 1e300, -1e-9, math.nan, math.inf])


def weights_of(raw, dtype, alpha, eps, n):
    """The stored priorities (raw + eps) ** alpha in the leaf dtype (raw, eps and alpha
    rounded to it), and whether all are valid leaves (at most the largest leaf of a tree of
    n)."""
    p = (raw.to(dtype) + torch.tensor(eps, dtype=dtype)).pow(torch.tensor(alpha, dtype=dtype))
    limit = torch.finfo(torch.float64).max / (2 * n) if dtype == torch.float64 \
        else torch.finfo(torch.float32).max
    return p, bool((p <= limit).all())


def check_priorities_applied(state, before, slots, raw, alpha, eps):
    """The trees after a successful set/add: each slot's last entry stored, the other leaves
    as before, both trees consistent with their leaves, max_priority raised."""
    sl, si, ml, mi, most = state
    p, _ = weights_of(raw, sl.dtype, alpha, eps, sl.numel())
    want = before[0].clone()
    for i, v in zip(slots.tolist(), p.tolist()):
        want[i] = v
    torch.testing.assert_close(sl, want, rtol=4 * torch.finfo(sl.dtype).eps, atol=0)
    assert torch.equal(ml, torch.where(sl > 0, sl, math.inf))
    assert torch.equal(si, ops.sum_tree_build(sl)) and torch.equal(mi, ops.min_tree_build(ml))
    assert float(most) == max([float(before[4])] + raw.double().tolist())


@SETTINGS
@given(priority_trees(), st.data())
def test_sum_tree_set_priorities(state, data):
    n = state[0].numel()
    k = data.draw(st.integers(0, 8))
    idx = indices_in(data.draw, n, k)
    raw = data.draw(laid_out(data.draw(vectors(
        k, data.draw(st.sampled_from([torch.float32, torch.float64]))))))
    alpha, eps, limit = data.draw(exponents), data.draw(offsets), data.draw(st.integers(-1, n + 1))
    before = [t.clone() for t in state]
    out = raises_naming("sum_tree_set_priorities", ops.sum_tree_set_priorities, *state, idx, raw,
                        alpha, eps, limit)
    valid = all(math.isfinite(x) and x >= 0 for x in (alpha, eps)) and 0 <= limit <= n \
        and bool(((idx >= 0) & (idx < limit)).all()) \
        and bool((torch.isfinite(raw) & (raw >= 0)).all())
    valid = valid and weights_of(raw, state[0].dtype, alpha, eps, n)[1]
    assert (out is not None) == valid
    if out is None:
        assert all(same(a, b) for a, b in zip(state, before))
    else:
        check_priorities_applied(state, before, idx, raw, alpha, eps)


@SETTINGS
@given(priority_trees(), st.data())
def test_sum_tree_add_priorities(state, data):
    cap = state[0].numel()
    start, n = data.draw(st.integers(-1, cap)), data.draw(st.integers(-1, cap + 1))
    given_raw = data.draw(st.booleans())
    raw = data.draw(laid_out(data.draw(vectors(max(n, 0) + data.draw(st.sampled_from([0, 0, 1])),
                                               torch.float64)))) if given_raw else None
    alpha, eps = data.draw(exponents), data.draw(offsets)
    before = [t.clone() for t in state]
    out = raises_naming("sum_tree_add_priorities", ops.sum_tree_add_priorities, *state, start, n,
                        raw, alpha, eps)
    used = raw if given_raw else before[4].expand(max(n, 0))
    valid = all(math.isfinite(x) and x >= 0 for x in (alpha, eps)) and 0 <= start < cap \
        and 0 <= n <= cap and used.shape == (n,) \
        and bool((torch.isfinite(used) & (used >= 0)).all())
    valid = valid and weights_of(used, state[0].dtype, alpha, eps, cap)[1]
    assert (out is not None) == valid
    if out is None:
        assert all(same(a, b) for a, b in zip(state, before))
        return
    slots, _ = out
    assert torch.equal(slots, (start + torch.arange(n)) % cap)
    check_priorities_applied(state, before, slots, used, alpha, eps)


@SETTINGS
@given(priority_trees(), st.data())
def test_sum_tree_sample_weighted(state, data):
    cap = state[0].numel()
    if data.draw(st.booleans()):  # a sum tree that does not match its leaves
        state[1][data.draw(st.integers(1, state[1].numel() - 1))] = data.draw(floats)
    n, beta = data.draw(st.integers(-1, 300)), data.draw(exponents)
    out = raises_naming("sum_tree_sample_weighted", ops.sum_tree_sample_weighted, *state[:4], n,
                        beta)
    if not (n >= 0 and math.isfinite(beta) and beta >= 0):
        assert out is None
    if out is not None:
        idx, w = out
        assert idx.shape == w.shape == (n,)
        assert bool(((idx >= 0) & (idx < cap)).all()) or bool((idx == -1).all())


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
        # A draw that took an alias took one in range (a table may hold others, not drawn).
        k = (u[0] * prob.numel()).long().clamp(max=prob.numel() - 1)
        took_alias = ~(u[1] < prob[k])
        assert bool(((alias[k] >= 0) & (alias[k] < prob.numel()))[took_alias].all())


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


@st.composite
def matrices(draw, rows, cols, dtype, elements):
    """A [rows, cols] tensor: contiguous, transposed (column-major), a column slice of a
    wider one, or one row expanded over all rows (stride 0)."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"]))
    if layout == "expanded":
        return draw(vectors(cols, dtype, elements)).expand(rows, cols)
    if layout == "transposed":
        return draw(vectors(rows * cols, dtype, elements)).view(cols, rows).t()
    if layout == "sliced":
        return draw(vectors(rows * (cols + 2), dtype, elements)).view(rows, cols + 2)[:, 1:-1]
    return draw(vectors(rows * cols, dtype, elements)).view(rows, cols)


logit_values = st.one_of(st.floats(-30, 30), st.sampled_from(SPECIAL))
loss_dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])
reductions = st.sampled_from(["mean", "sum", "none"])


@SETTINGS
@given(st.data())
def test_cross_entropy_with_score_raw_op(data):
    """The raw op on every layout of logits and target, label smoothing and reduction; the
    gradient it returns against autograd's."""
    rows, classes = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 40))
    dtype = data.draw(loss_dtypes)
    logits = data.draw(matrices(rows, classes, dtype, logit_values))
    target = data.draw(laid_out(torch.tensor(data.draw(st.lists(
        st.one_of(st.integers(-1, classes), st.just(-100)), min_size=rows, max_size=rows)),
        dtype=torch.int64)))
    smoothing, reduction = data.draw(st.sampled_from([0.0, 0.1, 1.0, -0.1, 1.5])), \
        data.draw(reductions)
    out = raises_naming("cross_entropy_with_score", ops.cross_entropy_with_score, logits,
                        target, -100, smoothing, reduction, True)
    valid = bool(((target >= 0) & (target < classes) | (target == -100)).all()) \
        and 0 <= smoothing <= 1
    assert (out is not None) == valid
    if out is None or not bool(torch.isfinite(logits).all()) or dtype != torch.float64:
        return
    loss, score, grad = out
    z = logits.detach().clone().requires_grad_()
    want = torch.nn.functional.cross_entropy(z, target, reduction=reduction,
                                             label_smoothing=smoothing)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-9, atol=1e-12, equal_nan=True)
    if rows and bool((target != -100).any()):
        (g,) = torch.autograd.grad(want.sum(), z)
        torch.testing.assert_close(grad, g, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(st.data())
def test_soft_cross_entropy_and_mse_raw_ops(data):
    """soft_cross_entropy_with_score and mse_with_score on every layout, against float64
    references; output_grad_norm as cross_entropy_with_score's score."""
    rows, cols = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 40))
    dtype = data.draw(loss_dtypes)
    x = data.draw(matrices(rows, cols, dtype, logit_values))
    y = data.draw(matrices(rows, cols, dtype, st.one_of(st.floats(0, 1), st.sampled_from(SPECIAL))))
    reduction = data.draw(reductions)
    soft = raises_naming("soft_cross_entropy_with_score", ops.soft_cross_entropy_with_score, x,
                         y, 0.1, reduction, True)
    mse = raises_naming("mse_with_score", ops.mse_with_score, x, y, reduction, True)
    assert soft is not None and mse is not None
    if dtype == torch.float64 and bool(torch.isfinite(x).all() & torch.isfinite(y).all()):
        want = torch.nn.functional.mse_loss(x, y, reduction=reduction)
        if reduction == "none":  # the op's loss of a row: the mean over the row
            want = want.mean(dim=1)
        torch.testing.assert_close(mse[0], want, rtol=1e-9, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(mse[1], (2 / cols * (x - y).norm(dim=1)).float())
        if bool((y >= 0).all()):
            want = torch.nn.functional.cross_entropy(x, y, reduction=reduction,
                                                     label_smoothing=0.1)
            torch.testing.assert_close(soft[0], want, rtol=1e-9, atol=1e-12, equal_nan=True)
    target = torch.tensor(data.draw(st.lists(st.integers(0, cols - 1), min_size=rows,
                                             max_size=rows)), dtype=torch.int64)
    norm = raises_naming("output_grad_norm", ops.output_grad_norm, x, target, -100, 0.0)
    same_score = ops.cross_entropy_with_score(x, target, -100, 0.0, "none", False)[1]
    assert torch.equal(norm.isnan(), same_score.isnan())
    assert torch.equal(norm.nan_to_num(0.0), same_score.nan_to_num(0.0))


# ---- in-place ops and memory they write -----------------------------------------------

@SETTINGS
@given(st.data())
def test_in_place_ops_refuse_indices_in_their_state(data):
    """Indices that are a view of a tensor an in-place op writes (all of them valid indices
    before the call: the state holds zeros) raise, naming both, and change nothing."""
    n = data.draw(st.integers(8, 40))
    zeros64 = torch.zeros(n, dtype=torch.float64)
    op = data.draw(st.sampled_from(["sum_tree_update", "min_tree_update",
                                    "sum_tree_set_priorities", "online_is_update"]))
    if op in ("sum_tree_update", "min_tree_update"):
        state = [zeros64.clone(), getattr(ops, op.replace("update", "build"))(zeros64)]
        state[1][0] = 0.0  # the unused slot (+inf in a min tree)
        names = ["leaves", "inner"]
    elif op == "sum_tree_set_priorities":
        state = [zeros64.clone(), ops.sum_tree_build(zeros64), zeros64.clone(),
                 ops.min_tree_build(zeros64), torch.tensor(0.0, dtype=torch.float64)]
        state[3][0] = 0.0
        names = ["sum_leaves", "sum_inner", "min_leaves", "min_inner", "max_priority"]
    else:
        zeros = torch.zeros(n)
        state = [zeros.clone(), torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool),
                 zeros.clone(), ops.sum_tree_build(zeros)]
        names = ["memory", "seen", "active", "leaves", "inner"]
    which = data.draw(st.sampled_from([i for i, name in enumerate(names) if name != "active"]))
    flat = state[which].view(-1)
    per = 8 // flat.element_size()  # elements per int64
    first = data.draw(st.integers(0, flat.numel() // per - 1)) * per
    count = data.draw(st.integers(1, (flat.numel() - first) // per))
    idx = flat[first:first + count * per].view(torch.int64)
    values = torch.ones(count, dtype=torch.float64)
    args = {"sum_tree_update": lambda: (*state, idx, values),
            "min_tree_update": lambda: (*state, idx, values),
            "sum_tree_set_priorities": lambda: (*state, idx, values, 1.0, 0.0, n),
            "online_is_update": lambda: (*state, idx, values.float(), 0.5)}[op]()
    before = [t.clone() for t in state]
    with pytest.raises(RuntimeError, match=f"{op}: (idx|indices) shares memory with "
                                           f"{names[which]}"):
        getattr(ops, op)(*args)
    assert all(torch.equal(a, b) for a, b in zip(state, before))
