"""Online importance sampling: warm-up, memory update, distribution, unbiasedness, resume,
bad input, and a gradient-variance check on a real model."""
import math

import pytest
import torch
from chisquare import chisquare
from sampler_helpers import drive
from triton_env import INTERPRETER_WORKS

import is_kernels
from is_kernels import LossImportanceSampler, OnlineImportanceSampler, online_is
from is_kernels.online_is import mixture


def make(n=20, b=4, seed=0, **kw):
    return OnlineImportanceSampler(n, b, generator=torch.Generator().manual_seed(seed), **kw)


def finish_warmup(s, scores):
    """Runs the warm-up epoch, feeding score[i] for each drawn i."""
    seen = []
    for _ in range(len(s)):
        idx, w = s.sample()
        assert torch.equal(w, torch.ones_like(w))
        s.update(idx, scores[idx])
        seen.append(idx)
    return torch.cat(seen)


def test_warmup_scores_every_sample_once_then_memory_is_the_scores():
    n = 22
    scores = torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.1
    s = make(n, 4)
    assert len(s) == 6 and s.in_warmup
    seen = finish_warmup(s, scores)
    assert torch.equal(seen.sort().values, torch.arange(n))
    assert torch.equal(s.importance, scores)
    assert not s.in_warmup and s.epoch == 0  # epoch 1 starts with the next draw
    idx, _ = s.sample()
    assert s.epoch == 1


def test_momentum_update_and_weights():
    n, m, lam = 10, 0.3, 0.2
    scores = torch.arange(1, n + 1, dtype=torch.float32)
    s = make(n, 5, momentum=m, uniform_mix=lam)
    finish_warmup(s, scores)
    idx, w = s.sample()
    q = s.importance.clone()
    p = (1 - lam) * q / q.sum() + lam / n
    assert torch.allclose(s.probabilities(), p)
    assert torch.allclose(w, 1.0 / (n * p[idx]))
    new = torch.rand(5)
    s.update(idx, new)
    expected = q.clone()
    expected[idx] = m * q[idx] + (1 - m) * new
    assert torch.allclose(s.importance, expected)
    assert torch.allclose(s.tree.total().float(), expected.sum())


@pytest.mark.parametrize("unbiased", [True, False])
def test_all_zero_memory_draws_uniformly(unbiased):
    n, b = 12, 6
    s = make(n, b, unbiased=unbiased)
    finish_warmup(s, torch.zeros(n))  # every score 0: the sum tree is all zero
    assert torch.equal(s.probabilities(), torch.full((n,), 1.0 / n))
    counts = torch.zeros(n)
    for _ in range(400):
        idx, w = s.sample()
        assert torch.allclose(w, torch.ones(b))
        counts += torch.bincount(idx, minlength=n)
    assert chisquare(counts, torch.full((n,), counts.sum() / n))[1] > 1e-3
    s.tree.raise_errors()  # the fallback records no error


@pytest.mark.parametrize("unbiased", [True, False])
def test_draws_follow_probabilities_chi_square(unbiased):
    n, b = 30, 16
    scores = torch.rand(n, generator=torch.Generator().manual_seed(2)) ** 3
    scores[::4] = 0.0  # zero importance: drawn only through the uniform mixture
    s = make(n, b, unbiased=unbiased, uniform_mix=0.1 if unbiased else 0.0)
    finish_warmup(s, scores)
    p = s.probabilities().double()
    counts = torch.zeros(n, dtype=torch.float64)
    for _ in range(2000):
        idx, w = s.sample()
        counts += torch.bincount(idx, minlength=n).double()
        if not unbiased:
            assert torch.equal(w, torch.ones(b))
    if not unbiased:
        assert counts[p == 0].sum() == 0
    keep = p > 0
    _, pval = chisquare(counts[keep].numpy(), (p[keep] / p[keep].sum() *
                                               counts.sum()).numpy())
    assert pval > 1e-3


