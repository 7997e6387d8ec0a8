"""DLIS: τ estimator, threshold, switching, selection distribution, unbiasedness, resume."""
import math

import pytest
import torch
from helpers.chisquare import chisquare

import is_kernels
from is_kernels import PresampleImportanceSampler, equivalent_batch_increment, tau_threshold


def test_tau_matches_variance_reduction_formula():
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 100):
        s = torch.rand(n, generator=g, dtype=torch.float64) ** 3
        gn = s / s.sum()
        u = torch.full_like(gn, 1.0 / n)
        expected = (1 - (gn - u).pow(2).sum() / gn.pow(2).sum()) ** -0.5
        assert math.isclose(float(equivalent_batch_increment(s)), float(expected), rel_tol=1e-6)
        rms_over_mean = s.pow(2).mean().sqrt() / s.mean()
        assert math.isclose(float(equivalent_batch_increment(s)), float(rms_over_mean),
                            rel_tol=1e-6)
    assert float(equivalent_batch_increment(torch.full((5,), 3.0))) == pytest.approx(1.0)
    assert float(equivalent_batch_increment(torch.zeros(4))) == 1.0
    one_hot = torch.zeros(16)
    one_hot[3] = 2.0
    assert float(equivalent_batch_increment(one_hot)) == pytest.approx(4.0)  # sqrt(n)
    with pytest.raises(ValueError, match="scores must be a non-empty 1-D"):
        equivalent_batch_increment(torch.zeros(0))



@pytest.mark.parametrize("scores, error, match", [
    ([1.0, 2.0], TypeError, "scores must be a torch.Tensor, got list"),
    (torch.tensor([1.0, math.nan]), ValueError, r"scores\[1\] = nan is not finite and >= 0"),
    (torch.tensor([1.0, -1.0]), ValueError, r"scores\[1\] = -1(\.0)? is not finite and >= 0"),
    (torch.tensor([3.0, -1.0]), ValueError, r"scores\[1\] = -1(\.0)? is not finite and >= 0"),
    (torch.tensor([1.0, math.inf]), ValueError, r"scores\[1\] = inf is not finite and >= 0"),
])
def test_equivalent_batch_increment_rejects_invalid_scores(scores, error, match):
    """NaN, negative and inf scores gave 1 or NaN without an error."""
    with pytest.raises(error, match=f"equivalent_batch_increment: {match}"):
        equivalent_batch_increment(scores)


def test_dlis_update_with_invalid_scores_unchecked_raises_and_keeps_tau():
    """With check_values off (the CUDA default), NaN training scores of a uniform draw made
    τ NaN for good (IS then never switches on); they raise, τ and the draw stay."""
    s = PresampleImportanceSampler(50, 5, generator=torch.Generator().manual_seed(0))
    s.check_values = False
    idx, _ = s.sample()
    s.update(idx, torch.rand(5))
    tau = s.tau
    idx, _ = s.sample()
    with pytest.raises(ValueError, match="PresampleImportanceSampler.update: scores must be "
                                         "finite and >= 0"):
        s.update(idx, torch.tensor([1.0, math.nan, 1.0, 1.0, 1.0]))
    assert s.tau == tau and len(s.outstanding_draws()) == 1
    s.update(idx, torch.ones(5))


def test_tau_threshold():
    assert tau_threshold(64, 192) == pytest.approx(2.0)  # (B + 3b) / (3b)
    assert tau_threshold(10, 50, 1.0, 1.0) == pytest.approx((50 + 20) / 20)
    with pytest.raises(ValueError, match="batch_size <= presample_size"):
        tau_threshold(10, 5)
    with pytest.raises(ValueError, match="forward_time"):
        tau_threshold(10, 30, 0.0, 1.0)
    with pytest.raises(TypeError, match="tau_threshold: batch_size must be an int, got bool"):
        tau_threshold(True, 30)
    with pytest.raises(TypeError, match="tau_threshold: batch_size must be an int, got float"):
        tau_threshold(2.5, 30)
    with pytest.raises(TypeError, match="tau_threshold: presample_size must be an int, got str"):
        tau_threshold(10, "30")
    for times in ((math.inf, 1.0), (1.0, math.inf), (math.nan, 1.0), (1.0, -1.0)):
        with pytest.raises(ValueError, match="tau_threshold: forward_time must be finite"):
            tau_threshold(10, 30, *times)  # inf gave a NaN threshold
    assert tau_threshold(10, 30, torch.tensor(1.0), 2.0) == pytest.approx(2.0)


