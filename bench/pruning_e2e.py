"""End-to-end pruning benchmark on Fashion-MNIST: full-data uniform training against
importance pruning and InfoBatch at a matched number of epochs (wall-clock, test error).

The lock-step harness of ``is-kernels-train`` (all methods in one process, in turn, with
their own clocks) with pruning's defaults: the methods below, 10 epochs, seeds 0 and 1.
Any ``is-kernels-train`` option overrides them; writes ``table.txt``, ``results.json`` and
``curves.png`` to ``--out``::

    python -m bench.pruning_e2e --epochs 10 --seeds 0,1,2,3,4
"""
from __future__ import annotations

import sys
from typing import List, Optional

from is_kernels.train import cli

DEFAULTS = ["--methods", "uniform,pruning,pruning_unbiased,pruning_is,infobatch",
            "--epochs", "10", "--seeds", "0,1", "--out", "runs/pruning_e2e"]


def main(argv: Optional[List[str]] = None) -> int:
    return cli.main(DEFAULTS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