def test_unbiased_weighted_mean():
    n, b = 25, 5
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    s = make(n, b)
    finish_warmup(s, torch.rand(n, generator=g) ** 2)
    est = []
    for _ in range(4000):
        idx, w = s.sample()
        est.append(float((w.double() * x[idx]).mean()))
    est = torch.tensor(est)
    assert abs(est.mean() - x.mean()) < 4 * est.std() / math.sqrt(len(est))


def test_resume_is_bit_identical():
    a = make(17, 3)
    drive(a, 9, 0)  # inside the warm-up epoch (6 steps) and past it
    sd = a.state_dict()
    tail_a = drive(a, 10, 1)
    b = OnlineImportanceSampler(17, 3)
    b.load_state_dict(sd)
    tail_b = drive(b, 10, 1)
    for (i1, w1), (i2, w2) in zip(tail_a, tail_b):
        assert torch.equal(i1, i2) and torch.equal(w1, w2)
    assert torch.equal(a.importance, b.importance)


@pytest.mark.parametrize("make_bad,match", [
    (lambda idx, s: (idx, torch.full_like(s, float("nan"))), "scores must be finite"),
    (lambda idx, s: (idx, -s), "scores must be non-negative"),
    (lambda idx, s: (idx, s[:-1]), "scores must have the length of idx"),
    (lambda idx, s: (idx + 100, s), "idx must lie in"),
    (lambda idx, s: ((idx + 1) % 20, s), "idx must be the indices of a draw"),
])
def test_bad_update_raises_and_leaves_state_unchanged(make_bad, match):
    s = make(20, 4)
    finish_warmup(s, torch.rand(20) + 0.5)
    before = s.state_dict()
    idx, _ = s.sample()
    with pytest.raises(ValueError, match=match):
        s.update(*make_bad(idx, torch.rand(4)))
    assert torch.equal(s.importance, before["memory"])
    s.update(idx, torch.rand(4))  # the draw is still pending: a correct update goes through


def test_update_takes_strided_scores():
    s = make(20, 4)
    idx, _ = s.sample()
    scores = torch.rand(4, 2) + 0.5
    s.update(idx, scores[:, 1])  # a column: not contiguous
    ref = make(20, 4)
    ref_idx, _ = ref.sample()
    ref.update(ref_idx, scores[:, 1].clone())
    assert torch.equal(s.importance, ref.importance)


def test_batch_larger_than_the_dataset():
    """Warm-up draws b i.i.d. uniform indices when a permutation cannot fill a batch."""
    s = OnlineImportanceSampler(5, 8, generator=torch.Generator().manual_seed(0))
    assert s.in_warmup and len(s) == 1
    idx, w = s.sample()
    assert idx.shape == (8,) and bool(((idx >= 0) & (idx < 5)).all())
    assert torch.equal(w, torch.ones(8))
    s.update(idx, torch.rand(8))
    idx, w = s.sample()  # epoch 1: importance draws
    assert not s.in_warmup and idx.shape == (8,)


@pytest.mark.parametrize("key,value,match", [
    ("memory", torch.tensor([1.0, -5.0, 1.0, 1.0, 1.0, 1.0]), "'memory'. must be finite"),
    ("memory", torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0]), "'memory'. must be"),
    ("step_in_epoch", -1, "'step_in_epoch'. must be an int"),
])
def test_load_state_dict_rejects_bad_values_and_keeps_state(key, value, match):
    s = make(6, 2)
    drive(s, 4, 0)
    before = s.state_dict()
    bad = dict(before, epoch=7, **{key: value})
    with pytest.raises(ValueError, match=match):
        s.load_state_dict(bad)
    after = s.state_dict()
    assert after["epoch"] == before["epoch"] and torch.equal(after["memory"], before["memory"])
    assert torch.equal(after["generator"], before["generator"])


