"""The cost of the index checks in the draw ops: the same draws timed in two checkouts (each
with its own built ``is_kernels/_C*.so``), e.g. this one and one without the checks.

Run: ``python bench/draw_check_cost.py CHECKOUT_A CHECKOUT_B [--rounds 3]``

Times 4096 draws from N = 2^20 float32 weights, on one thread, 300 repetitions each (min and
median in µs): ``alias_table_sample`` (group_size 1 and 16), ``sum_tree_sample`` and
``online_is_draw``. The checkouts run in alternating subprocesses, ``--rounds`` times each, so
the drift of a shared machine hits both alike; compare their minima.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPEATS = 300


def measure() -> str:
    """One line: ``name=min/median`` per op, in µs (runs in the checkout's subprocess)."""
    import torch

    import is_kernels  # noqa: F401  (registers the ops)

    torch.set_num_threads(1)
    ops = torch.ops.is_kernels
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1 << 20, generator=g)
    u = torch.rand((3, 4096), dtype=torch.float64, generator=g)
    inner = ops.sum_tree_build(w)
    active = torch.arange(w.numel())
    cases = {}
    for group in (1, 16):
        table = ops.alias_table_build(w, group)
        cases[f"alias_table_sample[group {group}]"] = \
            lambda table=table, group=group: ops.alias_table_sample(*table, w, u, group)
    cases["sum_tree_sample"] = lambda: ops.sum_tree_sample(w, inner, u[0])
    cases["online_is_draw"] = lambda: ops.online_is_draw(w, inner, w, active, u, 0.1, True)
    parts = []
    for name, fn in cases.items():
        for _ in range(20):
            fn()
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        parts.append(f"{name}={times[0] * 1e6:.1f}/{times[REPEATS // 2] * 1e6:.1f}")
    return " ".join(parts)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "--measure":
        print(measure())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for r in range(args.rounds):
        for checkout in args.checkouts[::1 if r % 2 == 0 else -1]:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure"],
                                 cwd=checkout, env=env, check=True, capture_output=True,
                                 text=True).stdout.strip()
            print(f"{checkout}: {out}", flush=True)


if __name__ == "__main__":
    main()
