"""Tests of the training comparison (is_kernels.train): the lock-step harness, the paired
statistics and the report, on a tiny synthetic dataset."""
import dataclasses
import json
import math
import time

import pytest
import torch
from helpers.idx_files import write_fashion_mnist

# The train extra (`pip install -e '.[train]'`); a bare GPU image may lack it.
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from is_kernels import UniformSampler  # noqa: E402
from is_kernels.train import loop, methods  # noqa: E402
from is_kernels.train.cli import main  # noqa: E402
from is_kernels.train.loop import TrainConfig, run_lockstep  # noqa: E402
from is_kernels.train.stats import interpolate, mean_se, paired  # noqa: E402
from is_kernels.train.tasks import fashion_mnist  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(directory, n_train=300, n_test=100)
    return directory


@pytest.fixture(scope="module")
def task(data_dir):
    return fashion_mnist("cpu", str(data_dir))


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(**kw):
    base = dict(epochs=2, batch_size=32, eval_every=0.02, chunk_steps=3, train_eval_size=0,
                progress=False)
    return TrainConfig(**{**base, **kw})


def test_cli_smoke(data_dir, tmp_path, capsys, restore_threads):
    out = tmp_path / "out"
    specs = "uniform,uniform_replacement,online,dlis,low,pruning_is,infobatch"
    status = main(["--data-dir", str(data_dir), "--out", str(out), "--methods", specs,
                   "--seeds", "0,1", "--epochs", "3", "--batch-size", "32",
                   "--eval-every", "0.02", "--no-progress"])
    assert status == 0
    table = capsys.readouterr().out
    assert "test error %" in table and "Paired differences to uniform " in table
    assert "Paired differences to uniform_replacement" in table
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "table.txt").read_text().strip() == table.strip()
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["methods"] == specs.split(",")
    assert results["dataset"]["train"] == 300 and results["environment"]["threads"] == 1
    for spec in specs.split(","):
        runs = results["runs"][spec]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert r["epochs"] == 3 and not r["stopped_by_time_budget"] and r["wall_clock"] > 0
            curve = r["curve"]
            assert curve[0]["step"] == 0 and curve[-1]["step"] == r["steps"]
            assert [p["epoch"] for p in curve if p["epoch_end"]] == [1, 2, 3]
            assert [p["wall_clock"] for p in curve] == sorted(p["wall_clock"] for p in curve)
            for point in curve:
                assert math.isfinite(point["train_loss"]) and 0 <= point["test_error"] <= 1
        if spec in ("uniform", "uniform_replacement", "online", "dlis", "low"):
            assert all(r["steps"] == 3 * 10 for r in runs)  # ceil(300 / 32) steps an epoch
        if spec in ("uniform", "low"):  # permutations: the last batch of an epoch is short
            assert all(r["samples"] == 3 * 300 for r in runs)
    uniform = results["runs"]["uniform"]
    assert all(r["test_error"] < 0.5 and r["train_loss"] < r["curve"][0]["train_loss"]
               for r in uniform)  # the synthetic classes are easy
    assert all(r["tau_threshold"] >= 1.0 for r in results["runs"]["dlis"])
    summary = results["summary"]
    assert "vs_uniform" not in summary["uniform"]
    p = summary["online"]["vs_uniform"]
    assert p["seeds"] == [0, 1] and p["at_epoch"] == 3
    assert p["train_loss_time_rel"]["n"] == 2 and p["train_loss_time_rel"]["se"] is not None
    assert 0 <= p["win_test_error_time"] <= 1
    assert summary["pruning_is"]["data_fraction_final"]["mean"] < 1


def test_cli_rejects_bad_arguments(data_dir, capsys):
    for argv, message in [(["--methods", "nope"], "--methods"),
                          (["--methods", "online:momentum"], "key=value"),
                          (["--methods", "uniform,uniform"], "twice"),
                          (["--epochs", "0"], "--epochs"),
                          (["--batch-size", "-2"], "--batch-size"),
                          (["--seeds", "a,b"], "--seeds"),
                          (["--momentum", "1.0"], "--momentum"),
                          (["--data-dir", str(data_dir / "missing")], "dataset-fashion-mnist")]:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--no-progress"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_parse_spec():
    assert methods.parse_spec("online:uniform_mix=0.3:momentum=0.6") == \
        ("online", {"uniform_mix": 0.3, "momentum": 0.6})
    assert methods.parse_spec("low") == ("low", {})
    with pytest.raises(ValueError, match="must be a Python literal"):
        methods.parse_spec("low:lam=abc")
    with pytest.raises(ValueError, match="nope"):
        methods.make_sampler("online:nope=1", num_samples=10, batch_size=2,
                             device=torch.device("cpu"), generator=torch.Generator(), epochs=1)


