"""Results of a comparison: the tables (text), the plot and the JSON file."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from .stats import Runs, interpolate, summarize  # noqa: E402

__all__ = ["format_tables", "plot_curves", "write_report", "merge_results"]


def _pm(stat: Optional[Dict[str, Any]], fmt: str, scale: float = 1.0) -> str:
    """``mean ± se`` of a :func:`~is_kernels.train.stats.mean_se` entry ('' if absent)."""
    if not stat or stat["mean"] is None or not math.isfinite(stat["mean"]):
        return ""
    text = format(stat["mean"] * scale, fmt)
    if stat["se"] is not None:
        text += " ± " + format(stat["se"] * scale, fmt.lstrip("+"))
    return text


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _error_header(error_label: str) -> Tuple[str, str]:
    name, _, unit = error_label.partition(" (")
    return name, unit.rstrip(")")


def format_tables(summary: Dict[str, Dict[str, Any]], error_label: str, error_scale: float,
                  baselines: Sequence[str]) -> str:
    """The totals per method, then one table of paired differences per baseline."""
    name, unit = _error_header(error_label)
    fmt = ".2f" if error_scale == 100.0 else ".3g"
    rows = [["method", f"{name}{' ' + unit if unit else ''}", "train loss", "epochs",
             "train time s", "step ms", "tau_th", "IS on %", "data fraction"]]
    for method, e in summary.items():
        rows.append([method, _pm(e.get("test_error"), fmt, error_scale),
                     _pm(e.get("train_loss"), ".4f"), _pm(e.get("epochs"), ".2f"),
                     _pm(e.get("wall_clock"), ".1f"), _pm(e.get("step_time"), ".2f", 1e3),
                     _pm(e.get("tau_threshold"), ".3f"), _pm(e.get("is_on_mean"), ".1f", 100),
                     _pm(e.get("data_fraction_final"), ".3f")])
    parts = [_table(rows)]
    for baseline in baselines:
        key = f"vs_{baseline}"
        entries = [(m, e[key]) for m, e in summary.items() if key in e]
        if not entries:
            continue
        p0 = entries[0][1]
        rows = [["method", f"{name} @ep %", "train loss @ep %", f"{name} @t %",
                 "train loss @t %", "step time %", "time saved %",
                 "wins loss@t", f"wins {name.split()[-1]}@t"]]
        for method, p in entries:
            rows.append([method, _pm(p["test_error_epochs_rel"], "+.1f"),
                         _pm(p["train_loss_epochs_rel"], "+.1f"),
                         _pm(p["test_error_time_rel"], "+.1f"),
                         _pm(p["train_loss_time_rel"], "+.1f"),
                         _pm(p["step_time_rel"], "+.1f"), _pm(p["time_saved_pct"], "+.1f"),
                         f"{p['win_train_loss_time']:.2f}", f"{p['win_test_error_time']:.2f}"])
        parts.append(f"Paired differences to {baseline} (relative, mean ± s.e. over "
                     f"{len(p0['seeds'])} seeds; negative = lower than {baseline}); @ep: at "
                     f"the last epoch both runs of a seed reached ({p0['at_epoch']:.2f}), @t: "
                     f"at the end of the shorter run of the seed's pair\n" + _table(rows))
    return "\n\n".join(parts)


def _band(runs: Sequence[Dict[str, Any]], axis: str, metric: str, n: int = 60):
    """Grid over the range every seed covers, mean and s.e. of the interpolated values."""
    end = min(r["curve"][-1][axis] for r in runs)
    grid = np.linspace(0.0, end, n)
    values = np.array([[interpolate(r["curve"], axis, x, metric) for x in grid] for r in runs])
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0 * mean
    return grid, mean, se


def plot_curves(runs: Runs, path: str, error_label: str, error_scale: float) -> None:
    """Train loss (log) and the error metric against training time (top) and epochs
    (bottom): per method the mean over seeds and a ± s.e. band. The error axis is zoomed
    to the range the methods span after the first quarter of training."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    lows, highs = [], []
    for color, (method, method_runs) in enumerate(runs.items()):
        style = dict(color=f"C{color % 10}", label=method)
        for row, axis in enumerate(("wall_clock", "epoch")):
            for col, metric in enumerate(("train_loss", "test_error")):
                scale = error_scale if metric == "test_error" else 1.0
                grid, mean, se = _band(method_runs, axis, metric)
                ax = axes[row][col]
                ax.plot(grid, mean * scale, lw=1.4, **style)
                ax.fill_between(grid, (mean - se) * scale, (mean + se) * scale,
                                color=style["color"], alpha=0.2, lw=0)
                if metric == "test_error":
                    late = grid >= 0.25 * grid[-1]
                    lows.append(float(((mean - se) * scale)[late].min()))
                    highs.append(float(((mean + se) * scale)[late].max()))
    if lows:
        pad = 0.08 * (max(highs) - min(lows) or 1.0)
        for row in axes:
            row[1].set_ylim(min(lows) - pad, max(highs) + pad)
    for row, xlabel in zip(axes, ("training time (s, evaluations excluded)", "epochs")):
        row[0].set(xlabel=xlabel, ylabel="train loss", yscale="log")
        row[1].set(xlabel=xlabel, ylabel=error_label + " (zoomed)")
        for ax in row:
            ax.grid(True, alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_report(runs: Runs, out_dir: str, meta: Dict[str, Any], error_label: str,
                 error_scale: float, baselines: Sequence[str]) -> Dict[str, str]:
    """Writes ``results.json`` (``meta``, summary, every run with its curve),
    ``curves.png`` and ``table.txt`` to ``out_dir``; returns the tables and the paths."""
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(runs, baselines)
    tables = format_tables(summary, error_label, error_scale, baselines)
    paths = {name: os.path.join(out_dir, name)
             for name in ("results.json", "curves.png", "table.txt")}
    with open(paths["results.json"], "w") as f:
        json.dump(_finite_or_none({**meta, "summary": summary, "runs": runs}), f, indent=1)
    plot_curves(runs, paths["curves.png"], error_label, error_scale)
    with open(paths["table.txt"], "w") as f:
        f.write(tables + "\n")
    return {"table": tables, **paths}


def merge_results(directories: Sequence[str]) -> Tuple[Runs, Dict[str, Any]]:
    """The runs of several ``results.json`` (e.g. one process per seed), merged per method
    in seed order, and the first file's metadata with the seeds and commands of all."""
    runs: Runs = {}
    metas = []
    for directory in directories:
        with open(os.path.join(directory, "results.json")) as f:
            res = json.load(f)
        metas.append(res)
        for method, method_runs in res["runs"].items():
            runs.setdefault(method, []).extend(method_runs)
    methods = [set(m["runs"]) for m in metas]
    if any(m != methods[0] for m in methods):
        raise ValueError("the results to merge must hold the same methods")
    for method_runs in runs.values():
        method_runs.sort(key=lambda r: r["seed"])
        seeds = [r["seed"] for r in method_runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"a seed appears twice in the results to merge: {seeds}")
    meta = {k: metas[0][k] for k in ("config", "environment", "dataset") if k in metas[0]}
    meta["config"] = {**meta["config"], "seeds": [r["seed"] for r in next(iter(runs.values()))]}
    meta["merged_from"] = [{"command": m.get("command"), "seeds": m["config"]["seeds"]}
                           for m in metas]
    return runs, meta
