"""Kernel launches and host syncs of every public operation on the CUDA path, counted on CPU.

Each operation runs inside ``cuda_path_on_cpu()`` (the CUDA implementation on CPU tensors,
Triton kernels in the interpreter) under a ``LaunchCounter``: Triton launches, aten ops that
launch a kernel, aten ops that synchronise with the host on CUDA. The counts do not depend on
the sizes beyond the fused/multi-launch choice of the sum tree update (both are listed) and
the number of chunks of the linear CE (its launches grow by a fixed count per chunk). A
CUDA aten op may launch more than one kernel (e.g. a radix sort), so on a GPU the aten part
is a lower bound. Next to each: the bytes the operation must move at least (``min_bytes``,
a formula) at the benchmark shapes.

Usage: ``TRITON_INTERPRET=1 python bench/launch_counts.py [--json out.json]``;
``counts()`` returns the rows for bench/run_all.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List

if __name__ == "__main__":  # (imported, it leaves the environment alone)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import is_kernels  # noqa: E402
from is_kernels import AliasTable, MinTree, PrioritizedReplay, SumTree  # noqa: E402
from is_kernels.ops import sum_tree_triton  # noqa: E402
from is_kernels.ops.cuda_path import LaunchCounter, cuda_path_on_cpu  # noqa: E402
from is_kernels.samplers import OnlineImportanceSampler  # noqa: E402

# Shapes of the byte formulas (the GPU targets): tree capacity, batch and draws, alias table
# size and group, CE shape (bf16), linear CE shape (bf16).
N_TREE, K, DRAWS, N_ALIAS, GROUP = 2**24, 4096, 4096, 2**24, 16
CE_N, CE_C, CE_BYTES = 16384, 131072, 2
LCE_N, LCE_H, LCE_V = 16384, 4096, 128256
# Chunks of the counted linear CE runs (its launches grow with the number of chunks).
LCE_CHUNKS = 3


def _tree(n: int = 64) -> SumTree:
    tree = SumTree(n, check_values=False)
    tree.build(torch.rand(n, generator=torch.Generator().manual_seed(0)) + 0.1)
    return tree


def _min_tree(n: int = 64) -> MinTree:
    tree = MinTree(n, check_values=False)
    tree.build(torch.rand(n, generator=torch.Generator().manual_seed(0)))
    return tree


def _update(k: int, fused_max: int, make=_tree) -> Callable[[], Callable[[], None]]:
    def prepare():
        tree = make()
        idx = torch.randint(0, 64, (k,), generator=torch.Generator().manual_seed(1))
        values = torch.rand(k)
        saved = sum_tree_triton.FUSED_MAX

        def run():
            sum_tree_triton.FUSED_MAX = fused_max
            try:
                tree.update(idx, values)
            finally:
                sum_tree_triton.FUSED_MAX = saved
        return run
    return prepare


def _sample():
    tree = _tree()
    return lambda: tree.sample(100)


def _query(make):
    tree = make()
    g = torch.Generator().manual_seed(4)
    start = torch.randint(0, 32, (100,), generator=g)
    end = start + torch.randint(0, 32, (100,), generator=g)
    return lambda: tree.query(start, end)


def _scan():
    tree = _tree()
    mass = torch.rand(100, generator=torch.Generator().manual_seed(5)) * float(tree.total())
    return lambda: tree.scan_lower_bound(mass)


def _replay(what: str):
    replay = PrioritizedReplay(64, device="cpu")
    g = torch.Generator().manual_seed(6)
    replay.add(64, torch.rand(64, generator=g))
    prio = torch.rand(16, generator=g)
    idx = torch.randint(0, 64, (16,), generator=g)
    return {"add": lambda: replay.add(16, prio),
            "add_default": lambda: replay.add(16),
            "sample": lambda: replay.sample(16, generator=g),
            "update": lambda: replay.update(idx, prio)}[what]


def _online_step():
    s = OnlineImportanceSampler(64, 16, warmup_epochs=0,
                                generator=torch.Generator().manual_seed(2))

    scores = torch.rand(16)

    def run():
        idx, _ = s.sample()
        s.update(idx, scores)
    return run


def _alias_build(group: int):
    w = torch.rand(300, generator=torch.Generator().manual_seed(3))
    return lambda: AliasTable(w, group_size=group)


def _alias_sample():
    table = AliasTable(torch.rand(300) + 0.1)
    return lambda: table.sample(100)


def _ce(reduction: str):
    logits = torch.randn(8, 11, requires_grad=True)
    target = torch.randint(0, 11, (8,))

    seed = torch.ones(() if reduction != "none" else 8)  # what loss.backward() passes

    def run():
        logits.grad = None
        loss, _ = is_kernels.cross_entropy_with_score(logits, target, reduction=reduction)
        loss.backward(seed)
    return run


def _linear_ce(reduction: str, bias: bool, soft: bool = False):
    """Forward + backward of the linear CE over LCE_CHUNKS chunks of 4 rows; class indices
    or (soft) class probabilities."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4 * LCE_CHUNKS, 6, generator=g, requires_grad=True)
    w = torch.randn(9, 6, generator=g, requires_grad=True)
    b = torch.randn(9, generator=g, requires_grad=True) if bias else None
    target = torch.rand(4 * LCE_CHUNKS, 9, generator=g) if soft else \
        torch.randint(0, 9, (4 * LCE_CHUNKS,), generator=g)
    seed = torch.ones(() if reduction != "none" else 4 * LCE_CHUNKS)

    def run():
        x.grad = w.grad = None
        if b is not None:
            b.grad = None
        loss, _ = is_kernels.linear_cross_entropy_with_score(x, w, target, bias=b,
                                                             reduction=reduction, chunk_size=4)
        loss.backward(seed)
    return run


