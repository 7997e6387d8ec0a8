"""Tests of the training comparison (is_kernels.train) on a tiny synthetic dataset."""
import json
import math

import pytest
import torch
from helpers.idx_files import write_fashion_mnist

# The train extra (`pip install -e '.[train]'`); a bare GPU image may lack it.
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from is_kernels.samplers import UniformSampler  # noqa: E402
from is_kernels.train import methods  # noqa: E402
from is_kernels.train.cli import main  # noqa: E402
from is_kernels.train.data import load_fashion_mnist  # noqa: E402
from is_kernels.train.loop import TrainConfig, train_run  # noqa: E402
from is_kernels.train.report import format_table, summarize  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(directory, n_train=300, n_test=100)
    return directory


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_smoke(data_dir, tmp_path, capsys, restore_threads):
    out = tmp_path / "out"
    status = main(["--data-dir", str(data_dir), "--out", str(out), "--methods", "uniform",
                   "--seeds", "0,1", "--epochs", "3", "--batch-size", "32",
                   "--eval-every", "0.05", "--threads", "1", "--no-progress"])
    assert status == 0
    table = capsys.readouterr().out
    assert "test acc %" in table and "uniform" in table
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "table.txt").read_text().strip() == table.strip()
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["methods"] == ["uniform"] and results["dataset"]["train"] == 300
    runs = results["runs"]["uniform"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert r["steps"] == 3 * 10 and r["samples"] == 3 * 300 and r["epochs"] == 3
        assert not r["stopped_by_time_budget"] and r["wall_clock"] > 0
        assert r["curve"][0]["step"] == 0 and r["curve"][-1]["step"] == r["steps"]
        for point in r["curve"]:
            assert math.isfinite(point["train_loss"]) and math.isfinite(point["test_loss"])
            assert 0 <= point["test_error"] <= 1 and 0 <= point["train_error"] <= 1
        times = [p["wall_clock"] for p in r["curve"]]
        assert times == sorted(times)
        assert 0 <= r["test_accuracy"] <= 1
        # the synthetic classes are easy: the network must have learnt something
        assert r["test_accuracy"] > 0.5 and r["train_loss"] < r["curve"][0]["train_loss"]
    summary = results["summary"]["uniform"]
    assert summary["test_accuracy"]["std"] is not None
    assert summary["step_overhead_pct"] == 0.0
    assert results["environment"]["threads"] == 1


def test_cli_rejects_bad_arguments(data_dir, capsys):
    for argv, message in [(["--methods", "nope"], "--methods"),
                          (["--epochs", "0"], "--epochs"),
                          (["--batch-size", "-2"], "--batch-size"),
                          (["--seeds", "a,b"], "--seeds"),
                          (["--momentum", "1.0"], "--momentum"),
                          (["--data-dir", str(data_dir / "missing")], "dataset-fashion-mnist")]:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--no-progress"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_time_budget_stops_the_run(data_dir):
    data = load_fashion_mnist(data_dir)
    config = TrainConfig(epochs=10_000, time_budget=0.3, batch_size=16, eval_every=0.1,
                         progress=False)
    r = train_run("uniform", 0, data, config)
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
def test_loop_drives_the_sampler_protocol(data_dir, monkeypatch, score_type):
    probes = []

    def factory(*, num_samples, batch_size, device, generator, epochs):
        probes.append(_ProbeSampler(num_samples, batch_size, device=device,
                                    generator=generator, score_type=score_type))
        return probes[-1]

    monkeypatch.setitem(methods.METHODS, "probe", factory)
    data = load_fashion_mnist(data_dir)
    config = TrainConfig(epochs=2, time_budget=None, batch_size=50, progress=False)
    runs = {name: [train_run(name, 0, data, config)] for name in ("uniform", "probe")}
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
    r = runs["probe"][0]
    assert r["tau_final"] == 12.0 and r["is_on_mean"] == 0.5
    assert r["data_fraction_mean"] == 0.25
    assert "tau_final" not in runs["uniform"][0]
    table = format_table(summarize(runs)).splitlines()
    assert "12.000" in table[3] and "50.0" in table[3] and "0.250" in table[3]
    assert table[2].rstrip().endswith("+0.0")  # uniform: optional columns blank
