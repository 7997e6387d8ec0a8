"""Command line: ``python -m is_kernels.train`` / ``is-kernels-train``.

The default run (seeds 0-2 of the methods the README's claims rest on, Fashion-MNIST, 3
epochs, 1 thread) makes 29,500 steps and 273 evaluations: 5.5 minutes at 8 ms per step
(a 2-core AMD EPYC); other jobs on the machine stretch the wall time, not the methods'
clocks. ``--full`` runs every method on
seeds 0-4.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
from typing import Dict, List, Optional

import torch

from ..environment import cpu_model
from .data import DEFAULT_DATA_DIR
from .loop import DEFAULT_LR, OPTIMIZERS, TrainConfig, clock_kind, run_lockstep
from .methods import BASELINES, DEFAULT_METHODS, FULL_METHODS, METHODS, parse_spec
from .models import MODELS
from .report import merge_results, write_report
from .tasks import ERROR_METRICS, TASKS, load_task

__all__ = ["build_parser", "main"]

_DEFAULTS = TrainConfig()


def _comma_list(text: str) -> List[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") \
            from None
    if not seeds:
        raise argparse.ArgumentTypeError("must name at least one seed")
    return seeds


def _number(kind: type, low: float, low_ok: bool, high: float = math.inf):
    """argparse type: a ``kind`` number in the interval from ``low`` to ``high`` (open)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind.__name__}, got {text!r}") from None
        if not (value >= low if low_ok else value > low) or not value < high:
            interval = f"{'[' if low_ok else '('}{low}, {high})"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="is-kernels-train",
        description="Train one network per sampling method, all methods in lock-step in one "
                    "process, on several seeds; report paired differences to the uniform "
                    "baselines at equal epochs and at equal training time.")
    p.add_argument("--task", choices=sorted(TASKS), default="fashion_mnist",
                   help="fashion_mnist (classification) or image (regression of a "
                        "photograph's RGB from pixel coordinates) (default: %(default)s)")
    p.add_argument("--methods", type=_comma_list, default=None,
                   help=f"comma-separated method specs, name[:key=value...], names among "
                        f"{','.join(METHODS)} (default: {','.join(DEFAULT_METHODS)}; "
                        f"--full: all)")
    p.add_argument("--full", action="store_true",
                   help="every method and seeds 0-4 (unless --methods / --seeds are given)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="comma-separated seeds (default: 0,1,2; --full: 0,1,2,3,4)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="directory of the four Fashion-MNIST IDX .gz files "
                        "(default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="output directory for results.json, curves.png, table.txt "
                        "(default: runs/<task>)")
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="network (default: the task's, mlp 784-512-512-10 or coord_mlp)")
    p.add_argument("--epochs", type=_number(int, 1, True), default=_DEFAULTS.epochs,
                   help="epochs per run (default: %(default)s)")
    p.add_argument("--time-budget", type=_number(float, 0, True), default=0.0,
                   help="seconds of a method's own training time after which it stops "
                        "(before --epochs); 0 = none (default: %(default)s)")
    p.add_argument("--batch-size", type=_number(int, 1, True), default=_DEFAULTS.batch_size,
                   help="mini-batch size (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=_DEFAULTS.optimizer,
                   help="default: %(default)s (with momentum)")
    p.add_argument("--lr", type=_number(float, 0, False), default=None,
                   help="learning rate (default: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--momentum", type=_number(float, 0, True, 1), default=_DEFAULTS.momentum,
                   help="SGD momentum (default: %(default)s)")
    p.add_argument("--evals-per-epoch", type=_number(int, 1, True),
                   default=_DEFAULTS.evals_per_epoch,
                   help="evaluations per epoch, at equal fractions of its steps "
                        "(default: %(default)s)")
    p.add_argument("--eval-every", type=_number(float, 0, True), default=_DEFAULTS.eval_every,
                   help="also evaluate every this many seconds of a method's own training "
                        "time; 0 = off (default: %(default)s)")
    p.add_argument("--chunk-steps", type=_number(int, 1, True), default=_DEFAULTS.chunk_steps,
                   help="steps a method makes per turn of the lock-step rotation "
                        "(default: %(default)s)")
    p.add_argument("--train-eval-size", type=_number(int, 0, True),
                   default=_DEFAULTS.train_eval_size,
                   help="training samples (a fixed random subset) on which the train loss "
                        "is measured; 0 = all (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="training device; the whole dataset lives there "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=_number(int, 0, True), default=1,
                   help="CPU threads of torch; 0 keeps torch's default. One thread keeps a "
                        "CPU shared with other jobs predictable (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--merge", type=_comma_list, default=None, metavar="DIR,DIR",
                   help="train nothing: merge the results.json of these output directories "
                        "(e.g. one process per seed) and write the report to --out")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the comparison; prints the tables; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge:
        try:
            runs, meta = merge_results(args.merge)
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"--merge: {e}")
        task_name = meta["config"]["task"]
        report = write_report(runs, args.out or os.path.join("runs", task_name), meta,
                              *ERROR_METRICS[task_name], BASELINES)
        print(report["table"])
        return 0
    methods = args.methods or list(FULL_METHODS if args.full else DEFAULT_METHODS)
    seeds = args.seeds or ([0, 1, 2, 3, 4] if args.full else [0, 1, 2])
    for spec in methods:
        try:
            parse_spec(spec)
        except ValueError as e:
            parser.error(f"--methods: {e}")
    if len(set(methods)) != len(methods):
        parser.error(f"--methods: a method is named twice in {','.join(methods)!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    config = TrainConfig(
        model=args.model, epochs=args.epochs,
        time_budget=args.time_budget if args.time_budget else None,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, evals_per_epoch=args.evals_per_epoch,
        eval_every=args.eval_every, chunk_steps=args.chunk_steps,
        train_eval_size=args.train_eval_size, progress=not args.no_progress)
    try:
        task = load_task(args.task, device, args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"--data-dir: {e}")

    meta = {
        "command": "is-kernels-train " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {**dataclasses.asdict(config), "model": config.model or task.model,
                   "lr": config.learning_rate, "task": task.name, "methods": methods,
                   "seeds": seeds},
        "environment": {"device": str(device), "torch": torch.__version__,
                        "python": platform.python_version(), "cpu": cpu_model(),
                        "threads": torch.get_num_threads(), "clock": clock_kind(device)},
        "dataset": {"train": task.data.x_train.shape[0], "test": task.data.x_test.shape[0]},
    }
    out = args.out or os.path.join("runs", task.name)
    runs: Dict[str, list] = {m: [] for m in methods}
    for seed in seeds:  # the report is rewritten after every seed
        for method, result in run_lockstep(methods, seed, task, config).items():
            runs[method].append(result)
        report = write_report(runs, out, meta, task.error_label, task.error_scale, BASELINES)
    print(report["table"])
    print(f"\nwrote {report['results.json']}, {report['curves.png']}, {report['table.txt']}",
          file=sys.stderr)
    return 0
