"""Paired timing for the benchmarks: two functions run alternately (the order flips every
round), so the drift of a shared machine hits both alike. More robust than two medians
taken minutes apart; ``bench/run_all.py`` reports these next to the medians."""
from __future__ import annotations

import statistics
import time
from typing import Callable, List, Tuple


def paired_times(a: Callable[[], object], b: Callable[[], object],
                 rounds: int) -> Tuple[List[float], List[float]]:
    """The times of ``a`` and of ``b`` in each of ``rounds`` rounds (seconds)."""
    ta, tb = [], []
    for r in range(rounds):
        for fn, times in ((a, ta), (b, tb))[::1 if r % 2 else -1]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return ta, tb


def paired_overhead(step: Callable[[], object], base: Callable[[], object],
                    rounds: int = 300) -> float:
    """Overhead of ``step`` over ``base`` in percent: the median over rounds of their time
    difference, over the median ``base`` time."""
    ts, tb = paired_times(step, base, rounds)
    return 100.0 * statistics.median(s - b for s, b in zip(ts, tb)) / statistics.median(tb)


def paired_ratio(ours: Callable[[], object], alt: Callable[[], object],
                 rounds: int = 100) -> float:
    """How many times faster ``ours`` is than ``alt``: the median over rounds of
    ``alt time / ours time``."""
    to, ta = paired_times(ours, alt, rounds)
    return statistics.median(a / o for o, a in zip(to, ta))
