#!/usr/bin/env bash
# One call on a machine with an NVIDIA GPU, torch and nvcc (no network needed), one verdict: build
# l2fast for the GPU present, check it and measure it, in stages that each run under their own time
# budget. A stage that fails or runs out of time is recorded and the next one runs; the budgets add up
# to under 10 minutes on a one-GPU, 16-core machine. Always writes OUT/gpu-report.md and
# OUT/gpu-report.json, with each stage's log beside them, and exits non-zero unless every stage that
# ran passed.
#
#   bench/gpu.sh [--dry-run] [OUT]     # OUT: gpu-report/ by default; PYTHON: the interpreter (python3)
#
# --dry-run runs the same stage list on a machine without a GPU (CI does, so the script cannot rot):
# the stages that need a GPU are reported skipped, after a cheap check that what they would run still
# loads (pytest collects the tests, the scripts run at a tiny size on the CPU); the others run for real.
set -uo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")  # each stage runs as "$self --stage ..."
PY=${PYTHON:-python3}
# A path to the interpreter is made absolute here: some stages run from bench/.
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac
export PYTHON=$PY  # the stages, run as separate calls of this script, take it from here
cd "$(dirname "$0")/.."
repo=$PWD
cuda_home=${CUDA_HOME:-/usr/local/cuda}
export PATH=$PATH:$cuda_home/bin:$cuda_home/compute-sanitizer
export L2FAST_REQUIRE_NATIVE=1 PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}

# name | budget in seconds | gpu: needs a GPU (skipped by --dry-run), any: runs everywhere | what it does
STAGES=(
  "preflight|15|any|driver, CUDA, torch, compute-sanitizer and Nsight Compute"
  "build|200|gpu|build for the present arch with -lineinfo (ops.cu, one nvcc job, is most of it); registers, spills"
  "cuda-tests|75|gpu|the CUDA cases of the op and optimizer tests"
  "gpu-cases|50|gpu|2^31+5-element bf16 tensor, 100k tiny tensors, odd-offset half views, side stream, bitwise repeat"
  "graphs|40|gpu|CUDA-graph capture and replay of the ops and steps (new grad_scale, found_inf, clip)"
  "smoke|25|any|every op and both steps once, small tensors, against the reference"
  "memcheck|25|gpu|compute-sanitizer memcheck on the smoke script"
  "initcheck|25|gpu|compute-sanitizer initcheck on the smoke script"
  "racecheck|25|gpu|compute-sanitizer racecheck on the smoke script"
  "synccheck|25|gpu|compute-sanitizer synccheck on the smoke script"
  "bandwidth|55|gpu|GB/s against torch's peers and a read roofline, L2 flushed (bench/gpu_bandwidth.py)"
  "ncu|25|gpu|Nsight Compute on the 1x100M case: DRAM % of peak, occupancy"
)
TOTAL_BUDGET=${L2FAST_GPU_BUDGET:-585}  # seconds; a stage that would start past it is cut short or not run

gpu_arch() { "$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())"; }
cuda_tests() { echo tests/ops/test_ops.py tests/optim/test_optim_fused.py; }
pytest_q() { "$PY" -m pytest -q -rs -p no:cacheprovider "$@"; }
sanitize() { # sanitize TOOL: the smoke script under compute-sanitizer, l2fast's kernels only
  command -v compute-sanitizer >/dev/null || { echo "SKIP: compute-sanitizer not found"; return 3; }
  compute-sanitizer --tool "$1" --kernel-name kns=l2fast --error-exitcode 9 "$PY" bench/gpu_smoke.py
}

# --- each stage: stage_NAME runs it; dry_NAME (GPU stages) is the --dry-run check ---
stage_preflight() {
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  else
    echo "nvidia-smi: not found"
  fi
  if command -v nvcc >/dev/null; then nvcc --version | tail -1; else echo "nvcc: not found"; fi
  for tool in cuobjdump compute-sanitizer ncu; do echo "$tool: $(command -v "$tool" || echo 'not found')"; done
  [ "$dry_run" = 1 ] && return 0
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; print('GPU:', torch.cuda.get_device_name())"
}

