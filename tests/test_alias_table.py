"""Tests of is_kernels.AliasTable and its ops (C++ on CPU; Triton through the interpreter)."""
import pytest
import torch

from is_kernels import AliasTable

from sampler_helpers import check_seeded_draws
from test_sum_tree import adversarial_weights, gof_pvalue, skewed, sparse
from triton_env import interpreted

ops = torch.ops.is_kernels
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def table_probs(prob: torch.Tensor, alias: torch.Tensor) -> torch.Tensor:
    """The exact distribution a table encodes: (prob_i + sum over buckets aliasing i) / N."""
    p = prob.double().cpu().clone()
    p.index_add_(0, alias.long().cpu(), 1.0 - prob.double().cpu())
    return p / prob.numel()


def check_table(w: torch.Tensor, prob: torch.Tensor, alias: torch.Tensor) -> None:
    target = w.double().cpu() / w.double().sum().cpu()
    assert (prob >= 0).all() and (prob <= 1).all()
    assert (alias >= 0).all() and (alias < w.numel()).all()
    zero = (w == 0).cpu()
    assert (prob.cpu()[zero] == 0).all(), "a zero weight must have acceptance probability 0"
    assert not zero[alias.long().cpu()].any(), "a zero weight must never be an alias"
    assert torch.allclose(table_probs(prob, alias), target, rtol=1e-9, atol=1e-15)


WEIGHTS = {
    "skewed": lambda g: skewed(5000, g),
    "sparse": lambda g: sparse(5000, g),
    "adversarial": lambda g: adversarial_weights(),
    "uniform": lambda g: torch.ones(1000),
    "one": lambda g: torch.tensor([0.0, 0.0, 3.0, 0.0]),
    "single": lambda g: torch.tensor([2.0]),
    "float64": lambda g: torch.rand(3001, generator=g, dtype=torch.float64) ** 4,
}


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_table_encodes_weights(name):
    w = WEIGHTS[name](torch.Generator().manual_seed(0))
    check_table(w, *ops.alias_table_build(w))


@pytest.mark.parametrize("name", ["sparse", "float64"])
def test_probs(name):
    w = WEIGHTS[name](torch.Generator().manual_seed(11))
    probs = AliasTable(w).probs
    assert probs.dtype == torch.float64
    assert torch.allclose(probs, w.double() / w.double().sum(), rtol=1e-9, atol=1e-15)
    assert (probs[w == 0] == 0).all()


@pytest.mark.parametrize("name", ["skewed", "sparse"])
def test_chisquare(name):
    g = torch.Generator().manual_seed(1)
    w = WEIGHTS[name](g)[:1000]
    table = AliasTable(w)
    draws = table.sample(200_000, generator=g)
    assert draws.dtype == torch.int64 and draws.shape == (200_000,)
    assert gof_pvalue(draws, table.probs) > 1e-3
    assert torch.allclose(table.probs, w.double() / w.double().sum())


def test_zero_weights_never_drawn_adversarial_uniforms():
    w = adversarial_weights()
    prob, alias = ops.alias_table_build(w)
    n = w.numel()
    # Bucket uniforms at the bucket edges, coins at 0 and just below 1.
    k = torch.arange(n, dtype=torch.float64)
    u0 = torch.cat([k / n, torch.nextafter(k / n, torch.ones(n, dtype=torch.float64)),
                    torch.tensor([1 - 2**-53], dtype=torch.float64)])
    for coin in (0.0, 1 - 2**-53):
        u = torch.stack([u0, torch.full_like(u0, coin)])
        out = ops.alias_table_sample(prob, alias, u)
        assert (out >= 0).all() and (out < n).all() and (w[out] > 0).all()


def test_large_table():
    g = torch.Generator().manual_seed(2)
    w = sparse(1 << 20, g)
    check_table(w, *ops.alias_table_build(w))


def test_generator_determinism():
    check_seeded_draws(AliasTable(torch.rand(100, generator=torch.Generator().manual_seed(3))))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_weights(bad):
    with pytest.raises(RuntimeError, match=r"weights\[2\] = .* not a valid weight"):
        AliasTable(torch.tensor([1.0, 1.0, bad]))
    w = torch.ones(100_000, dtype=torch.float64)
    w[[70_001, 90_000]] = bad
    with pytest.raises(RuntimeError, match=r"weights\[70001\] = .* not a valid weight"):
        ops.alias_table_build(w)


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
    table = AliasTable(torch.ones(4))
    with pytest.raises(ValueError, match="n must be >= 0"):
        table.sample(-1)
    with pytest.raises(RuntimeError, match=r"u\[1, 0\] = 1 is not in \[0, 1\)"):
        ops.alias_table_sample(table._prob, table._alias,
                               torch.tensor([[0.5], [1.0]], dtype=torch.float64))


