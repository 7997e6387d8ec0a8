"""The CUDA path's checks for a lent GPU, in one process, written as JSON (bench/gpu_check.sh).

- ``tree_exact``: SumTree updates with duplicated indices at k in {1, 128, 16384, 16385,
  2^20} on a capacity-2^25 tree (both update paths where k allows), bit-exact against the
  C++ op on the same batch and against a rebuild from the leaves;
- ``update_crossover``: the fused (one program) and multi-program update, per k, interleaved
  medians in us (what ``sum_tree_triton.FUSED_MAX`` should be);
- ``targets``: update and draw of 4096 at 2^24, one online step (draw + update of 4096);
- ``ce_bandwidth``: cross-entropy forward + backward (``loss.backward()``) against a copy of
  the same bytes (logits read + gradient written), 8192x1000 fp32 and 16384x131072 bf16;
- ``sync_free_step``: training steps under ``torch.cuda.set_sync_debug_mode("error")``.

``--smoke`` runs every check at tiny sizes on CPU through ``cuda_path_on_cpu()`` (the
interpreter), to check this script without a GPU; its times mean nothing.
Usage: ``python bench/gpu_checks.py --out results.json [--smoke]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import is_kernels  # noqa: E402
from is_kernels import SumTree  # noqa: E402
from is_kernels.ops import sum_tree_triton  # noqa: E402
from is_kernels.ops.cuda_path import cuda_path_on_cpu  # noqa: E402
from is_kernels.samplers import OnlineImportanceSampler  # noqa: E402

DEVICE = "cpu" if SMOKE else "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_us(fns: Dict[str, Callable[[], object]], reps: int) -> Dict[str, float]:
    """Median time per call (us) of each function, interleaved: rep i runs them all."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (compilation)
        fn()
    sync()
    for _ in range(reps):
        for name, fn in fns.items():
            if DEVICE == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) * 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def with_duplicates(k: int, capacity: int, g: torch.Generator) -> torch.Tensor:
    """k indices in [0, capacity), about a quarter of them repeats of others."""
    idx = torch.randint(0, capacity, (k,), generator=g)
    if k > 1:
        rep = torch.randint(0, k, (k // 4,), generator=g)
        idx[torch.randint(0, k, (k // 4,), generator=g)] = idx[rep]
    return idx


def tree_exact(capacity: int, ks: List[int]) -> List[dict]:
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(capacity, generator=g)
    cpu_leaves = weights.clone()
    cpu_inner = torch.ops.is_kernels.sum_tree_build(cpu_leaves)
    tree = SumTree(capacity, device=DEVICE)
    tree.build(weights.to(DEVICE))
    rows = []
    for k in ks:
        # Both update paths, except one program for 2^20 entries (far past the crossover).
        for fused in (True,) if k == 1 else (True, False) if k <= 16385 else (False,):
            idx = with_duplicates(k, capacity, g)
            val = torch.rand(k, generator=g)
            torch.ops.is_kernels.sum_tree_update(cpu_leaves, cpu_inner, idx, val)
            sum_tree_triton.update(tree.values, tree._inner, idx.to(DEVICE), val.to(DEVICE),
                                   fused_max=k if fused else 0)
            leaves, inner = tree.values.cpu(), tree._inner.cpu()
            rebuilt = torch.ops.is_kernels.sum_tree_build(tree.values).cpu()
            rows.append({"k": k, "path": "fused" if fused else "multi",
                         "duplicates": k - int(idx.unique().numel()),
                         "leaves_equal_cpp": bool(torch.equal(leaves, cpu_leaves)),
                         "inner_equal_cpp": bool(torch.equal(inner, cpu_inner)),
                         "inner_equal_rebuild": bool(torch.equal(inner, rebuilt))})
            print("tree_exact", rows[-1], flush=True)
    return rows


def update_crossover(capacity: int, ks: List[int], reps: int) -> List[dict]:
    g = torch.Generator().manual_seed(1)
    tree = SumTree(capacity, device=DEVICE)
    tree.build(torch.rand(capacity, generator=g).to(DEVICE))
    rows = []
    for k in ks:
        idx = torch.randint(0, capacity, (k,), generator=g).to(DEVICE)
        val = torch.rand(k, generator=g).to(DEVICE)
        t = time_us({path: (lambda fm=fm: sum_tree_triton.update(tree.values, tree._inner, idx,
                                                                 val, fused_max=fm))
                     for path, fm in (("fused", k), ("multi", 0))}, reps)
        rows.append({"k": k, "fused_us": t["fused"], "multi_us": t["multi"]})
        print("update_crossover", rows[-1], flush=True)
    return rows


def targets(capacity: int, k: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(2)
    tree = SumTree(capacity, device=DEVICE)
    tree.build(torch.rand(capacity, generator=g).to(DEVICE))
    idx = torch.randint(0, capacity, (k,), generator=g).to(DEVICE)
    val = torch.rand(k, generator=g).to(DEVICE)
    s = OnlineImportanceSampler(capacity, k, warmup_epochs=0, device=DEVICE)
    scores = torch.rand(k, generator=g).to(DEVICE)

    def step():
        drawn, _ = s.sample()
        s.update(drawn, scores)

    t = time_us({"update": lambda: tree.update(idx, val), "sample": lambda: tree.sample(k),
                 "online_step": step}, reps)
    out = {"capacity": capacity, "k": k, **{f"{name}_us": v for name, v in t.items()},
           "targets_us": {"update": 20, "sample": 20, "online_step": 50}}
    print("targets", out, flush=True)
    return out


def ce_bandwidth(shapes, reps: int) -> List[dict]:
    rows = []
    for n, c, dtype in shapes:
        g = torch.Generator(device=DEVICE).manual_seed(3)
        logits = torch.randn(n, c, generator=g, device=DEVICE, dtype=dtype).requires_grad_()
        target = torch.randint(0, c, (n,), generator=g, device=DEVICE)
        dst = torch.empty_like(logits)

        def fwd_bwd():
            logits.grad = None
            loss, _ = is_kernels.cross_entropy_with_score(logits, target)
            loss.backward()

        t = time_us({"ce": fwd_bwd, "copy": lambda: dst.copy_(logits.detach())}, reps)
        moved = 2 * logits.numel() * logits.element_size()
        rows.append({"shape": [n, c], "dtype": str(dtype), "ce_us": t["ce"],
                     "copy_us": t["copy"], "ce_GBps": moved / t["ce"] / 1e3,
                     "copy_GBps": moved / t["copy"] / 1e3,
                     "ce_over_copy_bandwidth": t["copy"] / t["ce"], "target": 0.85})
        print("ce_bandwidth", rows[-1], flush=True)
    return rows


def sync_free_step(n: int, b: int) -> dict:
    """Training steps of an MLP with the online sampler; every host sync raises."""
    torch.manual_seed(4)
    x = torch.randn(n, 32, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10)).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = OnlineImportanceSampler(n, b, warmup_epochs=0, device=DEVICE)

    def step():
        idx, w = s.sample()
        loss, score = is_kernels.cross_entropy_with_score(model(x[idx]), y[idx],
                                                          reduction="none")
        (w * loss).mean().backward()
        opt.step()
        opt.zero_grad()
        s.update(idx, score)

    step()  # warm-up: compilation, allocations
    sync()
    try:
        if DEVICE == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        for _ in range(3):
            step()
        result = {"ok": True}
    except RuntimeError as e:
        result = {"ok": False, "error": str(e).splitlines()[0],
                  "where": traceback.format_exc().splitlines()[-6:]}
    finally:
        if DEVICE == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    s.tree.raise_errors()
    print("sync_free_step", result, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (no GPU)")
    args = parser.parse_args()
    if SMOKE:
        sizes = dict(capacity=1000, ks=[1, 128, 1500], cross=[64, 3000], big=1 << 12, k=256,
                     reps=2, ce=[(16, 1000, torch.float32)], n=64, b=16)
    else:
        sizes = dict(capacity=1 << 25, ks=[1, 128, 16384, 16385, 1 << 20],
                     cross=[256, 512, 1024, 2048, 4096, 8192, 16384, 65536], big=1 << 24,
                     k=4096, reps=50, ce=[(8192, 1000, torch.float32),
                                          (16384, 131072, torch.bfloat16)], n=60000, b=256)
    env = {"torch": torch.__version__, "device": (torch.cuda.get_device_name()
                                                  if DEVICE == "cuda" else "cpu (smoke)")}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    results: Dict[str, object] = {"env": env, "command": " ".join(sys.argv)}
    checks = [("tree_exact", lambda: tree_exact(sizes["capacity"], sizes["ks"])),
              ("update_crossover", lambda: update_crossover(sizes["big"], sizes["cross"],
                                                            sizes["reps"])),
              ("targets", lambda: targets(sizes["big"], sizes["k"], sizes["reps"])),
              ("ce_bandwidth", lambda: ce_bandwidth(sizes["ce"], max(5, sizes["reps"] // 5))),
              ("sync_free_step", lambda: sync_free_step(sizes["n"], sizes["b"]))]
    context = cuda_path_on_cpu() if SMOKE else contextlib.nullcontext()
    with context:
        for name, check in checks:
            try:
                results[name] = check()
            except Exception as e:  # keep the other checks' results
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