def scripted(n, b, **kw):
    g = torch.Generator().manual_seed(1)
    return PresampleImportanceSampler(n, b, generator=g, **kw)


def test_switches_on_and_off_with_tau():
    b = 16
    s = scripted(100, b, presample=3.0, tau_smoothing=0.5)
    assert s.tau_threshold == pytest.approx(2.0) and s.tau == 0.0 and not s.is_on
    spiky = torch.zeros(b)
    spiky[0] = 1.0  # τ_new = sqrt(b) = 4
    flat = torch.ones(3 * b)  # τ_new = 1
    expected_tau = 0.0
    states = []
    for step in range(8):
        idx, w = s.sample(score_fn=lambda cand: flat)
        if s._drew_uniform:
            assert torch.equal(w, torch.ones(b))
            s.update(idx, spiky)
            expected_tau = 0.5 * expected_tau + 0.5 * 4.0
        else:
            s.update(idx, torch.ones(b))  # scores of a presampled batch do not move τ
            expected_tau = 0.5 * expected_tau + 0.5 * 1.0
        assert s.tau == pytest.approx(expected_tau)
        states.append(s.is_on)
    # τ after each step: 2 (2 > 2 is false: off), 3 (on), the flat presample pulls it to 2
    # (off), a spiky uniform batch lifts it to 3 (on), ...
    assert states[:4] == [False, True, False, True]
    assert 0 < s.is_on_fraction < 1


def test_needs_score_fn_when_on_and_checks_its_scores():
    s = scripted(50, 4, tau_threshold=1.0)
    s.tau = 3.0
    before = s.state_dict()
    with pytest.raises(ValueError, match="score_fn is required"):
        s.sample()
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        s.sample(lambda cand: torch.ones(3))
    with pytest.raises(ValueError, match="NaN, inf or negative"):
        s.sample(lambda cand: torch.full(cand.shape, float("nan")))
    with pytest.raises(ValueError, match="NaN, inf or negative"):
        s.sample(lambda cand: -torch.ones(cand.shape))
    with pytest.raises(ValueError, match="sum overflows"):
        s.sample(lambda cand: torch.full(cand.shape, 1e308, dtype=torch.float64))
    with pytest.raises(ValueError, match="must return floating scores"):
        s.sample(lambda cand: torch.ones(cand.shape, dtype=torch.complex64))
    with pytest.raises(ValueError, match="score_fn\\(idx\\) must return scores on the "
                                         "sampler's device cpu, got meta"):
        s.sample(lambda cand: torch.ones(cand.shape, device="meta"))  # a RuntimeError of .item()
    after = s.state_dict()  # unchanged: counters, τ and the generator
    assert torch.equal(after.pop("generator"), before.pop("generator")) and after == before
    assert len(s._pending) == 0


def test_tau_learns_from_uniform_draws_updated_late():
    """A prefetching DataLoader updates a draw after the next one was drawn: the scores of a
    uniform draw still move τ, those of an importance-sampled one do not."""
    s = scripted(100, 4, tau_threshold=1.5, tau_smoothing=0.0)
    spiky = torch.tensor([0.0, 0.0, 0.0, 1.0])  # τ_new = 2
    flat = lambda cand: torch.ones(cand.shape[0])  # noqa: E731  (τ_new = 1)
    first, _ = s.sample(flat)
    second, _ = s.sample(flat)  # both uniform: τ = 0
    s.update(first, spiky)
    assert s.tau == 2.0 and s.is_on
    third, _ = s.sample(flat)  # importance-sampled: its presample sets τ = 1
    assert s.tau == 1.0 and not s._drew_uniform
    s.update(second, spiky)  # uniform, updated late
    assert s.tau == 2.0
    s.update(third, spiky)  # importance-sampled: τ stays
    assert s.tau == 2.0


