"""Runs every kernel benchmark in bench/ and records the results for the kind of machine it runs on.

Usage::

    python bench/run_all.py [--out-dir DIR] [--note TEXT] [pytest args...]
    python bench/run_all.py --render bench/results/cpu.json

A run writes ``DIR/<kind>.json`` (the data) and ``DIR/<kind>.md`` (the table generated from
it), replacing the previous run of the same machine kind: ``cpu``, or ``gpu-<model>`` from the
CUDA device's name (``gpu-h200`` for an NVIDIA H200). DIR defaults to ``bench/results`` for a
run of every benchmark; a run restricted to some files (benchmark files among the pytest
args) only prints its table unless ``--out-dir`` is given. ``--render`` regenerates the table
from a JSON file alone.

The JSON holds the machine (device or CPU model, core count), the torch / Triton / Python
versions, the command, a UTC timestamp, every benchmark's statistics and the rows of the
table. In each benchmark group the entry whose name contains ``is_kernels`` is ours; every
other entry of the group is an alternative, reported with its median and the ratio
``alternative median / our median`` (> 1: ours is faster), both measured in the same run.
Groups that compare our samplers with each other have no ``is_kernels`` entry: there each
entry is reported against the one named ``uniform``, as an overhead in percent (and the
paired overhead the benchmark measured against a uniform twin, when it records
``extra_info["paired_overhead_pct"]``). Our entry may record ``extra_info["paired_ratios"]``
(alternative name -> ratio measured alternately, see ``bench/paired.py``), shown next to the
ratio of medians. Groups whose benchmarks record ``extra_info["bytes"]`` also get our
achieved GB/s.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def cpu_flags() -> List[str]:
    """The SIMD extensions among the CPU's flags that the kernels can use."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return []
    return [x for x in ("avx2", "fma", "avx512f", "amx_tile") if x in flags]


def machine_kind(gpu_name: Optional[str]) -> str:
    """``cpu``, or ``gpu-<model>`` from a CUDA device name (``NVIDIA H200`` -> ``gpu-h200``)."""
    if not gpu_name:
        return "cpu"
    words = [w for w in re.split(r"[^a-z0-9]+", gpu_name.lower()) if w]
    model = [w for w in words if w not in ("nvidia", "geforce", "tesla")] or words
    return "gpu-" + "-".join(model)


def environment(command: str) -> Dict[str, Any]:
    """The facts a result depends on: machine, versions, command, time."""
    import torch

    from is_kernels.environment import cpu_model

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "machine_kind": machine_kind(gpu),
        "gpu": gpu,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "allocator": ("glibc malloc pinned by bench/conftest.py"
                      if platform.libc_ver()[0] == "glibc" else "default"),
        "command": command,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def benchmarks_of(report: dict) -> List[Dict[str, Any]]:
    """The statistics of pytest-benchmark's JSON report that the tables use."""
    keep = ("median", "min", "mean", "stddev", "iqr", "rounds")
    return [{"group": b["group"] or b["name"], "name": b["name"],
             "stats": {k: b["stats"][k] for k in keep},
             "extra_info": b.get("extra_info", {})} for b in report["benchmarks"]]


