#!/usr/bin/env bash
# The GPU checks in one device call (the device tool's `run`, from the repository root),
# about 8 minutes: build the extension against the machine's torch, the CUDA path's checks
# (bench/gpu_checks.py), the whole test suite (the CUDA tests run there), then every kernel
# benchmark. Results go to $OUT (default /tmp/gpu_check):
#   env.txt      nvidia-smi, torch / triton / Python versions, the device name
#   build.txt    the build log
#   gpu_checks.json  bit-exact tree-vs-rebuild updates with duplicates (k up to 2^20,
#                capacity 2^25), the fused-vs-multi update crossover, the update / draw /
#                online-step targets, CE bandwidth against a copy, a training step under
#                torch.cuda.set_sync_debug_mode("error") (gpu_checks.txt: its log)
#   tests.txt    pytest output (CPU and CUDA tests)
#   gpu-<model>.json, gpu-<model>.md
#                bench/run_all.py's results and their table: medians, same-run ratios, GB/s
#                (copy = the memory-bound floor of the fused ops), versions, the command;
#                copy them into bench/results/
#   bench.txt    the benchmark log
# Wheels the image lacks (`pip download tqdm liger-kernel --no-deps -d .whl`: tqdm for the
# pruning and training tests, Liger-Kernel for its benchmark) are installed from ./.whl when
# that (git-ignored) folder is carried. Each stage has its own
# time limit, so a slow stage still leaves the earlier results. Usage:
#   bash bench/gpu_check.sh [tests_timeout_s] [bench_timeout_s] [checks_timeout_s]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
tests_timeout=${1:-150}
bench_timeout=${2:-150}
checks_timeout=${3:-120}

{
  nvidia-smi
  python -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch',
    torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|',
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! pip install --no-build-isolation --no-deps -e . > "$OUT/build.txt" 2>&1; then
  tail -n 40 "$OUT/build.txt"
  exit 1
fi
if [ -d .whl ]; then
  pip install --no-deps --no-index .whl/*.whl >> "$OUT/build.txt" 2>&1 || true
fi

PYTHONUNBUFFERED=1 timeout "$checks_timeout" python bench/gpu_checks.py \
  --out "$OUT/gpu_checks.json" > "$OUT/gpu_checks.txt" 2>&1
echo "gpu_checks rc=$? (124: timed out)"
cat "$OUT/gpu_checks.txt" | grep -v "^ " | tail -n 30

timeout "$tests_timeout" python -m pytest tests -q -p no:cacheprovider > "$OUT/tests.txt" 2>&1
echo "tests rc=$? (124: timed out)"
tail -n 5 "$OUT/tests.txt"

timeout "$bench_timeout" python bench/run_all.py --out-dir "$OUT" > "$OUT/bench.txt" 2>&1
echo "bench rc=$? (124: timed out)"
cat "$OUT"/gpu-*.md 2>/dev/null || tail -n 20 "$OUT/bench.txt"
