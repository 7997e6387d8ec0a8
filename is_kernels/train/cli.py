"""Command line: ``python -m is_kernels.train`` / ``is-kernels-train``."""
from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
from typing import List, Optional

import torch

from .data import DEFAULT_DATA_DIR, load_fashion_mnist
from .loop import DEFAULT_LR, OPTIMIZERS, TrainConfig, train_run
from .methods import DEFAULT_METHODS, METHODS
from .models import MODELS
from .report import write_report

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
        description="Train a network on Fashion-MNIST with each sampling method and compare "
                    "test accuracy, train loss and wall-clock.")
    p.add_argument("--methods", type=_comma_list, default=list(DEFAULT_METHODS),
                   help=f"comma-separated methods among {','.join(METHODS)} "
                        f"(default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="directory of the four Fashion-MNIST IDX .gz files "
                        "(default: %(default)s)")
    p.add_argument("--out", default="runs/fashion_mnist",
                   help="output directory for results.json, curves.png, table.txt "
                        "(default: %(default)s)")
    p.add_argument("--model", choices=sorted(MODELS), default=_DEFAULTS.model,
                   help="network (default: %(default)s, 784-512-512-10)")
    p.add_argument("--epochs", type=_number(int, 1, True), default=_DEFAULTS.epochs,
                   help="epochs per run (default: %(default)s)")
    p.add_argument("--time-budget", type=_number(float, 0, True), default=_DEFAULTS.time_budget,
                   help="seconds of training per run (evaluation excluded); a run stops at "
                        "--epochs or this budget, whichever comes first; 0 = no budget "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=_number(int, 1, True), default=_DEFAULTS.batch_size,
                   help="mini-batch size (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=_DEFAULTS.optimizer,
                   help="default: %(default)s (with momentum)")
    p.add_argument("--lr", type=_number(float, 0, False), default=None,
                   help="learning rate (default: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--momentum", type=_number(float, 0, True, 1), default=_DEFAULTS.momentum,
                   help="SGD momentum (default: %(default)s)")
    p.add_argument("--seeds", type=_seeds, default=[0],
                   help="comma-separated seeds; several give mean ± std (default: 0)")
    p.add_argument("--eval-every", type=_number(float, 0, False), default=_DEFAULTS.eval_every,
                   help="seconds of training between evaluations of the full train and "
                        "test sets (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="training device; the whole dataset lives there "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=_number(int, 0, True), default=0,
                   help="CPU threads of torch; 0 keeps torch's default. On a CPU shared "
                        "with other jobs, 1 can be much faster (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the comparison; prints the table; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods must be a comma list of {', '.join(METHODS)}, "
                     f"got {','.join(args.methods)!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    config = TrainConfig(
        model=args.model, epochs=args.epochs,
        time_budget=args.time_budget if args.time_budget else None,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, eval_every=args.eval_every, progress=not args.no_progress)
    try:
        data = load_fashion_mnist(args.data_dir, device)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"--data-dir: {e}")

    runs = {m: [train_run(m, seed, data, config) for seed in args.seeds] for m in args.methods}
    meta = {
        "config": {**dataclasses.asdict(config), "lr": config.learning_rate,
                   "methods": args.methods, "seeds": args.seeds, "data_dir": args.data_dir},
        "environment": {"device": str(device), "torch": torch.__version__,
                        "python": platform.python_version(),
                        "threads": torch.get_num_threads()},
        "dataset": {"train": data.x_train.shape[0], "test": data.x_test.shape[0]},
    }
    report = write_report(runs, args.out, meta)
    print(report["table"])
    print(f"\nwrote {report['results.json']}, {report['curves.png']}, {report['table.txt']}",
          file=sys.stderr)
    return 0
