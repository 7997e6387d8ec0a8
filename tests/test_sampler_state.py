"""Every sampler's state_dict: the configuration it was saved under, the outstanding draws,
and set_epoch right after a load."""
import pytest
import torch

import is_kernels

N, B = 40, 8

# name -> (constructor, keyword arguments, a changed configuration: field, keyword, value)
SAMPLERS = {
    "uniform": (is_kernels.UniformSampler, {}, ("replacement", "replacement", True)),
    "online": (is_kernels.OnlineImportanceSampler, {}, ("uniform_mix", "uniform_mix", 0.3)),
    "dlis": (is_kernels.PresampleImportanceSampler, {}, ("presample_size", "presample", 4.0)),
    "pruning": (is_kernels.ImportancePruningSampler, {"epochs": 6, "prune_fraction": 0.1},
                ("prune_fraction", "prune_fraction", 0.8)),
    "pruning_unbiased": (is_kernels.ImportancePruningSampler,
                         {"epochs": 6, "prune_fraction": 0.1, "unbiased": True},
                         ("unbiased_pruning", "unbiased", False)),
    "infobatch": (is_kernels.InfoBatchSampler, {"epochs": 20, "prune_ratio": 0.1},
                  ("prune_ratio", "prune_ratio", 0.9)),
    "infobatch_epochs": (is_kernels.InfoBatchSampler, {"epochs": 20, "prune_ratio": 0.1},
                         ("epochs", "epochs", 6)),
}


def make(name, seed=0, **changes):
    cls, kwargs, _ = SAMPLERS[name]
    return cls(N, B, generator=torch.Generator().manual_seed(seed), **{**kwargs, **changes})


def run(s, steps):
    """steps draws, each updated with made-up scores; returns the draws."""
    draws = []
    for _ in range(steps):
        idx, w = s.sample()
        s.update(idx, (idx % 5).float() + 0.5)
        draws.append((idx, w))
    return draws


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_load_refuses_a_state_of_another_configuration_naming_the_field(name):
    field, keyword, value = SAMPLERS[name][2]
    other = make(name, **{keyword: value})
    run(other, 2 * len(other))
    s = make(name)
    run(s, 3)
    before = s.state_dict()
    with pytest.raises(ValueError, match=rf"state_dict\['config'\]\['{field}'\] is .* this "
                                         r"sampler has"):
        s.load_state_dict(other.state_dict())
    after = s.state_dict()
    assert after.keys() == before.keys() and all(
        torch.equal(a, b) if isinstance(a, torch.Tensor) else True
        for a, b in zip(after.values(), before.values()))
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        s.load_state_dict([("epoch", 0)])
    bad = dict(before, config=None)
    with pytest.raises(TypeError, match=r"state_dict\['config'\] must be a dict"):
        s.load_state_dict(bad)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_set_epoch_after_load_continues_the_loaded_epoch(name):
    """A resumed loop calls set_epoch(e) for the epoch it resumes in: that continues the
    epoch as saved (it used to redraw a pruning epoch's kept set and permutation)."""
    s = make(name)
    for epoch in range(2):
        s.set_epoch(epoch)
        run(s, len(s))
    s.set_epoch(2)
    run(s, 2)
    state = s.state_dict()
    want = run(s, len(s) - 2)
    resumed = make(name, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    got = run(resumed, len(want))
    for (i1, w1), (i2, w2) in zip(want, got):
        assert torch.equal(i1, i2) and torch.equal(w1, w2)
    # Only right after the load: a later set_epoch of the same epoch starts it again.
    resumed.set_epoch(3)
    assert resumed.epoch == 3


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_outstanding_draws_survive_a_state_round_trip(name):
    s = make(name)
    run(s, 2)
    ahead = [s.sample() for _ in range(3)]  # drawn, not updated (a loader's prefetch)
    state = s.state_dict()
    assert [serial for serial, *_ in state["pending"]] == [3, 4, 5]
    resumed = make(name, seed=9)
    resumed.load_state_dict(state)
    assert resumed.num_draws == 5
    for (idx, w), draw in zip(ahead, resumed.outstanding_draws()):
        assert torch.equal(idx, draw.idx) and torch.equal(w, draw.weights)
    resumed.update(ahead[1][0], torch.ones(B))  # retires draws 3 and 4
    assert [d.serial for d in resumed.outstanding_draws()] == [5]


@pytest.mark.parametrize("pending,match", [
    ("x", "must be a list"),
    ([(1, torch.zeros(2, dtype=torch.int64), torch.ones(2), None)] * 2, "serial must be"),
    ([(9, torch.zeros(2, dtype=torch.int64), torch.ones(2), None)], "serial must be"),
    ([(1, torch.full((2,), N), torch.ones(2), None)], r"idx must lie in \[0, 40\)"),
    ([(1, torch.zeros(2, dtype=torch.int64), torch.ones(3), None)], "weights must be"),
])
def test_load_rejects_bad_outstanding_draws(pending, match):
    s = make("online")
    run(s, 2)
    before = s.state_dict()
    with pytest.raises((TypeError, ValueError), match=match):
        s.load_state_dict(dict(before, num_draws=2, pending=pending))
    assert s.num_draws == 2 and s.outstanding_draws() == []