@pytest.mark.parametrize("kw,match", [({"momentum": 1.0}, "momentum must be in"),
                                      ({"uniform_mix": 1.5}, "uniform_mix must be in"),
                                      ({"uniform_mix": 0.0}, "uniform_mix must be > 0"),
                                      ({"warmup_epochs": -1}, "warmup_epochs must be >= 0")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        OnlineImportanceSampler(10, 2, **kw)


def test_loss_sampler_is_the_online_sampler_fed_losses():
    s = LossImportanceSampler(8, 2, warmup_epochs=0)
    assert s.score_type == "loss" and isinstance(s, OnlineImportanceSampler)


def test_importance_sampled_gradient_is_closer_to_the_full_gradient():
    """Softmax regression with unit-norm inputs: ||dl_i/dW|| = score_i exactly, so sampling
    by the score must cut the variance of the batch gradient against uniform at equal b."""
    g = torch.Generator().manual_seed(0)
    n, d, c, b = 512, 16, 5, 16
    X = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    Y = (X @ torch.randn(d, c, generator=g)).argmax(1)  # a linear teacher...
    noisy = torch.rand(n, generator=g) < 0.1
    Y[noisy] = torch.randint(0, c, (int(noisy.sum()),), generator=g)  # ...and 10% label noise
    model = torch.nn.Linear(d, c, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    for _ in range(200):  # a partly trained model: scores spread over orders of magnitude
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()

    def batch_grad(idx, w):
        model.zero_grad()
        loss, _ = is_kernels.cross_entropy_with_score(model(X[idx]), Y[idx], reduction="none")
        (w * loss).mean().backward()
        return model.weight.grad.clone()

    full = batch_grad(torch.arange(n), torch.ones(n))
    with torch.no_grad():
        scores = is_kernels.output_grad_norm(model(X), Y)
    assert scores.max() / scores.min() > 10
    errors = {}
    for name, sampler in [("uniform", is_kernels.UniformSampler(n, b, replacement=True)),
                          ("online", make(n, b))]:
        if name == "online":
            finish_warmup(sampler, scores)  # memory = the exact current scores
        errs = [float((batch_grad(*sampler.sample()) - full).pow(2).sum()) for _ in range(300)]
        errors[name] = sum(errs) / len(errs)
    assert errors["online"] < 0.8 * errors["uniform"], errors


@pytest.mark.filterwarnings("ignore")
def test_compiled_training_step_with_sampler_under_bf16_autocast():
    """torch.compile of a whole step (draw, bf16 forward, fused op, update); graph breaks
    around the sampler's Python checks are allowed, results must match eager."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    n, b = 128, 16
    X, Y = torch.randn(n, 12, generator=g), torch.randint(0, 5, (n,), generator=g)

    def run(compiled: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        s = make(n, b, warmup_epochs=0)

        def step():
            idx, w = s.sample()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(X[idx])
            loss, score = is_kernels.cross_entropy_with_score(logits, Y[idx], reduction="none")
            (w * loss).mean().backward()
            opt.step()
            opt.zero_grad()
            s.update(idx, score)
            return loss.detach()

        fn = torch.compile(step) if compiled else step
        losses = [fn() for _ in range(4)]
        return losses, s.importance.clone()

    (eager_losses, eager_q), (comp_losses, comp_q) = run(False), run(True)
    assert eager_losses[0].dtype == torch.bfloat16
    for a, c in zip(eager_losses, comp_losses):
        assert torch.allclose(a.float(), c.float(), atol=2e-2)
    assert torch.allclose(eager_q, comp_q, rtol=2e-2, atol=1e-3)


def test_set_active_restricts_draws_and_keeps_the_memory_of_inactive_samples():
    n, b, lam = 24, 16, 0.25
    scores = torch.rand(n, generator=torch.Generator().manual_seed(5)) + 0.1
    s = make(n, b, uniform_mix=lam)
    finish_warmup(s, scores)
    mask = torch.ones(n, dtype=torch.bool)
    mask[::3] = False
    s.set_active(mask)
    assert s.num_active == 16 and torch.equal(s.active, mask)
    assert torch.equal(s.importance, scores)  # inactive samples keep their memory
    assert torch.equal(s.tree.values, torch.where(mask, scores, 0.0))
    q = torch.where(mask, scores, 0.0).double()
    p = (1 - lam) * q / q.sum() + lam * mask.double() / 16
    torch.testing.assert_close(s.probabilities().double(), p, rtol=1e-5, atol=1e-7)
    counts = torch.zeros(n, dtype=torch.float64)
    for _ in range(1500):
        idx, w = s.sample()
        torch.testing.assert_close(w.double(), 1.0 / (16 * p[idx]), rtol=1e-5, atol=0)
        counts += torch.bincount(idx, minlength=n).double()
    assert counts[~mask].sum() == 0, "drew an inactive sample"
    _, pval = chisquare(counts[mask].numpy(), (p[mask] * counts.sum()).numpy())
    assert pval > 1e-4
    idx, _ = s.sample()  # a draw in flight (prefetched) while its first sample gets pruned
    mask[idx[0]] = False
    s.set_active(mask)
    s.update(idx, torch.full((b,), 5.0))
    assert float(s.importance[idx[0]]) > float(scores[idx[0]])  # its memory is updated...
    assert float(s.tree.values[idx[0]]) == 0.0  # ...and it stays out of the draws
    s.set_active(None)
    assert torch.equal(s.tree.values, s.importance) and s.num_active == n


@pytest.mark.parametrize("mask,exc,match", [
    (torch.zeros(10, dtype=torch.bool), ValueError, "at least one sample"),
    (torch.ones(9, dtype=torch.bool), ValueError, "mask must have shape"),
    (torch.ones(10), TypeError, "mask must be a bool tensor"),
    ([True] * 10, TypeError, "mask must be a bool tensor"),
])
def test_set_active_rejects_bad_masks_and_keeps_state(mask, exc, match):
    s = make(10, 2)
    finish_warmup(s, torch.rand(10) + 0.1)
    s.set_active(torch.arange(10) < 6)
    before = s.state_dict()
    with pytest.raises(exc, match=match):
        s.set_active(mask)
    after = s.state_dict()
    for key in ("memory", "active"):
        assert torch.equal(after[key], before[key])
    assert torch.equal(s.tree.values, torch.where(before["active"], before["memory"], 0.0))


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
        from is_kernels import online_is_triton

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


@pytest.mark.parametrize("active_fraction", [1.0, 0.4])
def test_update_op_equals_the_cuda_composition(active_fraction):
    """The C++ op against the tensor-op composition registered for CUDA, run on CPU."""
    state = _op_state(active_fraction=active_fraction)
    ref = [t.clone() for t in state]
    idx = torch.tensor([3, 17, 3, 49, 0, 17, 17])  # duplicates: the last one is kept
    scores = torch.rand(7, generator=torch.Generator().manual_seed(4)) * 3
    torch.ops.is_kernels.online_is_update(*state, idx, scores, 0.25)
    online_is.update_with_tensor_ops(*ref, idx, scores, 0.25)
    for got, want in zip(state, ref):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
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
    for update in (torch.ops.is_kernels.online_is_update, online_is.update_with_tensor_ops):
        with pytest.raises((ValueError, RuntimeError), match=match):
            update(*state, torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), momentum)
        for got, want in zip(state, before):
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


@pytest.mark.parametrize("idx,scores", [([1, 2], [1.0, float("nan")]), ([1, 2], [-0.5, 1.0])])
def test_cuda_composition_drops_a_bad_batch(idx, scores):
    """The CUDA update cannot raise without a sync: a bad batch leaves the state unchanged
    (run here on CPU tensors; an index out of range is the sum tree's to drop, whose CPU op
    raises instead)."""
    state = _op_state()
    before = [t.clone() for t in state]
    online_is.update_with_tensor_ops(*state, torch.tensor(idx), torch.tensor(scores), 0.2)
    for got, want in zip(state, before):
        assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="out of range"):
        online_is.update_with_tensor_ops(*state, torch.tensor([1, 50]), torch.ones(2), 0.2)
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
