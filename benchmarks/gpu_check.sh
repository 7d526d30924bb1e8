#!/usr/bin/env bash
# gradscope's one-command GPU check: build for the local GPU, CUDA tests,
# compute-sanitizer (memcheck, racecheck), both benchmarks on CUDA; every figure
# as JSON plus one log in one folder, and a summary at the end.
#
#   benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR: the argument, else $OUT, else ./gpu-check-out
#
# Made for a bare CUDA machine (torch preinstalled, nothing of gradscope's, no
# network) in under 8 minutes: each stage is time-boxed, the whole run has a
# budget (GPU_CHECK_BUDGET_S, default 470 s), and a stage that fails or times
# out loses nothing of the others (the benchmarks rewrite their JSON after each
# case). Without a visible GPU the CUDA stages are skipped, saying so, and the
# benchmarks run a CPU smoke run instead (GPU_CHECK_CPU_SMOKE=0 turns that off).
#
# Environment: PYTHON (default: the first of python3, python, .venv/bin/python
# that imports torch), CUDA_HOME (default: from nvcc on PATH, else
# /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default: the local GPU's, e.g. 9.0).
#
# Output files (few, on purpose): gpu-check.log, summary.json,
# bench_grad_stats.json, bench_monitor_cuda.json (and _weights, _updates, _act: the training view's features),
# bench_scaling.json, latency_probe.json, scaling_bytes_cuda.png,
# scaling_count_cuda.png (CPU smoke run: the same with _cpu_quick / _cpu).

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUTDIR=${1:-${OUT:-./gpu-check-out}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/gpu-check.log
WORK=$(mktemp -d)
STAGES=$WORK/stages.tsv # name<TAB>status<TAB>seconds<TAB>detail
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)
: >"$LOG"
: >"$STAGES"
trap 'rm -rf "$WORK"' EXIT

log() { echo "$*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STAGES"; log "--- $1: $2${4:+ ($4)} [${3}s]"; }
skip() { record "$1" skipped 0 "$2"; }

# run_stage NAME BOX_S CMD...: runs CMD time-boxed (and within the overall budget), output to the log.
# Exit codes: 0 ok, 124/137 timeout, 3 skipped (the command said why), anything else failed.
run_stage() {
  local name=$1 box=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if ((left < 20)); then
    skip "$name" "out of time: the ${BUDGET_S}s budget (GPU_CHECK_BUDGET_S) is spent"
    return 0
  fi
  ((box > left)) && box=$left
  log ""
  log "=== $name (time box ${box}s, $(date -u +%H:%M:%S) UTC)"
  log "\$ $*"
  local t0=$(date +%s) rc
  (cd "$ROOT" && timeout --kill-after=10 "$box" "$@") 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local dt=$(($(date +%s) - t0))
  [[ $name == tests* && $rc == 5 ]] && rc=3 && log "pytest: no test matched" # pytest's "no tests collected"
  case $rc in
  0) record "$name" ok "$dt" "$([[ $name == tests* ]] && grep -E '[0-9]+ (passed|failed|skipped|deselected)' "$LOG" | tail -n 1)" ;;
  124 | 137) record "$name" timeout "$dt" "killed after ${box}s" ;;
  3) record "$name" skipped "$dt" "$(tail -n 1 "$LOG")" ;;
  86) record "$name" FAILED "$dt" "compute-sanitizer reported errors (see log)" ;;
  *) record "$name" FAILED "$dt" "exit code $rc: $(grep -v '^\s*$' "$LOG" | tail -n 1 | cut -c1-200)" ;;
  esac
  return 0
}

# --- which python, which GPU -----------------------------------------------------------
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  for cand in python3 python "$ROOT/.venv/bin/python"; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' >/dev/null 2>&1; then
      PY=$(command -v "$cand")
      break
    fi
  done
fi
if [[ -z $PY ]]; then
  log "gpu_check: no python with torch found (set PYTHON=...)"
  exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # the in-place build is imported from the checkout
export PYTHONUNBUFFERED=1

if [[ -z ${CUDA_HOME:-} ]]; then
  # nvcc on PATH may be a wrapper script (not a link into the toolkit): accept a folder with the headers.
  for cand in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)")")")" /usr/local/cuda; do
    if [[ -x $cand/bin/nvcc && -f $cand/include/cuda_runtime.h ]]; then
      CUDA_HOME=$cand
      break
    fi
  done
fi
if [[ -n ${CUDA_HOME:-} ]]; then
  export CUDA_HOME
  export PATH="$PATH:$CUDA_HOME/bin:$CUDA_HOME/compute-sanitizer"
fi

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  HAVE_GPU=1
  ARCH=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
  NO_GPU_WHY=""
else
  HAVE_GPU=0
  ARCH=""
  NO_GPU_WHY="no CUDA device visible (torch.cuda.is_available() is False): CUDA stage skipped"
fi

log "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) · repo $ROOT · out $OUTDIR · python $PY · budget ${BUDGET_S}s"
log "gpu_check: GPU: $([[ $HAVE_GPU == 1 ]] && echo "yes, arch $ARCH" || echo "$NO_GPU_WHY") · CUDA_HOME ${CUDA_HOME:-unset}"

