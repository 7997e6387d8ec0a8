"""Tests of the sampler protocol (is_kernels.samplers) on every sampler in SAMPLERS.

A new sampler joins the protocol tests by adding one entry to SAMPLERS; tests of its own
behaviour go below the generic ones.
"""
import io
import math

import pytest
import torch
from helpers.chisquare import chisquare

from is_kernels import LossImportanceSampler, OnlineImportanceSampler
from is_kernels.samplers import Sampler, UniformSampler

N, B = 50, 8

SAMPLERS = {
    "uniform": lambda n, b, g: UniformSampler(n, b, generator=g),
    "uniform_replacement": lambda n, b, g: UniformSampler(n, b, replacement=True, generator=g),
    "online": lambda n, b, g: OnlineImportanceSampler(n, b, warmup_epochs=0, generator=g),
    "online_warmup": lambda n, b, g: OnlineImportanceSampler(n, b, generator=g),
    "adaptive": lambda n, b, g: OnlineImportanceSampler(n, b, unbiased=False, generator=g),
    "loss": lambda n, b, g: LossImportanceSampler(n, b, momentum=0.5, generator=g),
}

BIASED = {"adaptive"}  # no weights: the paper's "adaptive sampling" variant


def make(name: str, n: int = N, b: int = B, seed: int = 0) -> Sampler:
    return SAMPLERS[name](n, b, torch.Generator().manual_seed(seed))


def feed_scores(sampler: Sampler, idx: torch.Tensor, x: torch.Tensor) -> None:
    """Updates with fixed per-sample scores x (a stand-in for a model's scores)."""
    sampler.update(idx, x[idx])


@pytest.fixture(params=sorted(SAMPLERS))
def name(request):
    return request.param


# ---- generic protocol ---------------------------------------------------------------------

def test_sample_shapes_and_types(name):
    s = make(name)
    idx, w = s.sample()
    assert idx.dtype == torch.int64 and w.dtype == torch.float32
    assert idx.shape == w.shape and 0 < idx.shape[0] <= B
    assert idx.device == s.device and w.device == s.device
    assert int(idx.min()) >= 0 and int(idx.max()) < N
    p = s.probabilities()
    assert p.shape == (N,) and p.dtype == torch.float32
    assert torch.isclose(p.sum(), torch.tensor(1.0), atol=1e-5) and bool((p >= 0).all())


def test_draws_follow_probabilities_chi_square(name):
    """Counts of many draws, made with no update in between, against N·probabilities()."""
    s = make(name)
    x = torch.rand(N, generator=torch.Generator().manual_seed(1)) + 0.1
    for _ in range(len(s)):  # give stateful samplers scores to build their distribution
        idx, _ = s.sample()
        feed_scores(s, idx, x)
    p = s.probabilities().double()
    counts = torch.zeros(N, dtype=torch.float64)
    draws = 0
    for _ in range(400):
        idx, _ = s.sample()
        counts += torch.bincount(idx, minlength=N).double()
        draws += idx.shape[0]
    support = p > 0
    assert counts[~support].sum() == 0, "drew samples of probability 0"
    chi2, pvalue = chisquare(counts[support], draws * p[support])
    assert pvalue > 1e-4, f"chi2={chi2:.1f}, p={pvalue:.2e}"


def test_weighted_batch_mean_is_unbiased(name):
    """mean over many steps of (1/b)·Σ w_i·x_i ≈ mean(x), within 5 standard errors."""
    if name in BIASED:
        pytest.skip(f"{name} is biased by design")
    s = make(name)
    x = torch.rand(N, generator=torch.Generator().manual_seed(2)).double() * 10
    estimates = []
    for _ in range(3000):
        idx, w = s.sample()
        estimates.append(float((w.double() * x[idx]).mean()))
        feed_scores(s, idx, x.float())
    est = torch.tensor(estimates, dtype=torch.float64)
    stderr = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - float(x.mean())) < 5 * stderr + 1e-9


def test_len_is_steps_per_epoch(name):
    assert len(make(name, n=50, b=8)) == 7
    assert len(make(name, n=48, b=8)) == 6
    assert len(make(name, n=5, b=5)) == 1


def test_set_epoch(name):
    s = make(name)
    s.set_epoch(3)
    assert s.epoch == 3
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)
    assert s.epoch == 3


