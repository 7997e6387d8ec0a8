"""Results of a comparison: summary over seeds, the table, the plot and the JSON file."""
from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

__all__ = ["summarize", "format_table", "plot_curves", "write_report"]

Runs = Dict[str, List[Dict[str, Any]]]  # method -> one result of train_run per seed

SUMMARY_METRICS = ("test_accuracy", "test_error", "test_loss", "train_loss", "epochs",
                   "wall_clock", "samples_per_s", "step_time", "tau_final", "is_on_mean",
                   "data_fraction_mean", "data_fraction_final")
BASELINE = "uniform"


def _mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def summarize(runs: Runs) -> Dict[str, Dict[str, Any]]:
    """Mean and std over seeds of every metric a method's runs have, per method.

    ``step_overhead_pct`` is the per-step training time relative to the uniform baseline,
    ``100·(t_step / t_step_uniform − 1)``, and ``time_saved_pct`` the training wall-clock
    saved against it, ``100·(1 − t / t_uniform)`` (meaningful at matched epochs: pruning),
    both present when the baseline was run.
    """
    summary: Dict[str, Dict[str, Any]] = {}
    for method, method_runs in runs.items():
        summary[method] = {"seeds": [r["seed"] for r in method_runs]}
        for metric in SUMMARY_METRICS:
            if metric in method_runs[0]:
                summary[method][metric] = _mean_std([r[metric] for r in method_runs])
    if BASELINE in summary:
        base = summary[BASELINE]["step_time"]["mean"]
        base_wall = summary[BASELINE]["wall_clock"]["mean"]
        for entry in summary.values():
            entry["step_overhead_pct"] = 100.0 * (entry["step_time"]["mean"] / base - 1.0)
            entry["time_saved_pct"] = 100.0 * (1.0 - entry["wall_clock"]["mean"] / base_wall)
    return summary


def _cell(entry: Dict[str, Any], metric: str, fmt: str, scale: float = 1.0) -> str:
    if metric not in entry:
        return ""
    value = entry[metric]
    if not isinstance(value, dict):
        return format(value * scale, fmt)
    text = format(value["mean"] * scale, fmt)
    if value["std"] is not None:
        text += " ± " + format(value["std"] * scale, fmt)
    return text


COLUMNS = (  # header, metric, format, scale
    ("method", None, "", 1.0),
    ("test acc %", "test_accuracy", ".2f", 100.0),
    ("test err %", "test_error", ".2f", 100.0),
    ("train loss", "train_loss", ".4f", 1.0),
    ("epochs", "epochs", ".2f", 1.0),
    ("wall-clock s", "wall_clock", ".1f", 1.0),
    ("samples/s", "samples_per_s", ".0f", 1.0),
    ("time saved %", "time_saved_pct", ".1f", 1.0),
    ("step overhead %", "step_overhead_pct", "+.1f", 1.0),
    ("tau", "tau_final", ".3f", 1.0),
    ("IS on %", "is_on_mean", ".1f", 100.0),
    ("data fraction", "data_fraction_final", ".3f", 1.0),
)


def format_table(summary: Dict[str, Dict[str, Any]]) -> str:
    """Plain-text table, one row per method; a cell is blank where a metric does not apply."""
    rows = [[header for header, *_ in COLUMNS]]
    for method, entry in summary.items():
        rows.append([method] + [_cell(entry, metric, fmt, scale)
                                for _, metric, fmt, scale in COLUMNS[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_curves(runs: Runs, path: str) -> None:
    """Train loss and test error against training wall-clock, one colour per method."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, (method, method_runs) in enumerate(runs.items()):
        for k, run in enumerate(method_runs):
            t = [p["wall_clock"] for p in run["curve"]]
            style = dict(color=f"C{color % 10}", alpha=0.9 if k == 0 else 0.5, marker=".",
                         label=method if k == 0 else None)
            ax_loss.plot(t, [p["train_loss"] for p in run["curve"]], **style)
            ax_err.plot(t, [100.0 * p["test_error"] for p in run["curve"]], **style)
    ax_loss.set(xlabel="training wall-clock (s)", ylabel="train loss (full set)", yscale="log")
    ax_err.set(xlabel="training wall-clock (s)", ylabel="test error (%)")
    for ax in (ax_loss, ax_err):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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


def write_report(runs: Runs, out_dir: str, meta: Dict[str, Any]) -> Dict[str, str]:
    """Writes ``results.json`` (``meta``, summary, every run), ``curves.png`` and
    ``table.txt`` to ``out_dir``; returns the table and the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(runs)
    table = format_table(summary)
    paths = {name: os.path.join(out_dir, name)
             for name in ("results.json", "curves.png", "table.txt")}
    with open(paths["results.json"], "w") as f:
        json.dump(_finite_or_none({**meta, "summary": summary, "runs": runs}), f, indent=1)
    plot_curves(runs, paths["curves.png"])
    with open(paths["table.txt"], "w") as f:
        f.write(table + "\n")
    return {"table": table, **paths}
