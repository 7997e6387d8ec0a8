"""Each paper's claim next to our measurement, from the harness's ``results.json`` files.

    python -m is_kernels.train.claims docs/results/fashion_mnist docs/results/online_heldout \\
        docs/results/image docs/results/pruning_heldout docs/results/pruning \\
        > docs/results/claims.md
    python -m is_kernels.train.claims --robustness docs/results/fashion_mnist \\
        docs/results/fashion_mnist_loaded docs/results/fashion_mnist_repeat

Every line pairs two methods seed by seed (:func:`~is_kernels.train.stats.paired`) and
gives the mean ± s.e. of the relevant difference. Verdict: *reproduced* when the effect has
the claimed sign and exceeds 2 standard errors, *refuted* when the opposite sign exceeds 2
standard errors, otherwise *not at this scale* (also when DLIS never switched importance
sampling on: then it is uniform sampling with replacement). "Negligible loss" claims (pruning,
InfoBatch) are reproduced when the time saved exceeds 2 s.e. and the test-error increase
at equal epochs does not (no loss detectable at this number of seeds), refuted when both
do.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

from .stats import paired

__all__ = ["CLAIMS", "verdict", "claim_lines", "robustness_lines"]

# (source, claim, task, method, baseline, metric, claimed sign: -1 lower / +1 higher)
CLAIMS = [
    ("DLIS (Katharopoulos & Fleuret 2018)",
     "lower train loss than uniform at equal wall-clock (up to 10x)",
     "fashion_mnist", "dlis", "uniform", "train_loss_time_rel", -1),
    ("DLIS (Katharopoulos & Fleuret 2018)",
     "5-17% lower test error than uniform at equal wall-clock",
     "fashion_mnist", "dlis", "uniform", "test_error_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "faster convergence than uniform (train loss, equal time)",
     "fashion_mnist", "online", "uniform", "train_loss_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "lower test error than uniform at equal time",
     "fashion_mnist", "online", "uniform", "test_error_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "faster convergence than uniform (train loss, equal "
     "time), the swept default on seeds not used to choose it", "online_heldout", "online",
     "uniform", "train_loss_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "gains over DLIS (train loss, equal time)",
     "fashion_mnist", "online", "dlis", "train_loss_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "gains over LOW (train loss, equal time)",
     "fashion_mnist", "online", "low", "train_loss_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "regression: faster convergence than uniform "
     "(train loss, equal time)", "image", "online", "uniform", "train_loss_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "regression: lower test MSE than uniform at equal time",
     "image", "online", "uniform", "test_error_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "regression: gains over DLIS (train loss, equal time)",
     "image", "online", "dlis", "train_loss_time_rel", -1),
    ("Online IS (Salaün et al. 2025)", "regression: gains over LOW (train loss, equal time)",
     "image", "online", "low", "train_loss_time_rel", -1),
    ("LOW (Santiago et al. 2021)", "lower test error than uniform SGD at equal epochs",
     "fashion_mnist", "low", "uniform", "test_error_epochs_rel", -1),
]
# (source, claim, task, method): time saved at equal epochs with no detectable error increase
PRUNING_CLAIMS = [
    (source, claim, key, method)
    for source, claim, method in (
        ("Online pruning (Salaün et al. 2025)",
         "pruning cuts training time at negligible accuracy loss", "pruning_is"),
        ("InfoBatch (Qin et al. 2024)", "lossless accuracy while saving ~40% of the cost",
         "infobatch"))
    for key in ("pruning_heldout", "pruning", "fashion_mnist")
]


def _pm(stat: Dict[str, Any]) -> str:
    se = stat["se"]
    return f"{stat['mean']:+.1f} ± {se:.1f}" if se is not None else f"{stat['mean']:+.1f}"


def verdict(stat: Dict[str, Any], sign: int) -> str:
    """*reproduced* / *refuted* / *not at this scale* of a claimed sign (see module doc)."""
    mean, se = stat["mean"], stat["se"]
    if se is None or mean is None:
        return "not at this scale (one seed)"
    if sign * mean > 2 * se:
        return "reproduced"
    if -sign * mean > 2 * se:
        return "refuted"
    return "not at this scale"


def _seeds(res: Dict[str, Any]) -> str:
    """``", seeds 0–4"`` (a range) or ``", seeds 0, 7"`` from the run's config; ``""``
    without one."""
    seeds = sorted(res.get("config", {}).get("seeds", []))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f", seeds {seeds[0]}–{seeds[-1]}"
    return ", seeds " + ", ".join(map(str, seeds)) if seeds else ""


def _load(directory: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(directory, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def claim_lines(results: Dict[str, Dict[str, Any]]) -> List[str]:
    """Markdown table rows: claim, source, our figure (mean ± s.e., n seeds), verdict;
    ``results`` maps a result directory's base name to its loaded ``results.json``."""
    rows = ["| claim | source | ours (mean ± s.e. over seeds) | verdict |", "|---|---|---|---|"]
    for source, claim, key, method, base, metric, sign in CLAIMS:
        res = results.get(key)
        if not res or method not in res["runs"] or base not in res["runs"]:
            continue
        p = paired(res["runs"][method], res["runs"][base])
        stat = p[metric]
        where = f"at {p['at_time']:.1f} s" if "time" in metric else \
            f"at epoch {p['at_epoch']:.0f}"
        what = metric.split("_")[0] + (" loss" if "loss" in metric else " error")
        if key == "image" and "error" in metric:
            what = "test MSE"
        outcome, note = verdict(stat, sign), ""
        is_on = [r["is_on_mean"] for r in res["runs"][method] if "is_on_mean" in r]
        if is_on:
            note = f", IS on in {100 * sum(is_on) / len(is_on):.0f}% of the steps"
            if not any(is_on):  # DLIS never switched importance sampling on
                outcome = "not at this scale (IS never on)"
        rows.append(f"| {claim} | {source} | {method} vs {base}: {what} {_pm(stat)} % {where} "
                    f"(n = {stat['n']}{_seeds(res)}, wins {p['win_' + metric[:-4]]:.0%}{note}) | "
                    f"{outcome} |")
    for source, claim, key, method in PRUNING_CLAIMS:
        res = results.get(key)
        if not res or method not in res["runs"] or "uniform" not in res["runs"]:
            continue
        p = paired(res["runs"][method], res["runs"]["uniform"])
        saved, err = p["time_saved_pct"], p["test_error_epochs_abs"]
        err_pts = {k: (v * 100 if isinstance(v, float) else v) for k, v in err.items()}
        if verdict(saved, +1) != "reproduced":
            outcome = "not at this scale"
        else:  # time is saved: is a loss of accuracy detectable?
            outcome = "refuted" if verdict(err, +1) == "reproduced" else "reproduced"
        rows.append(f"| {claim} | {source} | {method} vs uniform: time saved {_pm(saved)} %, "
                    f"test error {_pm(err_pts)} points at epoch {p['at_epoch']:.0f} "
                    f"(n = {saved['n']}{_seeds(res)}) | {outcome} |")
    return rows