@pytest.mark.parametrize("kw,match", [({"presample": 0.5}, "presample must be a finite"),
                                      ({"presample": float("inf")}, "presample must be a finite"),
                                      ({"tau_smoothing": 1.0}, "tau_smoothing must be in"),
                                      ({"tau_threshold": 0.5}, "tau_threshold must be >= 1"),
                                      # failed at the first importance-sampled draw
                                      ({"presample": 2.0**23 + 1},
                                       r"presample·batch_size = 16777218 must be at most 2\*\*24")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        PresampleImportanceSampler(10, 2, **kw)


def score_of(i: torch.Tensor) -> torch.Tensor:
    return (i % 5).float() + 0.1 * (i % 3).float()


def test_selection_distribution_chi_square():
    """Given its candidates, the selection follows probabilities() (g over the presample)."""
    n, b = 12, 8
    s = scripted(n, b, tau_threshold=1.0)
    s.tau = 10.0
    expected = torch.zeros(n, dtype=torch.float64)
    observed = torch.zeros(n, dtype=torch.float64)
    for _ in range(3000):
        idx, _ = s.sample(score_of)
        s.tau = 10.0
        expected += b * s.probabilities().double()
        observed += torch.bincount(idx, minlength=n).double()
    assert observed[expected == 0].sum() == 0  # score 0 (i % 15 == 0) never selected
    keep = expected > 0
    _, p = chisquare(observed[keep].numpy(), expected[keep].numpy() *
                     observed.sum().item() / expected[keep].sum().item())
    assert p > 1e-3


def test_importance_sampled_batches_are_unbiased():
    n, b = 40, 10
    x = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = scripted(n, b, tau_threshold=1.0)
    estimates = []
    for _ in range(4000):
        s.tau = 10.0
        idx, w = s.sample(lambda cand: score_of(cand) + 0.05)
        estimates.append(float((w.double() * x[idx]).mean()))
    est = torch.tensor(estimates)
    stderr = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - x.mean().item()) < 4 * stderr


def test_resume_gives_identical_draws():
    def run(s, steps):
        out = []
        for _ in range(steps):
            idx, w = s.sample(score_of)
            s.update(idx, score_of(idx) ** 2)
            out.append((idx, w, s.tau, s.is_on))
        return out

    a = scripted(30, 5, tau_threshold=1.2, tau_smoothing=0.5)
    run(a, 7)
    sd = a.state_dict()
    tail_a = run(a, 6)
    b = PresampleImportanceSampler(30, 5, tau_threshold=1.2, tau_smoothing=0.5)
    b.load_state_dict(sd)
    tail_b = run(b, 6)
    for (i1, w1, t1, o1), (i2, w2, t2, o2) in zip(tail_a, tail_b):
        assert torch.equal(i1, i2) and torch.equal(w1, w2) and t1 == t2 and o1 == o2
    assert any(o for *_, o in tail_a)


def test_measure_step_costs():
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    t_f, t_b = is_kernels.measure_step_costs(model, x, y, repeats=3)
    assert t_f > 0 and t_b >= 0
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert tau_threshold(16, 48, t_f, t_b) >= 1.0



def test_measure_step_costs_rejects_bad_arguments():
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for repeats, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="measure_step_costs: repeats must be"):
            is_kernels.measure_step_costs(model, x, y, repeats=repeats)  # 0: an IndexError
    with pytest.raises(ValueError, match="measure_step_costs: inputs must hold at least one "
                                         "sample"):
        is_kernels.measure_step_costs(model, x[:0], y[:0])  # a ZeroDivisionError
    with pytest.raises(TypeError, match="measure_step_costs: inputs must be a torch.Tensor"):
        is_kernels.measure_step_costs(model, x.tolist(), y)
    with pytest.raises(TypeError, match="measure_step_costs: model must be a torch.nn.Module"):
        is_kernels.measure_step_costs(lambda t: t, x, y)
    with pytest.raises(TypeError, match="measure_step_costs: clock must be callable"):
        is_kernels.measure_step_costs(model, x, y, clock=3)


def test_measure_step_costs_reads_the_given_clock():
    """A fake clock advancing 1 s per read: every timed call lasts exactly 1 s (t_f = 1/n),
    and forward + backward too, so t_b = 0."""
    ticks = iter(range(10_000))
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    t_f, t_b = is_kernels.measure_step_costs(model, x, y, repeats=3,
                                             clock=lambda: float(next(ticks)))
    assert (t_f, t_b) == (1 / 8, 0.0)