def test_lockstep_runs_share_the_start_and_nothing_else(task):
    """LOW with a huge λ gives weights 1 and draws uniform's permutations: it must follow
    uniform's trajectory exactly, so the runs share the initial weights and the draws and
    do not disturb each other; online IS equals uniform during its warm-up epoch."""
    res = run_lockstep(["uniform", "online", "low:lam=1e12", "uniform_replacement"], 3, task,
                       _config())
    u, o, low = res["uniform"], res["online"], res["low:lam=1e12"]
    ends = lambda r: [(p["train_loss"], p["test_error"]) for p in r["curve"] if p["epoch_end"]]
    assert ends(low) == pytest.approx(ends(u), rel=1e-5)
    assert ends(o)[0] == pytest.approx(ends(u)[0], rel=1e-5)
    assert ends(res["uniform_replacement"])[0] != pytest.approx(ends(u)[0], rel=1e-5)


def test_a_method_trains_alike_alone_and_in_lockstep(task):
    """Every method's trajectory (epoch ends) in a lock-step group equals its trajectory
    alone: the methods share no state (DLIS is left out: its threshold is timed)."""
    specs = [s for s in methods.DEFAULT_METHODS if s != "dlis"]
    config = _config(eval_every=0.0)
    together = run_lockstep(specs, 5, task, config)
    ends = lambda r: [(p["step"], p["train_loss"], p["test_error"]) for p in r["curve"]
                      if p["epoch_end"]]
    for spec in specs:
        alone = run_lockstep([spec], 5, task, config)[spec]
        assert ends(together[spec]) == ends(alone), spec


def test_rotation_order_changes_with_the_seed(task, monkeypatch):
    calls = []
    advance = loop._Run.advance

    def logged(self, n):
        calls.append(self.spec)
        return advance(self, n)

    monkeypatch.setattr(loop._Run, "advance", logged)
    specs = ["uniform", "uniform_replacement", "low"]
    orders = {}
    for seed in (0, 1):
        calls.clear()
        run_lockstep(specs, seed, task, _config(epochs=1))
        rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
        assert all(sorted(r) == sorted(specs) for r in rounds)  # each advances once a round
        assert len({tuple(r) for r in rounds}) > 1  # the order varies between rounds
        orders[seed] = rounds
    assert orders[0] != orders[1]


def test_clock_excludes_evaluation(task, monkeypatch):
    evaluate = loop.evaluate

    def slow(*args, **kwargs):
        _busy(0.05)  # CPU time, seen by either clock
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", slow)
    res = run_lockstep(["uniform"], 0, task, _config(eval_every=1e-4))
    r = res["uniform"]
    evals = len(r["curve"])
    assert evals == 1 + 2 * 4  # the start, then every chunk (3, 3, 3, 1 steps an epoch)
    assert r["wall_clock"] < 0.05 * 2 * evals  # 2 evaluations (train, test) per point
    assert r["wall_clock"] >= 0