ROBUSTNESS_METRICS = ("train_loss_time_rel", "test_error_time_rel", "step_time_rel")


def robustness_lines(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """Markdown rows: each method's paired difference to uniform in two runs of the same
    command (``results.json`` of each, e.g. on an idle and a loaded machine), the shift
    between them, the shift in standard errors of the shift (``√(se_A² + se_B²)``: two runs
    that differ by noise alone give |z| < 2 in 95% of cases) and whether the shift stays
    within the first run's standard error."""
    rows = ["| method | metric | run A | run B | shift | shift / s.e. of shift "
            "| within s.e. of A |", "|---|---|---|---|---|---|---|"]
    for method, entry in a["summary"].items():
        other = b["summary"].get(method, {})
        if "vs_uniform" not in entry or "vs_uniform" not in other:
            continue
        for metric in ROBUSTNESS_METRICS:
            sa, sb = entry["vs_uniform"][metric], other["vs_uniform"][metric]
            shift = sb["mean"] - sa["mean"]
            ok = sa["se"] is not None and abs(shift) < sa["se"]
            se_shift = math.hypot(sa["se"], sb["se"]) \
                if sa["se"] is not None and sb["se"] is not None else None
            z = f"{shift / se_shift:+.1f}" if se_shift else "–"
            rows.append(f"| {method} | {metric} | {_pm(sa)} | {_pm(sb)} | {shift:+.1f} | {z} | "
                        f"{'yes' if ok else 'no'} |")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """``claims DIR...`` prints the claim table; ``claims --robustness A B...`` compares
    run A of a command with each other run B of it, one table each."""
    dirs = sys.argv[1:] if argv is None else argv
    if dirs and dirs[0] == "--robustness":
        if len(dirs) < 3:
            print("usage: claims --robustness DIR_A DIR_B [DIR_B ...]", file=sys.stderr)
            return 2
        loaded = {d: _load(d) for d in dirs[1:]}
        missing = [d for d, res in loaded.items() if res is None]
        if missing:
            print(f"no results.json in {', '.join(missing)}", file=sys.stderr)
            return 2
        a = loaded[dirs[1]]
        name = lambda d: os.path.basename(os.path.normpath(d))
        tables = [f"### A = `{name(dirs[1])}`, B = `{name(d)}`\n\n" +
                  "\n".join(robustness_lines(a, loaded[d])) for d in dirs[2:]]
        print("\n\n".join(tables))
        return 0
    results = {}
    for d in dirs:
        res = _load(d)
        if res is None:
            print(f"{d}: no results.json", file=sys.stderr)
            return 2
        results[os.path.basename(os.path.normpath(d))] = res
    print("\n".join(claim_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