_H = N_TREE.bit_length() - 1


def _ancestors(k: int) -> int:
    """Distinct inner nodes above k random leaves of the 2^_H-leaf tree (at most k a level)."""
    return sum(min(2**d, k) for d in range(_H))


# A recomputed inner node: its two children read, itself written (float64 sums; float32
# minima).
_NODE = 8 + 8 + 8
_UPDATE = K * (8 + 4 + 4) + _ancestors(K) * _NODE  # indices, values, leaves; ancestors
_MIN_UPDATE = K * (8 + 4 + 4) + _ancestors(K) * (4 + 4 + 4)
_SAMPLE = DRAWS * (8 + 8) + _ancestors(DRAWS) * 16  # uniforms, draws; children read
_PER_SET = K * (8 + 4 + 4 + 4) + _ancestors(K) * (_NODE + 4 + 4 + 4)
# (name, setup, minimum bytes moved at the benchmark shapes: what the result needs, no
# intermediates such as the sort of a batch or the scans of an alias build)
OPERATIONS = [
    ("SumTree.update (fused, k <= FUSED_MAX)", _update(8, 1 << 14), _UPDATE),
    ("SumTree.update (multi-program, k > FUSED_MAX)", _update(40, 16), _UPDATE),
    ("MinTree.update (fused, k <= FUSED_MAX)", _update(8, 1 << 14, _min_tree), _MIN_UPDATE),
    ("SumTree.sample", _sample, _SAMPLE),
    # per query: the range, the result; two root-ward paths of children read
    ("SumTree.query", lambda: _query(_tree), K * (8 + 8 + 8 + 2 * _H * 8)),
    ("MinTree.query", lambda: _query(_min_tree), K * (8 + 8 + 4 + 2 * _H * 4)),
    # per mass: the mass, the index; one descent (children read), as a draw
    ("SumTree.scan_lower_bound", _scan, _SAMPLE),
    # indices and raw priorities read, a leaf of each tree written, the ancestors of both
    ("PrioritizedReplay.add", lambda: _replay("add"), _PER_SET),
    ("PrioritizedReplay.add (max priority)", lambda: _replay("add_default"), _PER_SET),
    ("PrioritizedReplay.update", lambda: _replay("update"), _PER_SET),
    # a draw, plus the drawn leaves and the minimum read, the weights written
    ("PrioritizedReplay.sample", lambda: _replay("sample"), _SAMPLE + DRAWS * (4 + 4)),
    # the draw: 2 more uniforms, weights, the memory of the drawn; the update: scores,
    # memory and seen read and written, active read
    ("online IS step (draw + update)", _online_step,
     _SAMPLE + DRAWS * (16 + 4 + 4) + _UPDATE + K * (4 + 8 + 2 + 1)),
    # weights read once, table (prob float64, alias int32) and group sums written
    ("AliasTable build (group 16)", lambda: _alias_build(GROUP),
     N_ALIAS * 4 + (N_ALIAS // GROUP) * (8 + 4 + 8)),
    ("AliasTable build (group 1)", lambda: _alias_build(1), N_ALIAS * (4 + 8 + 4)),
    # per draw: 3 uniforms, the draw, prob + alias + group sum, the group's 16 weights
    ("AliasTable.sample", _alias_sample, DRAWS * (24 + 8 + 8 + 4 + 8 + GROUP * 4)),
    # logits read once, gradient written once; targets, scores (and row losses for "none")
    ("CE forward + backward (mean)", lambda: _ce("mean"),
     CE_N * CE_C * 2 * CE_BYTES + CE_N * (8 + 4)),
    ("CE forward + backward (sum)", lambda: _ce("sum"),
     CE_N * CE_C * 2 * CE_BYTES + CE_N * (8 + 4)),
    ("CE forward + backward (none)", lambda: _ce("none"),
     CE_N * CE_C * 2 * CE_BYTES + CE_N * (8 + 4 + 2 + 2)),
    # x and W read, their gradients written (bias: b read, its gradient written); targets,
    # scores (and row losses and their gradients for "none")
    (f"linear CE fwd + bwd (mean, bias, {LCE_CHUNKS} chunks)", lambda: _linear_ce("mean", True),
     (LCE_N + LCE_V) * LCE_H * 2 * CE_BYTES + LCE_V * 2 * CE_BYTES + LCE_N * (8 + 4)),
    (f"linear CE fwd + bwd (none, {LCE_CHUNKS} chunks)", lambda: _linear_ce("none", False),
     (LCE_N + LCE_V) * LCE_H * 2 * CE_BYTES + LCE_N * (8 + 4 + 2 + 2)),
    # class probabilities: the [N, V] target read too
    (f"linear CE fwd + bwd (mean, probabilities, {LCE_CHUNKS} chunks)",
     lambda: _linear_ce("mean", False, soft=True),
     (LCE_N + LCE_V) * LCE_H * 2 * CE_BYTES + LCE_N * LCE_V * CE_BYTES + LCE_N * 4),
]


def counts() -> List[Dict[str, object]]:
    """One row per operation: launches (Triton, aten), syncs, min_bytes at bench shapes."""
    rows = []
    for name, prepare, min_bytes in OPERATIONS:
        with cuda_path_on_cpu():
            run = prepare()
            run()  # first call: one-time allocations and compilations are not counted
        with LaunchCounter() as c, cuda_path_on_cpu():
            run()
        rows.append({"operation": name, **c.summary(), "min_bytes": min_bytes})
    return rows


def table(rows: List[Dict[str, object]]) -> str:
    lines = ["| operation | launches | Triton | aten | host syncs | min bytes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['operation']} | {r['launches']} | {sum(r['triton'].values())} | "
                     f"{sum(r['aten'].values())} | {r['syncs']} | {r['min_bytes']:.3g} |")
    lines.append(f"\nmin bytes at: tree capacity 2^{_H}, update batch {K}, {DRAWS} draws; alias "
                 f"table of {N_ALIAS} weights in groups of {GROUP}; CE {CE_N}x{CE_C} bf16; "
                 f"linear CE N={LCE_N}, H={LCE_H}, V={LCE_V} bf16, {LCE_CHUNKS} chunks counted.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--detail", action="store_true", help="print the ops of every row")
    args = parser.parse_args(argv)
    rows = counts()
    print(table(rows))
    if args.detail:
        for r in rows:
            print(r["operation"], r["triton"], r["aten"], r["sync_ops"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