stage_build() {
  local arch
  arch=$(gpu_arch)
  echo "building for sm_${arch/./} with -lineinfo"
  TORCH_CUDA_ARCH_LIST=$arch L2FAST_CUDA=1 L2FAST_DEBUG=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" setup.py build_ext --inplace >"$out/build-compiler.log" 2>&1 || { tail -40 "$out/build-compiler.log"; return 1; }
  "$PY" bench/kernel_resources.py l2fast/_C*.so
}
dry_build() { "$PY" bench/kernel_resources.py --help >/dev/null && echo "kernel_resources.py loads"; }

stage_cuda_tests() { pytest_q $(cuda_tests) -k cuda; }
dry_cuda_tests() { pytest_q --collect-only $(cuda_tests) -k cuda | tail -1; }

stage_gpu_cases() { pytest_q tests/ops/test_cuda_gpu.py; }
dry_gpu_cases() { pytest_q --collect-only tests/ops/test_cuda_gpu.py | tail -1; }

stage_graphs() { pytest_q tests/ops/test_cuda_graphs.py; }
dry_graphs() { pytest_q --collect-only tests/ops/test_cuda_graphs.py | tail -1; }

stage_smoke() { "$PY" bench/gpu_smoke.py --device "$([ "$dry_run" = 1 ] && echo cpu || echo cuda)"; }

stage_memcheck() { sanitize memcheck; }
stage_initcheck() { sanitize initcheck; }
stage_racecheck() { sanitize racecheck; }
stage_synccheck() { sanitize synccheck; }

stage_bandwidth() { (cd bench && "$PY" gpu_bandwidth.py --json "$out/bandwidth.json"); }
dry_bandwidth() { (cd bench && "$PY" gpu_bandwidth.py --device cpu --small >/dev/null) && echo "ran at --small on the CPU"; }

stage_ncu() {
  command -v ncu >/dev/null || { echo "SKIP: ncu not found"; return 3; }
  local metrics=dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
  metrics+=,sm__maximum_warps_per_active_cycle_pct,launch__registers_per_thread
  ncu --kernel-name regex:chunk_kernel --launch-count 2 --metrics "$metrics" "$PY" -c "
import torch, l2fast
x = torch.randn(100_000_000, device='cuda')
g = torch.randn_like(x)
l2fast.sq_norm([x])
l2fast.add_penalty_grad_([x], [g], l2=1e-4)
torch.cuda.synchronize()"
}

# --- the runner ---
if [ "${1:-}" = --stage ]; then  # one stage, run under timeout by the loop below
  set -e
  dry_run=$3 out=$4
  "$2"
  exit
