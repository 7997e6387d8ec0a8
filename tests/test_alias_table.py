"""Tests of is_kernels.AliasTable and its ops (C++ on CPU; Triton through the interpreter)."""
import pytest
import torch

from is_kernels import AliasTable

from helpers.samplers import check_seeded_draws
from test_sum_tree import adversarial_weights, gof_pvalue, skewed, sparse
from helpers.triton_env import interpreted

ops = torch.ops.is_kernels
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


GROUPS = [1, 5, 16]  # the plain table, a size that divides nothing, the default


def grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """The weights as float64 [m, group] on CPU, the last group padded with zeros."""
    m = -(-w.numel() // group)
    padded = torch.zeros(m * group, dtype=torch.float64)
    padded[:w.numel()] = w.double().cpu()
    return padded.view(m, group)


def group_sums(w: torch.Tensor, group: int) -> torch.Tensor:
    """Every group's float64 sum, added in index order (as the build and the walks add)."""
    padded = grouped(w, group)
    total = torch.zeros(padded.shape[0], dtype=torch.float64)
    for k in range(group):
        total += padded[:, k]
    return total


def table_probs(w: torch.Tensor, prob: torch.Tensor, alias: torch.Tensor,
                group: int) -> torch.Tensor:
    """The exact distribution a table encodes: (prob_g + sum over buckets aliasing g) / m to
    group g, shared by its items in proportion to their weights."""
    p = prob.double().cpu()
    mass = p.clone()
    mass.index_add_(0, alias.long().cpu(), 1.0 - p)
    mass /= p.numel()
    sums = grouped(w, group).sum(1)
    share = torch.where(sums > 0, mass / sums, 0.0).repeat_interleave(group)[:w.numel()]
    return w.double().cpu() * share


def check_table(w: torch.Tensor, table, group: int) -> None:
    prob, alias, sums = (t.cpu() for t in table)
    m = -(-w.numel() // group)
    assert prob.shape == (m,) and alias.shape == (m,)
    target = w.double().cpu() / w.double().sum().cpu()
    assert (prob >= 0).all() and (prob <= 1).all()
    assert (alias >= 0).all() and (alias < m).all()
    reference = group_sums(w, group)
    if group == 1:
        assert sums.shape == (0,)
    else:
        assert torch.equal(sums, reference), "group sums must be added in index order"
    zero = reference == 0
    assert (prob[zero] == 0).all(), "a group of weight 0 must have acceptance probability 0"
    assert not zero[alias.long()].any(), "a group of weight 0 must never be an alias"
    assert torch.allclose(table_probs(w, prob, alias, group), target, rtol=1e-9, atol=1e-15)


def build(w: torch.Tensor, group: int = 16):
    return ops.alias_table_build(w, group)


def draw(table, w: torch.Tensor, u: torch.Tensor, group: int = 16) -> torch.Tensor:
    return ops.alias_table_sample(*table, w, u, group)


WEIGHTS = {
    "skewed": lambda g: skewed(5000, g),
    "sparse": lambda g: sparse(5000, g),
    "adversarial": lambda g: adversarial_weights(),
    "uniform": lambda g: torch.ones(1000),
    "one": lambda g: torch.tensor([0.0, 0.0, 3.0, 0.0]),
    "single": lambda g: torch.tensor([2.0]),
    "float64": lambda g: torch.rand(3001, generator=g, dtype=torch.float64) ** 4,
}


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("name", list(WEIGHTS))
def test_table_encodes_weights(name, group):
    w = WEIGHTS[name](torch.Generator().manual_seed(0))
    check_table(w, build(w, group), group)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("name", ["sparse", "float64"])
def test_probs(name, group):
    w = WEIGHTS[name](torch.Generator().manual_seed(11))
    probs = AliasTable(w, group_size=group).probs
    assert probs.dtype == torch.float64
    assert torch.allclose(probs, w.double() / w.double().sum(), rtol=1e-9, atol=1e-15)
    assert (probs[w == 0] == 0).all()


@pytest.mark.parametrize("group", GROUPS + [1000])
@pytest.mark.parametrize("name", ["skewed", "sparse"])
def test_chisquare(name, group):
    g = torch.Generator().manual_seed(1)
    w = WEIGHTS[name](g)[:1000]
    table = AliasTable(w, group_size=group)
    draws = table.sample(200_000, generator=g)
    assert draws.dtype == torch.int64 and draws.shape == (200_000,)
    assert gof_pvalue(draws, table.probs) > 1e-3
    assert torch.allclose(table.probs, w.double() / w.double().sum())


def edge_uniforms(edges: torch.Tensor) -> torch.Tensor:
    """Uniforms at, just below and just above every edge in [0, 1), and the extremes."""
    u = torch.cat([edges, torch.nextafter(edges, torch.zeros_like(edges)),
                   torch.nextafter(edges, torch.ones_like(edges)),
                   torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64)])
    return u[(u >= 0) & (u < 1)]


@pytest.mark.parametrize("group", GROUPS)
def test_zero_weights_never_drawn_adversarial_uniforms(group):
    w = adversarial_weights()
    table = build(w, group)
    m = table[0].numel()
    # Buckets at their edges, coins at their extremes, and the item uniform at every
    # cumulative edge of every group.
    u0 = edge_uniforms(torch.arange(m, dtype=torch.float64) / m)
    c = torch.cumsum(grouped(w, group), 1)
    u2 = edge_uniforms((c / c[:, -1:]).flatten().nan_to_num(0.0).unique())
    for coin in (0.0, 1 - 2**-53):
        for item in u2[torch.randperm(u2.numel(), generator=torch.Generator().manual_seed(0))[:8]]:
            u = torch.stack([u0, torch.full_like(u0, coin), torch.full_like(u0, item)])
            out = draw(table, w, u, group)
            assert (out >= 0).all() and (out < w.numel()).all() and (w[out] > 0).all()


def walk_reference(w: torch.Tensor, r: float) -> int:
    """The first item whose running float64 sum exceeds r, else the last of weight > 0."""
    total, last = 0.0, 0
    for i, x in enumerate(w.double().tolist()):
        total += x
        if total > r:
            return i
        if x > 0:
            last = i
    return last


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_walk_within_a_group(dtype):
    """One group: the item uniform alone picks the item, at and around every edge."""
    w = torch.tensor([0.0, 1e-30, 0.0, 3.0, 1.0, 0.0, 1e30, 2.5, 0.0, 0.0], dtype=dtype)
    table = build(w, w.numel())
    assert table[0].numel() == 1
    total = table[2][0]
    u2 = edge_uniforms(torch.cumsum(w.double(), 0) / total)
    u = torch.stack([torch.zeros_like(u2), torch.zeros_like(u2), u2])
    out = draw(table, w, u, w.numel())
    expected = [walk_reference(w, float(x) * float(total)) for x in u2]
    assert out.tolist() == expected
    assert (w[out] > 0).all()


def test_large_table():
    g = torch.Generator().manual_seed(2)
    w = sparse(1 << 20, g)
    check_table(w, build(w), 16)


@pytest.mark.parametrize("group", [1, 16])
def test_generator_determinism(group):
    w = torch.rand(100, generator=torch.Generator().manual_seed(3))
    check_seeded_draws(AliasTable(w, group_size=group))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_weights(bad, group):
    with pytest.raises(RuntimeError, match=r"weights\[2\] = .* not a valid weight"):
        AliasTable(torch.tensor([1.0, 1.0, bad]), group_size=group)
    w = torch.ones(100_000, dtype=torch.float64)
    w[[70_001, 90_000]] = bad
    with pytest.raises(RuntimeError, match=r"weights\[70001\] = .* not a valid weight"):
        build(w, group)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_errors(device):
    ok = AliasTable(torch.tensor([0.0, 1.0, 3.0], device=device), check_values=False)
    assert ok.check_values is False
    assert set(ok.sample(1000).tolist()) == {1, 2}
    ok.raise_errors()  # nothing recorded
    for w, msg in ((torch.tensor([1.0, float("nan")]), "not finite and >= 0"),
                   (torch.zeros(3), "all weights are zero")):
        table = AliasTable(w.to(device), check_values=False)  # no error yet
        assert (table.sample(50) == -1).all()
        with pytest.raises(RuntimeError, match=f"AliasTable: .*{msg}"):
            table.raise_errors()
        table.raise_errors()  # cleared; the draws stay -1
        assert (table.sample(5) == -1).all()
    with pytest.raises(TypeError, match="check_values must be None or a bool"):
        AliasTable(torch.ones(3), check_values="yes")


def test_weights_modified_in_place():
    w = torch.rand(100, generator=torch.Generator().manual_seed(4))
    table = AliasTable(w)
    table.sample(10)
    w[3] = 0.0
    for use in (lambda: table.sample(10), lambda: table.probs):
        with pytest.raises(RuntimeError, match="weights were modified in place"):
            use()
    strided = torch.rand(200)[::2]  # the table keeps its own contiguous copy
    table = AliasTable(strided)
    strided[0] = 5.0
    assert table.sample(3).shape == (3,)


def test_bad_arguments():
    assert AliasTable(torch.ones(2)).check_values is True
    with pytest.raises(RuntimeError, match="all weights are zero"):
        AliasTable(torch.zeros(4))
    with pytest.raises(TypeError, match="weights must be float32 or float64"):
        AliasTable(torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="weights must be a non-empty 1-D"):
        AliasTable(torch.ones(2, 2))
    with pytest.raises(ValueError, match="weights must be a non-empty 1-D"):
        AliasTable(torch.ones(0))
    for bad in (0, 1025):
        with pytest.raises(ValueError, match=r"group_size must be in \[1, 1024\]"):
            AliasTable(torch.ones(4), group_size=bad)
    with pytest.raises(TypeError, match="group_size must be an int"):
        AliasTable(torch.ones(4), group_size=2.0)
    with pytest.raises(RuntimeError, match=r"group_size must be in \[1, 1024\]"):
        ops.alias_table_build(torch.ones(4), 0)
    table = AliasTable(torch.ones(40))
    with pytest.raises(ValueError, match="n must be >= 0"):
        table.sample(-1)
    t = (table._prob, table._alias, table._sums)
    with pytest.raises(RuntimeError, match=r"u\[2, 0\] = 1 is not in \[0, 1\)"):
        draw(t, table._weights, torch.tensor([[0.5], [0.5], [1.0]], dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"u must be float64 of shape \[3, n\]"):
        draw(t, table._weights, torch.rand(2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"weights must be a contiguous 1-D .* in 3 groups"):
        draw(t, torch.ones(60), torch.rand(3, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"sums must be .* float64 tensor of shape \[3\]"):
        draw((t[0], t[1], t[2][:2]), table._weights, torch.rand(3, 5, dtype=torch.float64))


@pytest.mark.parametrize("group", [1, 16])
def test_opcheck(group):
    g = torch.Generator().manual_seed(6)
    w = sparse(333, g)
    torch.library.opcheck(ops.alias_table_build, (w, group))
    torch.library.opcheck(ops.alias_table_sample,
                          (*build(w, group), w, torch.rand(3, 64, dtype=torch.float64,
                                                           generator=g), group))


# The CPU build of the table works on vectors of 4 entries, blocks of 1024 and parts of 16
# blocks: sizes around them (of the plain table, group_size 1, whose entries are the items).
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 1023, 1024, 1025, 3 * 1024 + 5, 16383, 16384, 16385,
         (1 << 16) - 1, (1 << 16) + 1, 5 * 16384 + 1027]

def with_entry(w: torch.Tensor, i: int, value: float) -> torch.Tensor:
    w[i] = value
    return w


SHAPES = {
    "random": lambda n, g: torch.rand(n, generator=g),
    "sparse": lambda n, g: sparse(n, g),
    "skewed": lambda n, g: skewed(n, g),
    "equal": lambda n, g: torch.full((n,), 0.3),
    "one_huge": lambda n, g: with_entry(torch.rand(n, generator=g), n // 3, 1e30),
    "one_nonzero": lambda n, g: with_entry(torch.zeros(n), n - 1, 2.0),
    "ascending": lambda n, g: torch.rand(n, generator=g).sort().values,
    "descending": lambda n, g: torch.rand(n, generator=g).sort(descending=True).values,
    # many heavies of tiny excess and few lights of large deficit: a part's heavies span
    # many blocks
    "few_lights": lambda n, g: torch.ones(n).index_fill_(0, torch.arange(0, n, 997), 0.0),
}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_sizes_and_shapes(n, shape):
    w = SHAPES[shape](n, torch.Generator().manual_seed(n))
    if w.sum() == 0:  # a sparse draw of zeros only
        w[0] = 1.0
    check_table(w, build(w, 1), 1)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 16 * 1024 + 3, 16 * 16384 + 17])
@pytest.mark.parametrize("shape", ["sparse", "one_nonzero", "few_lights"])
def test_group_sizes_and_shapes(n, shape):
    w = SHAPES[shape](n, torch.Generator().manual_seed(n))
    if w.sum() == 0:
        w[0] = 1.0
    check_table(w, build(w, 16), 16)


@pytest.mark.parametrize("group", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_independent_of_threads(dtype, group):
    g = torch.Generator().manual_seed(10)
    w = torch.cat([torch.rand(40000, generator=g, dtype=dtype) ** 3,
                   torch.zeros(3000, dtype=dtype), torch.rand(20000, generator=g, dtype=dtype)])
    if group > 1:
        w = w.repeat(group)
    threads = torch.get_num_threads()
    try:
        tables = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            tables.append(build(w, group))
    finally:
        torch.set_num_threads(threads)
    for table in tables[1:]:
        assert all(torch.equal(a, b) for a, b in zip(table, tables[0]))
    check_table(w, tables[0], group)


def test_rebuilt_table_reuses_the_memory_of_a_freed_one():
    """The CPU build hands its last output buffers out again once nothing references them
    (no fresh pages to fault in), and never ones still held."""
    g = torch.Generator().manual_seed(12)
    w1, w2, w3 = (torch.rand(80000, generator=g) ** 2 for _ in range(3))
    held = build(w1)
    kept = [t.clone() for t in held]
    second = build(w2)
    addresses = [t.data_ptr() for t in second]
    assert not {t.data_ptr() for t in held} & set(addresses)
    del second
    others = [torch.empty(5000, dtype=torch.float64), torch.empty(5000, dtype=torch.int32),
              torch.empty(5000, dtype=torch.float64)]
    third = build(w3)  # malloc would give `others` the freed memory
    assert [t.data_ptr() for t in third] == addresses
    assert not {t.data_ptr() for t in others} & set(addresses)
    check_table(w3, third, 16)
    assert all(torch.equal(t, k) for t, k in zip(held, kept))


def test_table_rebuilt_in_a_loop_alternates_two_buffers():
    """`table = build(w)` in a loop holds the previous table during the call: the build
    keeps two buffers, so the table before it is the one reused."""
    g = torch.Generator().manual_seed(13)
    ws = [torch.rand(96000, generator=g) ** 3 for _ in range(3)]
    table = build(ws[0])
    first = [t.data_ptr() for t in table]
    table = build(ws[1])
    assert not {t.data_ptr() for t in table} & set(first)
    table = build(ws[2])
    assert [t.data_ptr() for t in table] == first
    check_table(ws[2], table, 16)


@pytest.mark.parametrize("group", GROUPS)
def test_sum_overflow(group):
    with pytest.raises(RuntimeError, match="sum of the weights overflows float64"):
        build(torch.tensor([1e308, 1e308, 1.0], dtype=torch.float64), group)


@interpreted
@pytest.mark.parametrize("group", GROUPS + [64])  # 64: a lane per group (above the tile)
@pytest.mark.parametrize("name", ["sparse", "adversarial", "uniform", "one", "single", "float64"])
def test_triton_build_and_sample(name, group):
    from is_kernels.ops import alias_table_triton as at

    g = torch.Generator().manual_seed(7)
    w = WEIGHTS[name](g)[:2000]
    *table, status = at.build(w, group)
    assert int(status) == 0
    check_table(w, table, group)
    u = torch.rand(3, 3000, dtype=torch.float64, generator=g)
    assert torch.equal(at.sample(*table, w, u, group), draw(table, w, u, group))


@interpreted
@pytest.mark.parametrize("group", [1, 16, 64])
@pytest.mark.parametrize("bad,code", [(float("nan"), 1), (-1.0, 1), (float("inf"), 1),
                                      (0.0, 2)])
def test_triton_build_status(group, bad, code):
    """An invalid weight (or all zero) gives the status code, recorded in err unless a code
    is there, and draws of -1."""
    from is_kernels.ops import alias_table_triton as at

    w = torch.zeros(100) if code == 2 else torch.rand(100)
    w[37] = bad
    err = torch.zeros((), dtype=torch.int32)
    *table, status = at.build(w, group, err=err)
    assert int(status) == code and int(err) == code
    u = torch.rand(3, 50, dtype=torch.float64)
    assert (at.sample(*table, w, u, group, status) == -1).all()
    err.fill_(7)
    at.build(torch.rand(100), group, err=err)
    assert int(err) == 7


@interpreted
@pytest.mark.parametrize("group", [1, 4])
def test_triton_equals_cpp_on_exact_sums(group):
    # Small integer weights summing to 2 * N: every p is a multiple of 1/2 and every prefix sum
    # is exact, so the builds (which add in different orders) give the same table.
    from is_kernels.ops import alias_table_triton as at

    # (For groups, those are the group sums, each split into two integer weights.)
    g = torch.Generator().manual_seed(8)
    half = torch.randint(0, 5, (512,), generator=g)
    sums = torch.cat([half, 4 - half])[torch.randperm(1024, generator=g)]
    w = torch.zeros(1024, group)
    w[:, 0] = sums // 2
    w[:, -1] += sums - sums // 2
    w = w.flatten()
    cpp, triton = build(w, group), at.build(w, group)[:3]
    assert all(torch.equal(c, t) for c, t in zip(cpp, triton))


@cuda
def test_cuda():
    g = torch.Generator().manual_seed(9)
    w = sparse(1 << 20, g)
    for group in (1, 16):
        table = AliasTable(w.cuda(), group_size=group)
        check_table(w, (table._prob, table._alias, table._sums), group)
        out = table.sample(200_000, generator=torch.Generator(device="cuda").manual_seed(0))
        assert (w[out.cpu()] > 0).all()
        small = AliasTable(w[:1000].cuda(), group_size=group)
        assert gof_pvalue(small.sample(200_000), small.probs) > 1e-3
    with pytest.raises(RuntimeError, match="not a valid weight"):
        AliasTable(torch.tensor([1.0, float("nan")], device="cuda"), check_values=True)
    w_cuda = w.cuda()  # (the copy from pageable memory syncs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the default (check_values=False) never syncs
    try:
        table = AliasTable(w_cuda)
        table.sample(1000)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("group", [1, 2, 16])
@pytest.mark.parametrize("bad", [2**24, 7, -1])
def test_sample_op_rejects_an_alias_entry_out_of_range(group, bad):
    """A table that alias_table_build did not make: the op raises instead of returning an
    index out of range (group_size 1) or reading past the sums and weights (larger groups)."""
    w = torch.rand(7 * group, dtype=torch.float64) + 0.1
    prob, alias, sums = ops.alias_table_build(w, group)
    m = prob.numel()
    alias[3] = bad if bad != 7 else m  # m: the first entry past the table
    prob[3] = 0.0  # every draw of bucket 3 takes its alias
    u = torch.rand((3, 2000), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(IndexError, match=r"alias\[3\] = .* is out of range for a table of 7"):
        ops.alias_table_sample(prob, alias, sums, w, u, group)


@pytest.mark.parametrize("group", [1, 16])
def test_subnormal_weights(group):
    """float64 weights far below the smallest normal float64: N / total overflows unless the
    build rescales; the table, .probs and the draws follow the weights."""
    w = torch.full((40,), 1e-320, dtype=torch.float64)
    w[5] = 3e-320
    table = AliasTable(w, group_size=group)
    expected = w / w.sum()
    torch.testing.assert_close(table.probs, expected, rtol=1e-12, atol=0)
    assert abs(float(table.probs[5]) - 3 / 42) < 1e-12
    draws = table.sample(200_000, generator=torch.Generator().manual_seed(1))
    assert abs(float((draws == 5).double().mean()) - 3 / 42) < 0.005


def test_in_place_writes_the_version_counter_misses_never_read_out_of_bounds():
    """Writes through .data or numpy bypass the version counter (documented); the draws stay
    in range whatever the weights became."""
    w = torch.rand(100, dtype=torch.float64) + 0.1
    table = AliasTable(w)
    w.numpy()[:] = float("nan")
    draws = table.sample(5000, generator=torch.Generator().manual_seed(0))
    assert bool(((draws >= 0) & (draws < 100)).all())
