"""Fused linear + cross-entropy + score against eager ``F.linear`` + ``F.cross_entropy``.

Forward + backward (gradients of input and weight) at the shape of a language-model head:
N = 8192 rows, H = 1024, V = 32000 (CPU, float32); on CUDA N = 16384, H = 4096, V = 128256
(bfloat16), there also against Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (loss
only, no score; skipped unless ``liger_kernel`` is installed). Eager holds the [N, V] logits
and their gradient; the fused op holds O(chunk × V).

- ``python -m pytest bench/bench_linear_cross_entropy.py``: pytest-benchmark times (and a
  paired ratio, ``bench/paired.py``) for ``bench/run_all.py``, and each variant's peak
  memory in our entry's ``extra_info["peak_bytes"]``, checked against the target (ours at
  most a quarter of eager's) at the default shape; ``LCE_BENCH_SHAPE=N,H,V`` sets another.
  The peak memory is measured in a fresh process per variant: on CPU the growth of the
  peak resident set over the resident set before the step, ``VmHWM − VmRSS``; on CUDA
  ``max_memory_allocated``.
- ``python bench/bench_linear_cross_entropy.py --out FILE.json``: the same measurements,
  written as JSON with the device and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import is_kernels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paired import paired_times  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DEFAULT_SHAPE = (16384, 4096, 128256) if DEVICE == "cuda" else (8192, 1024, 32000)
SHAPE = DEFAULT_SHAPE
if os.environ.get("LCE_BENCH_SHAPE"):  # e.g. "512,64,1000": a quick run of the pytest entries
    SHAPE = tuple(int(v) for v in os.environ["LCE_BENCH_SHAPE"].split(","))
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def _liger():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss()


def make_inputs(N, H, V, dtype, device=DEVICE):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(N, H, generator=g)).to(dtype).to(device).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H ** 0.5).to(dtype).to(device).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g).to(device)
    return x, w, t


def make_step(variant, x, w, t):
    """One forward + backward of the mean loss, gradients of x and w (accumulated in .grad,
    reset to None first so each step allocates them as a training step does)."""
    if variant == "liger":
        liger = _liger()

    def loss_fn():
        if variant == "is_kernels":
            return is_kernels.linear_cross_entropy_with_score(x, w, t)[0]
        if variant == "eager":
            return F.cross_entropy(F.linear(x, w), t)
        return liger(w, x, t)

    def step():
        x.grad = w.grad = None
        loss = loss_fn()
        loss.backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


def _child(variant, N, H, V, dtype_name):
    """Runs in a fresh process: the peak memory of one step above what the inputs take."""
    x, w, t = make_inputs(N, H, V, getattr(torch, dtype_name))
    step = make_step(variant, x, w, t)
    if DEVICE == "cuda":
        step()  # warm-up: Triton compiles
        x.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to VmRSS
            f.write("5")
        base = _status_kib("VmRSS")
        step()
        peak = (_status_kib("VmHWM") - base) * 1024
    print(json.dumps({"peak_bytes": peak}))


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory(variant, shape=SHAPE, dtype=DTYPE):
    """Peak memory in bytes of one forward + backward of `variant`, in a fresh process."""
    dtype_name = str(dtype).split(".")[-1]
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", variant, *map(str, shape),
         dtype_name], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def device_name():
    """The GPU's name, or the CPU's model name and core count."""
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {os.cpu_count()} cores"


def variants():
    return ["is_kernels", "eager"] + (["liger"] if DEVICE == "cuda" and _liger() else [])


# ---- pytest-benchmark ------------------------------------------------------------------------

def _group():
    N, H, V = SHAPE
    return f"linear CE fwd+bwd {N}x{H}x{V} {DTYPE} ({DEVICE})"


def test_linear_ce_is_kernels(benchmark):
    x, w, t = make_inputs(*SHAPE, DTYPE)
    benchmark.group = _group()
    steps = {v: make_step(v, x, w, t) for v in variants()}
    losses = {v: s().item() for v, s in steps.items()}  # warm-up and a check of the run
    assert abs(losses["is_kernels"] - losses["eager"]) < 1e-3 * abs(losses["eager"])
    ratios = {}
    for alt in steps:
        if alt != "is_kernels":
            ours, theirs = paired_times(steps["is_kernels"], steps[alt], rounds=3)
            # keyed by the alternative's entry name, as bench/run_all.py reads them
            ratios[f"linear_ce_{alt}"] = statistics.median(a / o for o, a in zip(ours, theirs))
    benchmark.extra_info["paired_ratios"] = ratios
    # each variant's peak memory, in a fresh process: the JSON of bench/run_all.py keeps it
    peak = {v: peak_memory(v) for v in steps}
    benchmark.extra_info["peak_bytes"] = peak
    if SHAPE == DEFAULT_SHAPE:  # the memory target (at most a quarter of eager's) at its shape
        assert peak["is_kernels"] <= peak["eager"] / 4
    benchmark.pedantic(steps["is_kernels"], rounds=3, iterations=1)


def _bench_alternative(benchmark, variant):
    x, w, t = make_inputs(*SHAPE, DTYPE)
    benchmark.group = _group()
    step = make_step(variant, x, w, t)
    step()
    benchmark.pedantic(step, rounds=3, iterations=1)


def test_linear_ce_eager(benchmark):
    _bench_alternative(benchmark, "eager")


def test_linear_ce_liger(benchmark):
    if "liger" not in variants():
        pytest.skip("Liger-Kernel runs on CUDA only, with liger_kernel installed")
    _bench_alternative(benchmark, "liger")


# ---- script ----------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=5, metavar=("VARIANT", "N", "H", "V", "DTYPE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs=3, type=int, default=list(SHAPE), metavar=("N", "H", "V"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args()
    if args.child:
        variant, N, H, V, dtype_name = args.child
        _child(variant, int(N), int(H), int(V), dtype_name)
        return
    shape = tuple(args.shape)
    result = {"device": device_name(),
              "torch": torch.__version__, "python": platform.python_version(),
              "shape": {"N": shape[0], "H": shape[1], "V": shape[2]}, "dtype": str(DTYPE),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "peak_bytes": {}, "median_s": {}, "paired_speedup": {}}
    for v in variants():
        result["peak_bytes"][v] = peak_memory(v, shape)
        print(f"{v}: peak {result['peak_bytes'][v] / 2**20:.0f} MiB", flush=True)
    x, w, t = make_inputs(*shape, DTYPE)
    steps = {v: make_step(v, x, w, t) for v in variants()}
    for s in steps.values():
        s()
    for alt in steps:
        if alt == "is_kernels":
            continue
        ours, theirs = paired_times(steps["is_kernels"], steps[alt], rounds=args.rounds)
        result["median_s"]["is_kernels"] = statistics.median(ours)
        result["median_s"][alt] = statistics.median(theirs)
        result["paired_speedup"][alt] = statistics.median(a / o for o, a in zip(ours, theirs))
        print(f"{alt}: {result['median_s'][alt]:.3f} s, is_kernels "
              f"{result['median_s']['is_kernels']:.3f} s, paired speedup "
              f"{result['paired_speedup'][alt]:.2f}x", flush=True)
    result["peak_ratio"] = {v: result["peak_bytes"]["is_kernels"] / b
                            for v, b in result["peak_bytes"].items() if v != "is_kernels"}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