fi
dry_run=0
[ "${1:-}" = --dry-run ] && { dry_run=1; shift; }
out=$(mkdir -p "${1:-gpu-report}" && cd "${1:-gpu-report}" && pwd)
rm -f "$out"/stages.tsv "$out"/*.log
started=$SECONDS

json_string() { # a one-line JSON string of $1
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$(printf '%s' "$s" | tr -d '\000-\037')"
}

write_report() {
  local verdict=$1 name budget status seconds note first=1
  {
    echo "# bench/gpu.sh report"
    echo
    echo "Verdict: **$verdict**. $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - started)) s$([ "$dry_run" = 1 ] && echo ', --dry-run')."
    echo
    echo "| stage | status | seconds | budget | last line of its log |"
    echo "|---|---|---|---|---|"
    while IFS=$'\t' read -r name status seconds budget note; do
      echo "| $name | $status | $seconds | $budget | ${note//|/\\|} |"
    done <"$out/stages.tsv"
    [ -f "$out/bandwidth.md" ] && { echo; cat "$out/bandwidth.md"; }
  } >"$out/gpu-report.md"
  {
    printf '{"verdict": %s, "dry_run": %s, "seconds": %d, "stages": [' "$(json_string "$verdict")" \
      "$([ "$dry_run" = 1 ] && echo true || echo false)" "$((SECONDS - started))"
    while IFS=$'\t' read -r name status seconds budget note; do
      [ "$first" = 1 ] || printf ', '
      first=0
      printf '{"name": %s, "status": %s, "seconds": %d, "budget": %d, "log": %s, "note": %s}' "$(json_string "$name")" \
        "$(json_string "$status")" "$seconds" "$budget" "$(json_string "$name.log")" "$(json_string "$note")"
    done <"$out/stages.tsv"
    printf ']}\n'
  } >"$out/gpu-report.json"
}
: >"$out/stages.tsv"
trap 'write_report INTERRUPTED; exit 130' INT TERM

echo "bench/gpu.sh$([ "$dry_run" = 1 ] && echo ' --dry-run'): ${#STAGES[@]} stages, at most $TOTAL_BUDGET s in all; report in $out"
for entry in "${STAGES[@]}"; do
  IFS='|' read -r name budget kind what <<<"$entry"
  printf '  %-11s %4d s  %-3s  %s\n' "$name" "$budget" "$kind" "$what"
done

for entry in "${STAGES[@]}"; do
  IFS='|' read -r name budget kind what <<<"$entry"
  fn=${name//-/_}
  log=$out/$name.log
  left=$((TOTAL_BUDGET - (SECONDS - started)))
  limit=$((budget < left ? budget : left))
  start=$SECONDS
  if [ "$dry_run" = 1 ] && [ "$kind" = gpu ]; then
    if ! declare -F "dry_$fn" >/dev/null; then
      status="skipped" fn=""
    else
      fn="dry_$fn"
    fi
  else
    fn="stage_$fn"
  fi
  if [ -z "$fn" ]; then
    echo "no GPU (--dry-run)" >"$log"
  elif [ "$limit" -le 0 ]; then
    status="not run: out of time"
    echo "$status" >"$log"
  else
    timeout -k 10 "$limit" "$self" --stage "$fn" "$dry_run" "$out" >"$log" 2>&1
    rc=$?
    case $rc in
      0) status=$([ "$fn" = "dry_${name//-/_}" ] && echo skipped || echo passed) ;;
      3) status=skipped ;;
      124 | 137) status="timeout after $limit s" ;;
      *) status="failed ($rc)" ;;
    esac
  fi
  note=$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)
  # pytest that ran nothing but skips (no GPU, too little memory) has not checked anything
  [ "$status" = passed ] && [[ $note == *skipped* && $note != *passed* ]] && status=skipped
  printf '%s\t%s\t%d\t%d\t%s\n' "$name" "$status" "$((SECONDS - start))" "$budget" "$note" >>"$out/stages.tsv"
  printf '%-11s %-22s %4d s  %s\n' "$name" "$status" "$((SECONDS - start))" "$note"
done

if [ -f "$out/bandwidth.json" ]; then
  (cd bench && "$PY" -c "
import json, sys
rows = json.load(open(sys.argv[1]))
print('## Bandwidth (GB/s, % of the read roofline)\n')
print('| case | dtype | method | ms | GB/s | % roofline |\n|---|---|---|---|---|---|')
for r in rows:
    print(f\"| {r['case']} | {r['dtype']} | {r['method']} | {r['ms']:.3f} | {r['GB/s']:.0f} | {r['% of read roofline']:.0f} |\")
" "$out/bandwidth.json" >"$out/bandwidth.md") || true
fi
bad=$(cut -f1,2 "$out/stages.tsv" | grep -Ev $'\t(passed|skipped)$' | cut -f1 | paste -sd, -)
skipped=$(cut -f2 "$out/stages.tsv" | grep -c '^skipped$')
verdict=$([ -z "$bad" ] && echo "PASS ($skipped skipped)" || echo "FAIL: $bad")
write_report "$verdict"
echo "verdict: $verdict (report: $out/gpu-report.md, $out/gpu-report.json)"
[ -z "$bad" ]