def test_opcheck():
    g = torch.Generator().manual_seed(6)
    w = sparse(333, g)
    prob, alias = ops.alias_table_build(w)
    torch.library.opcheck(ops.alias_table_build, (w,))
    torch.library.opcheck(ops.alias_table_sample,
                          (prob, alias, torch.rand(2, 64, dtype=torch.float64, generator=g)))


# The CPU build works on groups of 4 items, blocks of 1024 and parts of 16 blocks: sizes
# around them.
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
    check_table(w, *ops.alias_table_build(w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_independent_of_threads(dtype):
    g = torch.Generator().manual_seed(10)
    w = torch.cat([torch.rand(40000, generator=g, dtype=dtype) ** 3,
                   torch.zeros(3000, dtype=dtype), torch.rand(20000, generator=g, dtype=dtype)])
    threads = torch.get_num_threads()
    try:
        tables = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            tables.append(ops.alias_table_build(w))
    finally:
        torch.set_num_threads(threads)
    for prob, alias in tables[1:]:
        assert torch.equal(prob, tables[0][0]) and torch.equal(alias, tables[0][1])
    check_table(w, *tables[0])


def test_rebuilt_table_reuses_the_memory_of_a_freed_one():
    """The CPU build hands its last output buffers out again once nothing references them
    (no fresh pages to fault in), and never ones still held."""
    g = torch.Generator().manual_seed(12)
    w1, w2, w3 = (torch.rand(5000, generator=g) ** 2 for _ in range(3))
    held = ops.alias_table_build(w1)
    kept = [t.clone() for t in held]
    second = ops.alias_table_build(w2)
    addresses = [t.data_ptr() for t in second]
    assert not {t.data_ptr() for t in held} & set(addresses)
    del second
    others = [torch.empty(5000, dtype=torch.float64), torch.empty(5000, dtype=torch.int32)]
    third = ops.alias_table_build(w3)  # malloc would give `others` the freed memory
    assert [t.data_ptr() for t in third] == addresses
    assert not {t.data_ptr() for t in others} & set(addresses)
    check_table(w3, *third)
    assert all(torch.equal(t, k) for t, k in zip(held, kept))


def test_table_rebuilt_in_a_loop_alternates_two_buffers():
    """`table = build(w)` in a loop holds the previous table during the call: the build
    keeps two buffers, so the table before it is the one reused."""
    g = torch.Generator().manual_seed(13)
    ws = [torch.rand(6000, generator=g) ** 3 for _ in range(3)]
    table = ops.alias_table_build(ws[0])
    first = [t.data_ptr() for t in table]
    table = ops.alias_table_build(ws[1])
    assert not {t.data_ptr() for t in table} & set(first)
    table = ops.alias_table_build(ws[2])
    assert [t.data_ptr() for t in table] == first
    check_table(ws[2], *table)


def test_sum_overflow():
    with pytest.raises(RuntimeError, match="sum of the weights overflows float64"):
        ops.alias_table_build(torch.tensor([1e308, 1e308, 1.0], dtype=torch.float64))


@interpreted
@pytest.mark.parametrize("name", ["sparse", "adversarial", "uniform", "one", "single"])
def test_triton_build_and_sample(name):
    from is_kernels import alias_table_triton as at

    g = torch.Generator().manual_seed(7)
    w = WEIGHTS[name](g)[:2000]
    prob, alias = at.build(w)
    check_table(w, prob, alias)
    u = torch.rand(2, 3000, dtype=torch.float64, generator=g)
    assert torch.equal(at.sample(prob, alias, u), ops.alias_table_sample(prob, alias, u))


@interpreted
def test_triton_equals_cpp_on_exact_sums():
    # Small integer weights summing to 2 * N: every p is a multiple of 1/2 and every prefix sum
    # is exact, so the builds (which add in different orders) give the same table.
    from is_kernels import alias_table_triton as at

    g = torch.Generator().manual_seed(8)
    half = torch.randint(0, 5, (512,), generator=g)
    w = torch.cat([half, 4 - half])[torch.randperm(1024, generator=g)].float()
    cp, ca = ops.alias_table_build(w)
    tp, ta = at.build(w)
    assert torch.equal(cp, tp) and torch.equal(ca, ta)


@cuda
def test_cuda():
    g = torch.Generator().manual_seed(9)
    w = sparse(1 << 20, g)
    table = AliasTable(w.cuda())
    check_table(w, table._prob, table._alias)
    out = table.sample(200_000, generator=torch.Generator(device="cuda").manual_seed(0))
    assert (w[out.cpu()] > 0).all()
    small = AliasTable(w[:1000].cuda())
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
