"""Paired statistics over seeds: each method against a baseline trained on the same seeds.

Runs of one seed share the initial weights and the machine's state (the lock-step harness),
so the per-seed difference to the baseline is the quantity to average: its mean ± standard
error over seeds (s.e. = sample std / sqrt(n)) and the fraction of seeds the method wins.
Curves are compared, seed by seed, at equal epochs (the last epoch both runs of the seed
reached) and at equal training time (the end of the shorter of the two runs of the seed:
both saw the same machine, so each seed keeps its own time scale), interpolated between
evaluation points: linearly, the train loss in log space.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["mean_se", "interpolate", "paired", "summarize"]

Runs = Dict[str, List[Dict[str, Any]]]  # method -> one result of the harness per seed

CURVE_METRICS = ("train_loss", "test_error", "test_loss")
RUN_METRICS = ("test_error", "test_loss", "train_loss", "epochs", "wall_clock", "step_time",
               "samples_per_s", "tau_threshold", "tau_final", "is_on_mean",
               "data_fraction_final")


def mean_se(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean, standard error of the mean (None for one value) and n (NaN propagates)."""
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None
    return {"mean": float(a.mean()), "se": se, "n": int(a.size)}


def interpolate(curve: Sequence[Dict[str, Any]], axis: str, at: float, metric: str) -> float:
    """``metric`` of an evaluation curve at ``axis`` (``"wall_clock"`` or ``"epoch"``) =
    ``at``, linear between evaluation points (log-linear for losses)."""
    xs = np.array([p[axis] for p in curve], dtype=np.float64)
    ys = np.array([p[metric] for p in curve], dtype=np.float64)
    log = metric.endswith("loss")
    value = np.interp(at, xs, np.log(ys) if log else ys)
    return float(np.exp(value) if log else value)


def paired(method_runs: Sequence[Dict[str, Any]],
           base_runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per-seed differences of a method to a baseline (runs matched by seed).

    Relative differences are ``100·(m/b − 1)`` in percent (negative: the method is lower);
    ``*_abs`` are ``m − b``; ``time_saved_pct`` is ``100·(1 − T_m/T_b)`` of the whole runs
    (equal epochs when both ran all of them); ``win_*`` the fraction of seeds where the
    method's value is lower.
    """
    base = {r["seed"]: r for r in base_runs}
    pairs = [(r, base[r["seed"]]) for r in method_runs if r["seed"] in base]
    if not pairs:
        raise ValueError("no seed in common with the baseline")
    ms, bs = [m for m, _ in pairs], [b for _, b in pairs]
    at = {"epochs": ("epoch", [min(m["epochs"], b["epochs"]) for m, b in pairs]),
          "time": ("wall_clock", [min(m["wall_clock"], b["wall_clock"]) for m, b in pairs])}
    out: Dict[str, Any] = {"seeds": [m["seed"] for m in ms],
                           "at_epoch": float(np.mean(at["epochs"][1])),
                           "at_time": float(np.mean(at["time"][1]))}
    for where, (axis, xs) in at.items():
        for metric in CURVE_METRICS:
            mv = [interpolate(m["curve"], axis, x, metric) for m, x in zip(ms, xs)]
            bv = [interpolate(b["curve"], axis, x, metric) for b, x in zip(bs, xs)]
            out[f"{metric}_{where}_rel"] = mean_se(
                [100.0 * (a / c - 1.0) if c > 0 else math.nan for a, c in zip(mv, bv)])
            out[f"{metric}_{where}_abs"] = mean_se([a - c for a, c in zip(mv, bv)])
            out[f"win_{metric}_{where}"] = sum(a < c for a, c in zip(mv, bv)) / len(pairs)
    out["step_time_rel"] = mean_se([100.0 * (m["step_time"] / b["step_time"] - 1.0)
                                    for m, b in pairs])
    out["time_saved_pct"] = mean_se([100.0 * (1.0 - m["wall_clock"] / b["wall_clock"])
                                     for m, b in pairs])
    return out


def summarize(runs: Runs, baselines: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per method: mean ± s.e. over seeds of each run metric it has, and ``vs_<baseline>``
    (:func:`paired`) for each baseline that was run."""
    summary: Dict[str, Dict[str, Any]] = {}
    for method, method_runs in runs.items():
        entry: Dict[str, Any] = {"seeds": [r["seed"] for r in method_runs]}
        for metric in RUN_METRICS:
            values = [r[metric] for r in method_runs if r.get(metric) is not None]
            if values and all(math.isfinite(v) for v in values):
                entry[metric] = mean_se(values)
        for baseline in baselines:
            if baseline in runs and baseline != method:
                entry[f"vs_{baseline}"] = paired(method_runs, runs[baseline])
        summary[method] = entry
    return summary
