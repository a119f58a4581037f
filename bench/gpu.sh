#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, torch and nvcc (no network needed): build l2fast from source,
# run the tests (CUDA ones included) and print the GPU benchmark tables. About 5 minutes on an H100.
#
#   bench/gpu.sh [LOG_DIR]      # logs: LOG_DIR/{build,tests,bench}.log (default: gpu-logs/)
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

if [ "${L2FAST_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer (memcheck, racecheck) on the CUDA op tests =="
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" -m pytest tests/test_ops.py -q -p no:cacheprovider \
      -k "cuda and (hand_worked or misaligned or empty or mixed_dtypes or add_penalty_grad_matches)" 2>&1 | tail -3
  done
fi

echo "== benchmarks =="
(cd bench && "$PY" bench_ops.py --device cuda) 2>&1 | tee "$LOG_DIR/bench.log"
