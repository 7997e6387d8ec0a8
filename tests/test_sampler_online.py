"""The online importance sampler: warm-up, memory update, distribution, unbiasedness,
resume, bad input, and a gradient-variance check on a real model."""
import math

import pytest
import torch
from helpers.chisquare import chisquare
from helpers.samplers import drive

import is_kernels
from is_kernels import LossImportanceSampler, OnlineImportanceSampler


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


def test_num_samples_beyond_the_tree_names_num_samples():
    with pytest.raises(ValueError, match=r"num_samples must be at most 2\*\*31 - 1"):
        OnlineImportanceSampler(2**31, 2)


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


def test_probabilities_with_a_total_beyond_float32_max():
    """Scores of 3e38: their sum overflows float32, not the sampler's probabilities."""
    s = make(n=8, b=8, warmup_epochs=0)
    idx, _ = s.sample()
    s.update(idx, torch.full((8,), 3e38))
    p = s.probabilities()
    assert abs(float(p.double().sum()) - 1.0) < 1e-6
    scored = torch.zeros(8, dtype=torch.bool)
    scored[idx] = True  # their memory is 3e38, the others' 1
    want = (torch.where(scored, 0.9 / int(scored.sum()), 0.0) + 0.1 / 8).double()
    torch.testing.assert_close(p.double(), want, rtol=1e-6, atol=0)
    idx, w = s.sample()
    torch.testing.assert_close(w, (1.0 / (8 * want[idx])).float(), rtol=1e-6, atol=0)