def _busy(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@pytest.mark.parametrize("threads, kind", [(1, "thread_cpu"), (2, "wall")])
def test_clock_kind_follows_the_threads(restore_threads, threads, kind):
    torch.set_num_threads(threads)
    assert loop.clock_kind(torch.device("cpu")) == kind
    clock = loop._Clock(torch.device("cpu"))
    clock.time(lambda: time.sleep(0.2))  # no CPU time: only the wall clock counts it
    assert (clock.elapsed >= 0.2) == (kind == "wall")
    before = clock.elapsed
    clock.time(lambda: _busy(0.1))
    assert clock.elapsed - before >= 0.1


def test_time_budget_stops_the_run(task):
    r = run_lockstep(["uniform"], 0, task, _config(epochs=10_000, time_budget=0.3))["uniform"]
    assert r["stopped_by_time_budget"] and r["epochs"] < 10_000
    assert 0.3 <= r["wall_clock"] < 3.0
    assert len(r["curve"]) >= 3


class _ProbeSampler(UniformSampler):
    """Uniform draws that exercise the optional parts of the protocol the loop must use."""

    def __init__(self, num_samples, batch_size, *, device, generator, score_type):
        super().__init__(num_samples, batch_size, replacement=True, device=device,
                         generator=generator)
        self.score_type = score_type
        self.tau, self.is_on, self.data_fraction = 0.0, False, 0.25
        self.presampled = []  # score_fn(idx) of each draw
        self.updates = []

    def sample(self, score_fn=None):
        idx, w = super().sample()
        self.presampled.append(score_fn(idx))
        self.is_on = not self.is_on
        return idx, w

    def _update(self, idx, scores):
        self.updates.append(scores.clone())
        self.tau += 1.0


@pytest.mark.parametrize("score_type", ["output_grad", "loss"])
def test_loop_drives_the_sampler_protocol(task, monkeypatch, score_type):
    probes = []

    def factory(*, num_samples, batch_size, device, generator, epochs):
        probes.append(_ProbeSampler(num_samples, batch_size, device=device,
                                    generator=generator, score_type=score_type))
        return probes[-1]

    monkeypatch.setitem(methods.METHODS, "probe", factory)
    config = _config(batch_size=50)
    r = run_lockstep(["uniform", "probe"], 0, task, config)["probe"]
    (probe,) = probes
    assert len(probe.updates) == len(probe.presampled) == 12
    for presampled, scores in zip(probe.presampled, probe.updates):
        # score_fn and the training forward see the same parameters (before the step)
        if score_type == "output_grad":
            torch.testing.assert_close(scores, presampled, rtol=1e-4, atol=1e-6)
        else:  # loss = -log p_y and (1 - p_y) <= score <= sqrt(2)·(1 - p_y)
            one_minus_py = 1 - torch.exp(-scores)
            assert bool((presampled >= one_minus_py - 1e-5).all())
            assert bool((presampled <= math.sqrt(2) * one_minus_py + 1e-5).all())
    assert r["tau_final"] == 12.0 and r["is_on_mean"] == 0.5
    assert r["data_fraction_mean"] == 0.25


def _run(seed, points, wall_clock):
    curve = [{"wall_clock": t, "epoch": e, "train_loss": l, "test_error": err,
              "test_loss": l} for t, e, l, err in points]
    return {"seed": seed, "curve": curve, "epochs": curve[-1]["epoch"],
            "wall_clock": wall_clock, "step_time": wall_clock / 10}


def test_interpolate_and_mean_se():
    r = _run(0, [(0, 0, 1.0, 0.5), (2, 1, 0.01, 0.3)], 2)
    assert interpolate(r["curve"], "wall_clock", 1.0, "train_loss") == pytest.approx(0.1)
    assert interpolate(r["curve"], "epoch", 0.5, "test_error") == pytest.approx(0.4)
    s = mean_se([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["se"] == pytest.approx(1 / math.sqrt(3)) and s["n"] == 3
    assert mean_se([4.0])["se"] is None


def test_paired_differences():
    # the method is twice as fast: at the baseline's time 2 it has done 2 epochs
    base = [_run(s, [(0, 0, 1.0, 0.5), (2, 1, 0.5, 0.3), (4, 2, 0.25, 0.2)], 4)
            for s in (0, 1)]
    meth = [_run(0, [(0, 0, 1.0, 0.5), (1, 1, 0.5, 0.3), (2, 2, 0.2, 0.25)], 2),
            _run(1, [(0, 0, 1.0, 0.5), (1, 1, 0.5, 0.3), (2, 2, 0.3, 0.15)], 2)]
    p = paired(meth, base + [_run(7, [(0, 0, 1, 1), (1, 1, 1, 1)], 1)])
    assert p["seeds"] == [0, 1] and p["at_epoch"] == 2 and p["at_time"] == 2
    assert p["train_loss_epochs_rel"]["mean"] == pytest.approx(100 * ((0.8 + 1.2) / 2 - 1))
    assert p["test_error_epochs_abs"]["mean"] == pytest.approx(0.0)
    assert p["win_test_error_epochs"] == 0.5
    # at time 2: the baseline has 0.5 / 0.3, the method 0.2 / 0.25 and 0.3 / 0.15
    assert p["train_loss_time_rel"]["mean"] == pytest.approx(100 * ((0.4 + 0.6) / 2 - 1))
    assert p["win_train_loss_time"] == 1.0 and p["win_test_error_time"] == 1.0
    assert p["time_saved_pct"]["mean"] == pytest.approx(50.0)
    assert p["step_time_rel"]["mean"] == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="no seed in common"):
        paired(meth, [_run(9, [(0, 0, 1, 1), (1, 1, 1, 1)], 1)])


def test_image_regression_task():
    from is_kernels.train.tasks import image

    t = image("cpu")
    d = t.data
    assert d.x_train.shape[1] == 2 and d.y_train.shape[1] == 3 and d.num_classes == 3
    assert d.x_train.shape[0] + d.x_test.shape[0] == 150 * 128
    assert float(d.x_train.abs().max()) < 1 and 0 <= float(d.y_train.min()) <= \
        float(d.y_train.max()) <= 1
    small = dataclasses.replace(t, data=dataclasses.replace(
        d, x_train=d.x_train[:512], y_train=d.y_train[:512], x_test=d.x_test[:128],
        y_test=d.y_test[:128]))
    res = run_lockstep(["uniform", "online", "dlis", "low"], 0, small,
                       _config(epochs=3, batch_size=64, optimizer="adam"))
    for r in res.values():
        assert r["train_loss"] < 0.7 * r["curve"][0]["train_loss"]
        assert r["test_error"] == pytest.approx(r["test_loss"])  # the metric is the MSE


def test_claim_verdicts():
    from is_kernels.train.claims import claim_lines, verdict

    assert verdict({"mean": -5.0, "se": 1.0}, -1) == "reproduced"
    assert verdict({"mean": 5.0, "se": 1.0}, -1) == "refuted"
    assert verdict({"mean": -1.0, "se": 1.0}, -1) == "not at this scale"
    base = [_run(s, [(0, 0, 1.0, 0.5), (2, 1, 0.5, 0.3)], 2) for s in (0, 1, 2)]
    dlis = [_run(s, [(0, 0, 1.0, 0.5), (2, 1, 0.25 + 0.01 * s, 0.2 + 0.01 * s)], 2)
            for s in (0, 1, 2)]
    pruned = [_run(s, [(0, 0, 1.0, 0.5), (1.4, 1, 0.5, 0.3 + 0.001 * s)], 1.4)
              for s in (0, 1, 2)]
    rows = claim_lines({"fashion_mnist": {"runs": {"uniform": base, "dlis": dlis}},
                        "pruning_heldout": {"runs": {"uniform": base, "infobatch": pruned},
                                            "config": {"seeds": [20, 21, 22]}}})
    assert len(rows) == 2 + 2 + 1  # header, the two DLIS claims, InfoBatch's
    assert all(r.endswith("| reproduced |") for r in rows[2:])
    assert "time saved +30.0 ± 0.0 %" in rows[-1] and "(n = 3, seeds 20–22)" in rows[-1]
    assert "(n = 3, wins" in rows[2]  # no config: no seeds named


def test_robustness_lines():
    from is_kernels.train.claims import robustness_lines

    def summary(shift, se=1.0):
        stat = lambda m: {"mean": m, "se": se, "n": 3}
        return {"summary": {"uniform": {}, "online": {"vs_uniform": {
            "train_loss_time_rel": stat(-10.0 + shift), "test_error_time_rel": stat(-5.0),
            "step_time_rel": stat(0.5)}}}}

    rows = robustness_lines(summary(0.0), summary(2.0))
    assert len(rows) == 2 + 3
    # shift 2 against s.e. 1 in each run: z = 2 / sqrt(2)
    assert rows[2].endswith("| +2.0 | +1.4 | no |") and rows[3].endswith("| +0.0 | +0.0 | yes |")
    rows = robustness_lines(summary(0.0, se=None), summary(0.5, se=None))
    assert rows[2].endswith("| +0.5 | – | no |")  # one seed: no standard error


def test_robustness_command(tmp_path, capsys):
    from is_kernels.train.claims import main as claims_main

    stat = {"mean": 1.0, "se": 0.5, "n": 3}
    res = {"summary": {"online": {"vs_uniform": {m: stat for m in (
        "train_loss_time_rel", "test_error_time_rel", "step_time_rel")}}}}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    dirs = [str(tmp_path / n) for n in ("a", "b", "c")]
    assert claims_main(["--robustness", *dirs]) == 0
    out = capsys.readouterr().out
    assert "A = `a`, B = `b`" in out and "A = `a`, B = `c`" in out
    assert out.count("| online | step_time_rel |") == 2
    assert claims_main(["--robustness", dirs[0]]) == 2
    assert claims_main(["--robustness", dirs[0], str(tmp_path / "missing")]) == 2
    assert "no results.json in" in capsys.readouterr().err