def rows_of(benchmarks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (group, alternative), or per sampler against ``uniform``; times in ms."""
    groups = defaultdict(list)
    for b in benchmarks:
        groups[b["group"]].append(b)
    rows = []
    for group in sorted(groups):
        entries = groups[group]
        ours = [b for b in entries if "is_kernels" in b["name"]]
        if not ours:
            rows += overhead_rows(group, entries)
            continue
        ours = ours[0]
        med = ours["stats"]["median"]
        nbytes = ours["extra_info"].get("bytes")
        base = {"group": group, "ours": ours["name"].removeprefix("test_"),
                "ours_ms": med * 1e3, "gbps": nbytes / med / 1e9 if nbytes else None}
        if len(entries) == 1:  # timed alone (e.g. one half of a round)
            rows.append(base)
        paired_ratios = ours["extra_info"].get("paired_ratios", {})
        for alt in sorted(entries, key=lambda b: b["name"]):
            if alt is ours:
                continue
            label = alt["name"].removeprefix("test_")
            amed = alt["stats"]["median"]
            rows.append({**base, "alternative": label, "alt_ms": amed * 1e3,
                         "ratio": amed / med, "paired_ratio": paired_ratios.get(label)})
    return rows


def overhead_rows(group: str, entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows of each entry against the group's ``uniform`` entry: time over it, in percent."""
    base = [b for b in entries if b["name"].endswith("[uniform]")]
    if len(base) != 1:
        return []
    bmed = base[0]["stats"]["median"]
    rows = []
    for b in sorted(entries, key=lambda b: b["name"]):
        if b is base[0]:
            continue
        med = b["stats"]["median"]
        rows.append({"group": group, "ours": b["name"].removeprefix("test_"),
                     "ours_ms": med * 1e3, "alternative": "uniform", "alt_ms": bmed * 1e3,
                     "overhead_pct": 100 * (med - bmed) / bmed,
                     "paired_overhead_pct": b["extra_info"].get("paired_overhead_pct")})
    return rows


def render(data: Dict[str, Any]) -> str:
    """The markdown table of a result file (its header says where and how it was measured)."""
    env = data["environment"]
    flags = ", ".join(env["cpu_flags"]) or "none"
    machine = (f"{env['gpu']}; host CPU {env['cpu_model']}, {env['cpu_count']} cores"
               if env["gpu"] else
               f"{env['cpu_model']}, {env['cpu_count']} cores (SIMD: {flags})")
    lines = [
        f"# Benchmarks: {env['machine_kind']}",
        "",
        f"Generated from `{env['machine_kind']}.json` by `python bench/run_all.py --render`.",
        "",
        f"- machine: {machine}",
        f"- torch {env['torch']}, Triton {env['triton'] or 'not installed'}, "
        f"Python {env['python']}; allocator: {env['allocator']}",
        f"- command: `{env['command']}`, {env['timestamp']}",
        "- medians of pytest-benchmark rounds; a ratio compares two medians of the same run "
        "(\"paired\": measured alternately, see `bench/paired.py`)",
    ]
    if data.get("note"):
        lines.append(f"- {data['note']}")
    lines += ["", "| benchmark | ours | ours median | alternative | alt median | "
              "ratio (alt/ours) | ours GB/s |", "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        gbps = "" if r.get("gbps") is None else f"{r['gbps']:.1f}"
        alt = r.get("alternative", "—")
        alt_ms = "" if "alt_ms" not in r else f"{r['alt_ms']:.3f} ms"
        if "overhead_pct" in r:
            paired = r.get("paired_overhead_pct")
            ratio = f"overhead {r['overhead_pct']:+.1f}%" + (
                "" if paired is None else f" (paired: {paired:+.1f}%)")
        elif "ratio" in r:
            paired = r.get("paired_ratio")
            ratio = f"{r['ratio']:.2f}x" + ("" if paired is None else f" (paired: {paired:.2f}x)")
        else:
            ratio = ""
        lines.append(f"| {r['group']} | {r['ours']} | {r['ours_ms']:.3f} ms | {alt} | {alt_ms} | "
                     f"{ratio} | {gbps} |")
    return "\n".join(lines) + "\n"


def write(data: Dict[str, Any], out_dir: str) -> str:
    """Writes ``<kind>.json`` and ``<kind>.md`` to out_dir, replacing them; returns the .md."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, data["environment"]["machine_kind"])
    with open(stem + ".json", "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    with open(stem + ".md", "w") as f:
        f.write(render(data))
    return stem + ".md"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", help="where <kind>.json and <kind>.md go (default: "
                        "bench/results for a run of every benchmark, none otherwise)")
    parser.add_argument("--note", help="a sentence recorded with the results (e.g. the "
                        "machine's load)")
    parser.add_argument("--render", metavar="JSON", help="print the table of a result file, "
                        "rewrite the .md beside it, and exit")
    args, pytest_args = parser.parse_known_args(argv)
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        table = render(data)
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(table)
        print(table)
        return 0
    restricted = any(a.endswith(".py") for a in pytest_args)
    out_dir = args.out_dir or (None if restricted else RESULTS)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", *([] if restricted else [HERE]), "-q",
               "--benchmark-only", f"--benchmark-json={raw}", *pytest_args]
        rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
        if not os.path.exists(raw):
            return rc or 1
        with open(raw) as f:
            report = json.load(f)
    benchmarks = benchmarks_of(report)
    data = {"environment": environment(f"python bench/run_all.py {shlex.join(argv)}".strip()),
            "note": args.note, "benchmarks": benchmarks, "rows": rows_of(benchmarks)}
    print(render(data))
    if out_dir:
        print("wrote", write(data, out_dir))
    return rc


if __name__ == "__main__":
    sys.exit(main())
