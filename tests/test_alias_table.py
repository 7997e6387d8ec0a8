"""Tests of is_kernels.AliasTable and its ops (C++ on CPU; Triton through the interpreter)."""
import os

import pytest
import torch

from is_kernels import AliasTable

from test_sum_tree import adversarial_weights, gof_pvalue, skewed, sparse

ops = torch.ops.is_kernels
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton_cpu = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs TRITON_INTERPRET=1 or a GPU")


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
    table = AliasTable(torch.rand(100, generator=torch.Generator().manual_seed(3)))
    a = table.sample(1000, generator=torch.Generator().manual_seed(4))
    b = table.sample(1000, generator=torch.Generator().manual_seed(4))
    c = table.sample(1000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert table.sample(0).shape == (0,)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_weights(bad):
    with pytest.raises(RuntimeError, match=r"weights\[2\] = .* not a valid weight"):
        AliasTable(torch.tensor([1.0, 1.0, bad]))


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


@triton_cpu
@pytest.mark.parametrize("name", ["sparse", "adversarial", "uniform", "one", "single"])
def test_triton_build_and_sample(name):
    from is_kernels import alias_table_triton as at

    g = torch.Generator().manual_seed(7)
    w = WEIGHTS[name](g)[:2000]
    prob, alias = at.build(w)
    check_table(w, prob, alias)
    u = torch.rand(2, 3000, dtype=torch.float64, generator=g)
    assert torch.equal(at.sample(prob, alias, u), ops.alias_table_sample(prob, alias, u))


@triton_cpu
def test_triton_equals_cpp_on_exact_sums():
    # Small integer weights: every prefix sum is exact, so both builds give the same table.
    from is_kernels import alias_table_triton as at

    w = torch.randint(0, 5, (1024,), generator=torch.Generator().manual_seed(8)).float()
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
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the default (check_values=False) never syncs
    try:
        table = AliasTable(w.cuda())
        table.sample(1000)
    finally:
        torch.cuda.set_sync_debug_mode("default")