def test_resume_gives_identical_draws(name):
    x = torch.rand(N, generator=torch.Generator().manual_seed(3))
    a = make(name, seed=4)
    for _ in range(len(a) + 3):  # resume mid-epoch
        idx, _ = a.sample()
        feed_scores(a, idx, x)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = make(name, seed=5)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=False))
    for _ in range(2 * len(a)):
        (ia, wa), (ib, wb) = a.sample(), b.sample()
        assert torch.equal(ia, ib) and torch.equal(wa, wb)
        feed_scores(a, ia, x)
        feed_scores(b, ib, x)
    assert torch.equal(a.probabilities(), b.probabilities())


def test_state_dict_is_a_snapshot(name):
    s = make(name)
    sd = s.state_dict()
    first, _ = s.sample()
    s.sample()
    s.load_state_dict(sd)
    again, _ = s.sample()
    assert torch.equal(first, again)


def test_load_state_dict_rejects_other_configuration(name):
    s = make(name)
    sd = make(name, n=N + 1).state_dict()
    before = s.state_dict()
    with pytest.raises(ValueError, match="num_samples"):
        s.load_state_dict(sd)
    assert torch.equal(s.state_dict()["generator"], before["generator"])


def test_load_state_dict_rejects_incomplete_state(name):
    s = make(name)
    sd = make(name, seed=9).state_dict()
    before = s.state_dict()["generator"]
    for key in sd:
        partial = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(ValueError, match=repr(key)):
            s.load_state_dict(partial)
        assert torch.equal(s.state_dict()["generator"], before)


@pytest.mark.parametrize("n,b,arg", [(0, 4, "num_samples"), (-3, 4, "num_samples"),
                                     (10, 0, "batch_size"), (10, -1, "batch_size")])
def test_bad_sizes(name, n, b, arg):
    with pytest.raises(ValueError, match=arg):
        make(name, n=n, b=b)


def test_non_int_sizes(name):
    with pytest.raises(TypeError, match="num_samples"):
        make(name, n=10.5)
    with pytest.raises(TypeError, match="batch_size"):
        make(name, b=True)


@pytest.mark.parametrize("idx,scores,exc,arg", [
    (torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0]), ValueError, "length of idx"),
    (torch.tensor([0, N]), torch.tensor([1.0, 2.0]), ValueError, "idx must lie"),
    (torch.tensor([-1, 0]), torch.tensor([1.0, 2.0]), ValueError, "idx must lie"),
    (torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]), ValueError, "scores must be finite"),
    (torch.tensor([0, 1]), torch.tensor([1.0, float("inf")]), ValueError, "scores must be finite"),
    (torch.tensor([0, 1]), torch.tensor([1.0, -2.0]), ValueError, "scores must be non-negative"),
    (torch.tensor([0, 1], dtype=torch.int32), torch.tensor([1.0, 2.0]), TypeError, "idx"),
    (torch.tensor([0, 1]), torch.tensor([1, 2]), TypeError, "scores"),
    (torch.tensor([[0, 1]]), torch.tensor([[1.0, 2.0]]), ValueError, "idx must be 1-D"),
    ([0, 1], torch.tensor([1.0, 2.0]), TypeError, "idx"),
])
def test_update_rejects_bad_input_and_keeps_state(name, idx, scores, exc, arg):
    s = make(name)
    x = torch.rand(N, generator=torch.Generator().manual_seed(6)) + 0.1
    i, _ = s.sample()
    feed_scores(s, i, x)
    before_p, before_sd = s.probabilities(), s.state_dict()
    with pytest.raises(exc, match=arg):
        s.update(idx, scores)
    assert torch.equal(s.probabilities(), before_p)
    assert_same_state(s.state_dict(), before_sd)


