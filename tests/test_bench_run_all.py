"""bench/run_all.py's results: machine kinds, table rows, and the table regenerated from JSON."""
import json
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
sys.path.insert(0, BENCH)
import run_all  # noqa: E402


def _bench(group, name, median, **extra):
    stats = {"median": median, "min": median, "mean": median, "stddev": 0.0, "iqr": 0.0,
             "rounds": 5}
    return {"group": group, "name": name, "stats": stats, "extra_info": extra}


BENCHMARKS = [
    _bench("round (cpu)", "test_is_kernels_sum_tree", 0.001,
           paired_ratios={"multinomial[cpu]": 2.5}),
    _bench("round (cpu)", "test_multinomial[cpu]", 0.003),
    _bench("draw (cpu)", "test_is_kernels_draw", 0.0005),
    _bench("step (cpu)", "test_mlp_step[uniform]", 0.010),
    _bench("step (cpu)", "test_mlp_step[online]", 0.011, paired_overhead_pct=0.5),
]


def test_machine_kind():
    assert run_all.machine_kind(None) == "cpu"
    assert run_all.machine_kind("NVIDIA H200") == "gpu-h200"
    assert run_all.machine_kind("NVIDIA GeForce RTX 4090") == "gpu-rtx-4090"


def test_rows_ratios_and_overheads():
    rows = {(r["group"], r.get("alternative")): r for r in run_all.rows_of(BENCHMARKS)}
    round_ = rows[("round (cpu)", "multinomial[cpu]")]
    assert abs(round_["ratio"] - 3.0) < 1e-12 and round_["paired_ratio"] == 2.5
    assert rows[("draw (cpu)", None)]["ours_ms"] == 0.5  # timed alone: no alternative
    step = rows[("step (cpu)", "uniform")]
    assert abs(step["overhead_pct"] - 10.0) < 1e-9 and step["paired_overhead_pct"] == 0.5


def test_write_replaces_and_render_regenerates(tmp_path):
    env = run_all.environment("python bench/run_all.py")
    env["gpu"], env["machine_kind"] = None, "cpu"
    data = {"environment": env, "note": "a test", "benchmarks": BENCHMARKS,
            "rows": run_all.rows_of(BENCHMARKS)}
    md = run_all.write(data, str(tmp_path))
    data["note"] = "a second run"
    run_all.write(data, str(tmp_path))  # the same machine kind: replaced, not added
    assert sorted(os.listdir(tmp_path)) == ["cpu.json", "cpu.md"]
    table = open(md).read()
    assert "3.00x (paired: 2.50x)" in table and "overhead +10.0% (paired: +0.5%)" in table
    assert "a second run" in table and env["cpu_model"] in table
    os.remove(md)
    assert run_all.main(["--render", str(tmp_path / "cpu.json")]) == 0
    assert open(md).read() == table
    assert json.load(open(tmp_path / "cpu.json"))["environment"]["torch"] == env["torch"]
