"""End-to-end pruning benchmark on Fashion-MNIST: full-data uniform training against
importance pruning and InfoBatch at a matched number of epochs (wall-clock, test accuracy).

Same runs as ``python -m is_kernels.train --time-budget 0`` (``is_kernels.train.train_run``,
evaluation only before and after training), but interleaved: seed by seed, the method order
reversed on every other seed, so a load that drifts on a shared machine favours no method.
Writes the harness's ``table.txt``, ``results.json`` and ``curves.png`` to ``--out``::

    python -m bench.pruning_e2e --epochs 10 --seeds 0,1 --threads 1
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
from typing import List, Optional

import torch

from is_kernels.train.data import DEFAULT_DATA_DIR, load_fashion_mnist
from is_kernels.train.loop import TrainConfig, train_run
from is_kernels.train.methods import METHODS
from is_kernels.train.report import write_report

DEFAULT_METHODS = "uniform,pruning,pruning_unbiased,pruning_is,infobatch"


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=DEFAULT_METHODS, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=10, help="default: %(default)s")
    p.add_argument("--seeds", default="0,1", help="default: %(default)s")
    p.add_argument("--model", default="mlp", help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--out", default="runs/pruning_e2e", help="default: %(default)s")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}, known: {sorted(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = TrainConfig(model=args.model, epochs=args.epochs, time_budget=None,
                         batch_size=args.batch_size, eval_every=float("inf"), progress=False)
    data = load_fashion_mnist(args.data_dir, device)
    runs = {m: [] for m in methods}
    for k, seed in enumerate(seeds):
        for method in methods if k % 2 == 0 else methods[::-1]:
            runs[method].append(train_run(method, seed, data, config))
    meta = {"config": {**dataclasses.asdict(config), "lr": config.learning_rate,
                       "methods": methods, "seeds": seeds, "order": "interleaved"},
            "environment": {"device": str(device), "torch": torch.__version__,
                            "python": platform.python_version(),
                            "threads": torch.get_num_threads()}}
    print(write_report(runs, args.out, meta)["table"])


if __name__ == "__main__":
    main()
