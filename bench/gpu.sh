#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, torch and nvcc (no network needed): build l2fast from source,
# run the tests (CUDA ones included), a CUDA-graph capture/replay check, compute-sanitizer racecheck
# and memcheck, and print the GPU benchmark tables. About 10 minutes on an H100.
#
#   bench/gpu.sh [LOG_DIR]   # logs: LOG_DIR/{build,tests,graphs,sanitizer-*,bench}.log (default: gpu-logs/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG_DIR=${1:-gpu-logs}
mkdir -p "$LOG_DIR"

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
arch=$("$PY" -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}.{minor}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

echo "== build (sm_${arch/./}) =="
start=$SECONDS
L2FAST_CUDA=1 "$PY" setup.py build_ext --inplace >"$LOG_DIR/build.log" 2>&1 || { tail -50 "$LOG_DIR/build.log"; exit 1; }
echo "built in $((SECONDS - start)) s"

echo "== tests =="
export L2FAST_REQUIRE_NATIVE=1
"$PY" -m pytest ${L2FAST_GPU_TESTS:-tests} -q -p no:cacheprovider 2>&1 | tee "$LOG_DIR/tests.log" | tail -15

echo "== CUDA graph capture and replay =="
"$PY" bench/cuda_graph_check.py 2>&1 | tee "$LOG_DIR/graphs.log" | tail -3

if command -v compute-sanitizer >/dev/null; then
  # racecheck: shared-memory hazards in block_sum; memcheck: out-of-bounds and misaligned accesses.
  echo "== compute-sanitizer (racecheck, memcheck) on the CUDA op tests and the graph check =="
  for tool in racecheck memcheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" -m pytest tests/test_ops.py tests/test_optim_fused.py \
      -q -p no:cacheprovider -k "cuda and (hand_worked or misaligned or empty or mixed_dtypes or add_penalty_grad_matches \
      or nan or one_pass_step_on_cuda)" 2>&1 \
      | tee "$LOG_DIR/sanitizer-$tool.log" | tail -3
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" bench/cuda_graph_check.py 2>&1 \
      | tee -a "$LOG_DIR/sanitizer-$tool.log" | tail -2
  done
else
  echo "compute-sanitizer not found: racecheck and memcheck skipped" >&2
fi

echo "== benchmarks =="
(cd bench && "$PY" bench_ops.py --device cuda) 2>&1 | tee "$LOG_DIR/bench.log"
(cd bench && "$PY" bench_optim.py --one-pass --device cuda) 2>&1 | tee -a "$LOG_DIR/bench.log"