# --- stages ----------------------------------------------------------------------------
env_report() {
  echo "## host: $(uname -a)"
  echo "## nproc: $(nproc)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  "$PY" - <<'EOF'
import platform, torch
print(f"## python {platform.python_version()} torch {torch.__version__} (CUDA {torch.version.cuda}) gpu {torch.cuda.is_available()}")
for name in ("pytest", "hypothesis", "transformers", "torchvision", "matplotlib", "ninja", "numpy"):
    try:
        mod = __import__(name)
        print(f"## {name} {getattr(mod, '__version__', 'present')}")
    except Exception as exc:  # report, never fail the stage on a missing extra
        print(f"## {name} missing ({type(exc).__name__})")
EOF
  for tool in nvcc ninja compute-sanitizer; do
    if command -v $tool >/dev/null 2>&1; then echo "## $tool: $($tool --version 2>&1 | tail -n 1)"; else echo "## $tool: not found"; fi
  done
  return 0
}
export PY
export -f env_report
run_stage env 60 bash -c env_report

if [[ $HAVE_GPU == 1 ]]; then
  if [[ -f $ROOT/setup.py ]]; then
    # In place: nothing is installed into the machine's python; PYTHONPATH points at the checkout.
    run_stage build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
  else
    skip build "no setup.py in $ROOT"
  fi
else
  skip build "$NO_GPU_WHY (build the CPU extension with the README's install command)"
fi

run_stage info 60 "$PY" -m gradscope info
"$PY" -m gradscope info --json >"$WORK/info.json" 2>/dev/null || echo '{}' >"$WORK/info.json"

if [[ $HAVE_GPU == 1 ]]; then
  if "$PY" -c 'import pytest' >/dev/null 2>&1; then
    run_stage tests-cuda 150 "$PY" -m pytest tests -q -m gpu -p no:cacheprovider --continue-on-collection-errors
  else
    skip tests-cuda "pytest is not installed for $PY"
  fi
  # Stage order is priority order: when the budget runs out, what comes last is skipped.
  # memcheck early (a memory error makes every later figure suspect), then the figures
  # the targets are judged on, racecheck last.
  SANITIZER=$(command -v compute-sanitizer || true)
  sanitize() {
    if [[ -n $SANITIZER ]]; then
      run_stage "sanitizer-$1" 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool "$1" --error-exitcode 86 --print-limit 50 "$PY" benchmarks/cuda_sanitizer_case.py
    else
      skip "sanitizer-$1" "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"
    fi
  }
  sanitize memcheck
  # Host and device time of small calls, one-launch against two-launch small lists (about 10 s).
  run_stage latency-probe 45 "$PY" benchmarks/latency_probe.py --json "$OUTDIR/latency_probe.json"
  # Latency, bytes and count sweeps (the real lists are bench_grad_stats's), each point's
  # figures saved as it goes; new points stop after 120 s.
  run_stage bench-scaling 170 "$PY" benchmarks/bench_scaling.py --device cuda --coarse --sweeps latency,bytes,count \
    --out "$OUTDIR/bench_scaling.json" --plot-dir "$OUTDIR" --time-budget-s 120
  run_stage bench-grad-stats 110 "$PY" benchmarks/bench_grad_stats.py --device cuda \
    --out "$OUTDIR/bench_grad_stats.json" --time-budget-s 70
  run_stage bench-monitor 75 "$PY" benchmarks/bench_monitor.py --device cuda --layers 12 --batch 32 --seq 128 \
    --pairs 15 --json "$OUTDIR/bench_monitor_cuda.json"
  sanitize racecheck
  for feature in weights updates act; do # the training view's opt-in features, each against plain steps
    run_stage "bench-monitor-$feature" 60 "$PY" benchmarks/bench_monitor.py --device cuda --layers 12 --batch 32 \
      --seq 128 --pairs 8 --features "$feature" --json "$OUTDIR/bench_monitor_cuda_$feature.json"
  done
else
  for s in tests-cuda sanitizer-memcheck latency-probe sanitizer-racecheck bench-grad-stats bench-monitor bench-scaling \
    bench-monitor-weights bench-monitor-updates bench-monitor-act; do skip "$s" "$NO_GPU_WHY"; done
  if [[ ${GPU_CHECK_CPU_SMOKE:-1} == 1 ]]; then
    run_stage cpu-smoke-grad-stats 150 "$PY" benchmarks/bench_grad_stats.py --device cpu --quick \
      --out "$OUTDIR/bench_grad_stats_cpu_quick.json"
    run_stage cpu-smoke-scaling 150 "$PY" benchmarks/bench_scaling.py --device cpu --quick \
      --out "$OUTDIR/bench_scaling_cpu_quick.json" --plot-dir "$OUTDIR"
  fi
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >>"$LOG" 2>&1

# --- summary (stdlib only: it runs even where torch is broken) ---------------------------
log ""
"$PY" "$HERE/gpu_check_summary.py" "$OUTDIR" "$STAGES" "$WORK/info.json" "$(($(date +%s) - START))" 2>&1 | tee -a "$LOG"
