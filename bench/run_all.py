"""Runs every kernel benchmark in bench/ and writes a summary table: ours vs each alternative.

Usage: ``python bench/run_all.py [--out bench/results/summary-<device>.md] [pytest args...]``
(benchmark files among the pytest args restrict the run to them).
In each benchmark group the entry whose name contains ``is_kernels`` is ours; every other
entry of the group is an alternative, reported with its median and the ratio
``alternative median / our median`` (> 1: ours is faster). Groups that compare our samplers
with each other have no ``is_kernels`` entry: there each entry is reported against the one
named ``uniform``, as an overhead in percent (and the paired overhead the benchmark measured
against a uniform twin, when it records ``extra_info["paired_overhead_pct"]``). Our entry may
record ``extra_info["paired_ratios"]`` (alternative name -> ratio measured alternately, see
``bench/paired.py``), shown next to the ratio of medians. Groups whose benchmarks record
``extra_info["bytes"]`` also get our achieved GB/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def summarize(report: dict) -> str:
    """Markdown table of ours vs alternatives, one row per (group, alternative)."""
    groups = defaultdict(list)
    for b in report["benchmarks"]:
        groups[b["group"] or b["name"]].append(b)
    lines = ["| benchmark | ours median | alternative | alt median | ratio (alt/ours) | "
             "ours GB/s |", "|---|---|---|---|---|---|"]
    for group in sorted(groups):
        entries = groups[group]
        ours = [b for b in entries if "is_kernels" in b["name"]]
        if not ours:
            lines += overhead_rows(group, entries)
            continue
        ours = ours[0]
        med = ours["stats"]["median"]
        nbytes = ours.get("extra_info", {}).get("bytes")
        gbps = f"{nbytes / med / 1e9:.1f}" if nbytes else ""
        paired_ratios = ours.get("extra_info", {}).get("paired_ratios", {})
        if len(entries) == 1:  # timed alone (e.g. one half of a round)
            lines.append(f"| {group} | {med * 1e3:.3f} ms | — | | | {gbps} |")
        for alt in sorted(entries, key=lambda b: b["name"]):
            if alt is ours:
                continue
            amed = alt["stats"]["median"]
            label = alt["name"].removeprefix("test_")
            paired = paired_ratios.get(label)
            paired = "" if paired is None else f" (paired: {paired:.2f}x)"
            lines.append(f"| {group} | {med * 1e3:.3f} ms | {label} | {amed * 1e3:.3f} ms | "
                         f"{amed / med:.2f}x{paired} | {gbps} |")
    return "\n".join(lines)


def overhead_rows(group: str, entries: list) -> list:
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
        label = b["name"].removeprefix("test_")
        paired = b.get("extra_info", {}).get("paired_overhead_pct")
        paired = "" if paired is None else f" (paired: {paired:+.1f}%)"
        rows.append(f"| {group} | {med * 1e3:.3f} ms ({label}) | uniform | {bmed * 1e3:.3f} ms "
                    f"| overhead {100 * (med - bmed) / bmed:+.1f}%{paired} | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="markdown file for the summary (default: print only)")
    args, pytest_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "bench.json")
        files = [] if any(a.endswith(".py") for a in pytest_args) else [HERE]
        cmd = [sys.executable, "-m", "pytest", *files, "-q", "--benchmark-only",
               f"--benchmark-json={raw}", *pytest_args]
        rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
        if not os.path.exists(raw):
            return rc or 1
        with open(raw) as f:
            report = json.load(f)
    import torch

    allocator = ("glibc malloc pinned by bench/conftest.py; "
                 if platform.libc_ver()[0] == "glibc" else "")
    header = (f"Device: {device_name()}; torch {torch.__version__}; {allocator}"
              f"command: `python bench/run_all.py {' '.join(argv or sys.argv[1:])}`\n\n")
    table = header + summarize(report) + "\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)
    return rc


if __name__ == "__main__":
    sys.exit(main())