def assert_same_state(actual, expected, where="state_dict"):
    """Equality of (nested) state dicts holding tensors."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_same_state(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


# ---- UniformSampler -----------------------------------------------------------------------

def test_uniform_without_replacement_is_a_permutation_per_epoch():
    s = UniformSampler(N, B, generator=torch.Generator().manual_seed(0))
    epochs = []
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = [s.sample() for _ in range(len(s))]
        assert [i.shape[0] for i, _ in batches] == [B] * 6 + [N - 6 * B]
        assert all(bool((w == 1).all()) for _, w in batches)
        perm = torch.cat([i for i, _ in batches])
        assert torch.equal(perm.sort().values, torch.arange(N))
        epochs.append(perm)
    assert not torch.equal(epochs[0], epochs[1])


def test_uniform_set_epoch_mid_epoch_starts_a_fresh_permutation():
    s = UniformSampler(N, B, generator=torch.Generator().manual_seed(0))
    s.sample()
    s.set_epoch(1)
    perm = torch.cat([s.sample()[0] for _ in range(len(s))])
    assert torch.equal(perm.sort().values, torch.arange(N))


def test_uniform_draws_past_the_epoch_advance_it():
    s = UniformSampler(N, B, generator=torch.Generator().manual_seed(0))
    for _ in range(len(s) + 1):
        s.sample()
    assert s.epoch == 1


def test_uniform_batch_larger_than_dataset():
    with pytest.raises(ValueError, match="batch_size"):
        UniformSampler(5, 6)
    idx, w = UniformSampler(5, 6, replacement=True).sample()
    assert idx.shape == (6,) and w.shape == (6,)


def test_uniform_is_reproducible_under_manual_seed():
    torch.manual_seed(7)
    a = UniformSampler(N, B).sample()[0]
    torch.manual_seed(7)
    b = UniformSampler(N, B).sample()[0]
    assert torch.equal(a, b)


def test_uniform_rejects_generator_on_another_device_and_bad_generator():
    with pytest.raises(TypeError, match="generator"):
        UniformSampler(N, B, generator=0)
    with pytest.raises(ValueError, match="generator"):
        UniformSampler(N, B, device="meta", generator=torch.Generator())


def test_uniform_load_state_dict_rejects_other_replacement():
    a = UniformSampler(N, B, replacement=True)
    with pytest.raises(ValueError, match="replacement"):
        UniformSampler(N, B).load_state_dict(a.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uniform_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    s = UniformSampler(N, B, generator=g)
    idx, w = s.sample()
    assert idx.is_cuda and w.is_cuda and s.probabilities().is_cuda
    assert not s.check_values
    s.update(idx, torch.rand(idx.shape[0], device="cuda"))


# ---- load_state_dict: invalid entries are refused, the sampler unchanged --------------------

def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _driven(kind: str, seed: int = 0) -> Sampler:
    from is_kernels import ImportancePruningSampler, InfoBatchSampler, PresampleImportanceSampler

    from helpers.samplers import drive

    g = torch.Generator().manual_seed(seed)
    s = {"uniform": lambda: UniformSampler(N, B, generator=g),
         "online": lambda: OnlineImportanceSampler(N, B, generator=g),
         "dlis": lambda: PresampleImportanceSampler(N, B, generator=g),
         "pruning": lambda: ImportancePruningSampler(N, B, epochs=4, generator=g),
         "infobatch": lambda: InfoBatchSampler(N, B, epochs=4, generator=g)}[kind]()
    drive(s, 9, seed + 1)  # into the second epoch
    return s


BAD_STATES = [
    ("uniform", "epoch", lambda sd: -1), ("uniform", "epoch", lambda sd: "1"),
    ("uniform", "position", lambda sd: "x"), ("uniform", "position", lambda sd: N + 1),
    ("uniform", "permutation", lambda sd: sd["permutation"] + 1000),
    ("uniform", "permutation", lambda sd: torch.zeros(N, dtype=torch.int64)),
    ("uniform", "permutation", lambda sd: sd["permutation"].float()),
    ("dlis", "tau", lambda sd: "x"), ("dlis", "tau", lambda sd: float("nan")),
    ("dlis", "tau_threshold", lambda sd: 0.5), ("dlis", "steps_on", lambda sd: 10**6),
    ("pruning", "kept_order", lambda sd: sd["kept_order"] + 1000),
    ("pruning", "kept_position", lambda sd: "x"), ("pruning", "kept_steps", lambda sd: -1),
    ("pruning", "stale", lambda sd: -torch.ones(N, dtype=torch.int64)),
    ("pruning", "report", lambda sd: [1, 2]),
    ("infobatch", "scores", lambda sd: torch.full((N,), float("nan"))),
    ("infobatch", "kept_weights", lambda sd: -torch.ones(sd["kept_order"].shape)),
    # loaded, then drawn as weights of that dtype (the draws' weights are float32)
    ("infobatch", "kept_weights",
     lambda sd: torch.ones(sd["kept_order"].shape, dtype=torch.float64)),
    ("pruning", "kept_weights", lambda sd: torch.ones(sd["kept_order"].shape, dtype=torch.int64)),
    # finite in float64, inf in float32, where the scores are kept
    ("infobatch", "scores", lambda sd: torch.full((N,), 1e39, dtype=torch.float64)),
]


@pytest.mark.parametrize("kind,key,make_bad", BAD_STATES,
                         ids=[f"{k}-{key}-{i}" for i, (k, key, _) in enumerate(BAD_STATES)])
def test_load_state_dict_rejects_invalid_entries(kind, key, make_bad):
    s = _driven(kind)
    good = s.state_dict()
    bad = dict(_driven(kind).state_dict(), epoch=good["epoch"] + 1)
    bad[key] = make_bad(bad)
    with pytest.raises(ValueError, match=repr(key)):
        s.load_state_dict(bad)
    assert _same(s.state_dict(), good)


def test_load_state_dict_puts_everything_back_when_applying_fails(monkeypatch):
    """A failure while the state is applied (simulated: set_active, its last step, raises)
    restores what was applied before it: generator, epoch, warm-up state, memory."""
    s = _driven("online")
    good, probabilities = s.state_dict(), s.probabilities()
    bad = dict(_driven("online", seed=5).state_dict(), epoch=good["epoch"] + 3)
    assert not _same(bad["memory"], good["memory"])
    assert not _same(bad["generator"], good["generator"])
    set_active, calls = s.set_active, []

    def fail_once(mask):
        calls.append(mask)
        if len(calls) == 1:
            raise RuntimeError("simulated")
        set_active(mask)

    monkeypatch.setattr(s, "set_active", fail_once)
    with pytest.raises(ValueError, match="could not be applied .*simulated"):
        s.load_state_dict(bad)
    assert len(calls) == 2  # the failed apply, and the rollback
    assert _same(s.state_dict(), good) and torch.equal(s.probabilities(), probabilities)


def _pruning(**kw):
    from is_kernels import ImportancePruningSampler

    return ImportancePruningSampler(N, B, epochs=3, **kw)


@pytest.mark.parametrize("make_bad,error,match", [
    (lambda: UniformSampler(N, B).set_epoch(1.5), TypeError, "set_epoch: epoch must be an int"),
    (lambda: OnlineImportanceSampler(N, B, warmup_epochs=1.5), TypeError, "warmup_epochs"),
    (lambda: OnlineImportanceSampler(N, B, momentum="0.2"), TypeError, "momentum must be a"),
    (lambda: OnlineImportanceSampler(N, B, uniform_mix=True), TypeError, "uniform_mix"),
    # flags: "no" and 0 were truthy or falsy without an error
    (lambda: UniformSampler(N, B, replacement="no"), TypeError,
     "UniformSampler: replacement must be a bool, got str"),
    (lambda: OnlineImportanceSampler(N, B, unbiased=0), TypeError,
     "OnlineImportanceSampler: unbiased must be a bool, got int"),
    (lambda: _pruning(importance_sampling="yes"), TypeError,
     "ImportancePruningSampler: importance_sampling must be a bool, got str"),
    (lambda: _pruning(unbiased=None), TypeError,
     "ImportancePruningSampler: unbiased must be a bool, got NoneType"),
    # devices: torch's errors did not name the argument
    (lambda: UniformSampler(N, B, device="bogus"), ValueError,
     "UniformSampler: device 'bogus' is not available"),
    (lambda: OnlineImportanceSampler(N, B, device=3.5), TypeError,
     "OnlineImportanceSampler: device must be a torch.device, a string or None, got float"),
])
def test_bad_argument_types_name_the_argument(make_bad, error, match):
    with pytest.raises(error, match=match):
        make_bad()


def test_scores_must_be_finite_in_float32():
    """1e39 is a finite float64 but inf in float32, where every sampler keeps its scores."""
    from is_kernels import InfoBatchSampler

    for s in (InfoBatchSampler(N, B, epochs=3), make("uniform"), make("online")):
        idx, _ = s.sample()
        scores = torch.ones(idx.shape[0], dtype=torch.float64)
        scores[0] = 1e39
        with pytest.raises(ValueError, match="finite"):
            s.update(idx, scores)


def test_hyper_parameters_may_be_0_dim_tensors_and_states_reload():
    from is_kernels import ImportancePruningSampler, PresampleImportanceSampler

    assert OnlineImportanceSampler(N, B, momentum=torch.tensor(0.5)).momentum == 0.5
    assert ImportancePruningSampler(N, B, epochs=3,
                                    prune_fraction=torch.tensor(0.25)).prune_fraction == 0.25
    off = PresampleImportanceSampler(N, B, tau_threshold=math.inf)  # IS never switches on
    off.load_state_dict(off.state_dict())
    assert off.tau_threshold == math.inf
