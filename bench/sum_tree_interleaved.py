"""The sum tree round vs its baselines, timed in one process in alternating blocks.

Run: ``python -m bench.sum_tree_interleaved [blocks]`` (from the repository root)

Same workload as the group "round: update 4096 + draw 4096" of ``bench_sum_tree.py`` (N =
2^20), but the entries take turns in blocks of rounds, so that a change of the machine's
load hits all of them alike, and ``torch.multinomial`` is also timed on one thread (on a
shared 2-core machine its fork onto the second core waits whenever another job runs there).
Prints the median of each entry and its ratio to is_kernels.
"""
import statistics
import sys
import time

import numpy as np
import torch

from bench.allocator import pin_glibc_allocator
from bench.bench_sum_tree import K, N, Round
from is_kernels import SumTree


def main(blocks: int = 20) -> None:
    import cpprb

    pin_glibc_allocator()  # as for the pytest benchmarks (bench/conftest.py)

    r = Round(N, "cpu")
    tree = SumTree(N)
    tree.build(r.weights)
    w = r.weights.clone()
    rb = cpprb.PrioritizedReplayBuffer(N, {"obs": {"shape": 1}}, alpha=1.0)
    rb.add(obs=np.zeros((N, 1), dtype=np.float32), priorities=r.weights.numpy())
    idx_np = [i.numpy().astype(np.uint64) for i in r.idx]
    val_np = [v.numpy().astype(np.float64) for v in r.val]

    def ours():
        idx, val = r.next()
        tree.update(idx, val)
        tree.sample(K)

    def multinomial():
        idx, val = r.next()
        w[idx] = val
        torch.multinomial(w, K, replacement=True)

    def cpprb_round():
        r.i = (r.i + 1) % len(idx_np)
        rb.update_priorities(idx_np[r.i], val_np[r.i])
        rb.sample(K, beta=0.4)

    # name: (round, threads, rounds per block)
    entries = {"is_kernels": (ours, None, 40), "multinomial": (multinomial, None, 8),
               "multinomial, 1 thread": (multinomial, 1, 8), "cpprb": (cpprb_round, None, 8)}
    threads = torch.get_num_threads()
    times = {name: [] for name in entries}
    try:
        for _ in range(blocks):
            for name, (f, n_threads, reps) in entries.items():
                torch.set_num_threads(n_threads or threads)
                for _ in range(reps):
                    start = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    ours_ms = statistics.median(times["is_kernels"]) * 1e3
    for name, t in times.items():
        ms = statistics.median(t) * 1e3
        print(f"{name:24s} {ms:7.3f} ms  {ms / ours_ms:5.1f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
