"""The bad-input contract of every sampler, on generated inputs (hypothesis): update() and
load_state_dict() either raise a TypeError / ValueError naming the sampler and leave its
state unchanged, or accept the input and go on drawing valid batches."""
import math

import pytest
import torch
from test_sampler_state import N, SAMPLERS, make, run

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import given, settings, strategies as st  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
NAMES = ["uniform", "online", "dlis", "pruning", "pruning_unbiased", "infobatch"]


def same(a, b):
    """Deep equality of state dicts (tensors bit for bit, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.dtype == b.dtype and a.shape == b.shape and \
            torch.equal(a.isnan() if a.is_floating_point() else a,
                        b.isnan() if b.is_floating_point() else b) and \
            (not a.is_floating_point() or torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and
                      math.isnan(a) and math.isnan(b))


def refused_or_still_draws(s, call, *args):
    """call(*args) raises a TypeError / ValueError naming the sampler and changes nothing, or
    the sampler goes on drawing valid batches."""
    before = s.state_dict()
    try:
        call(*args)
    except (TypeError, ValueError) as e:
        assert type(s).__name__ in str(e)
        assert same(s.state_dict(), before)
        return
    idx, w = s.sample()
    assert bool(((idx >= 0) & (idx < N)).all()) and bool((torch.isfinite(w) & (w > 0)).all())
    s.update(idx, torch.ones(idx.shape[0]))


SCORES = st.one_of(st.floats(0.0, 10.0), st.sampled_from([math.nan, math.inf, -1.0, 1e39]))


@st.composite
def updates(draw, s):
    """(idx, scores): a drawn batch, changed or not, or arbitrary values."""
    idx, _ = s.sample()
    kind = draw(st.sampled_from(["drawn", "values", "indices", "shape", "dtype", "other"]))
    scores = torch.ones(idx.shape[0])
    if kind == "values":
        scores = torch.tensor(draw(st.lists(SCORES, min_size=idx.shape[0],
                                            max_size=idx.shape[0])))
    elif kind == "indices":
        idx = idx.clone()
        idx[draw(st.integers(0, idx.shape[0] - 1))] = draw(st.sampled_from([-1, N, 2**40]))
    elif kind == "shape":
        scores = scores[:-1] if draw(st.booleans()) else scores.view(1, -1)
    elif kind == "dtype":
        if draw(st.booleans()):
            idx = idx.int()
        else:
            scores = scores.long()
    elif kind == "other":
        idx = idx.tolist()
    return idx, scores


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_update(name, data):
    s = make(name)
    run(s, 2)
    refused_or_still_draws(s, s.update, *data.draw(updates(s)))


BAD_VALUES = [None, -1, 1.5, "x", math.nan, 2**70, [], {}, torch.tensor(math.nan),
              torch.full((N,), -1.0), torch.full((N,), math.nan),
              torch.zeros(N, dtype=torch.int64), torch.zeros(3), torch.ones(N, dtype=torch.bool),
              torch.arange(N)]


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_load_state_dict(name, data):
    s = make(name)
    run(s, 3)
    state = make(name, seed=5).state_dict()
    key = data.draw(st.sampled_from(sorted(state)))
    tampered = dict(state)
    if key == "config" and data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(state["config"])))
        tampered["config"] = dict(state["config"], **{field: data.draw(st.sampled_from(
            BAD_VALUES[:8]))})
    else:
        tampered[key] = data.draw(st.sampled_from(BAD_VALUES))
    refused_or_still_draws(s, s.load_state_dict, tampered)
