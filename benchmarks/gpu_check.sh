#!/usr/bin/env bash
# One-shot check on a lent GPU machine (one H100/H200; Python 3.12, torch 2.11 + CUDA 13.0,
# triton 3.6, nvcc 13.0, pytest; bare and offline): build the extension, report what is usable,
# run the tests on the GPU, time each launch of the fused op (benchmarks/gpu_phases.py, in the log),
# run the GPU benchmarks, print a short table last.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: the CPU-safe parts at tiny sizes
#                                             # (same as UCA_GPU_CHECK_DRY=1; no build, no GPU;
#                                             # files named headline-dry.*, sweep-dry.*)
#
# Budget: about 9 minutes on one H200, build included (call it with a 600 s limit). Every step runs
# under `timeout` with what is left of UCA_GPU_CHECK_BUDGET_S (default 540 s) minus what later steps
# are guaranteed; a step that fails or times out is recorded in steps.tsv and the script goes on.
# Measured on the first H200 run (2026-12-04, 16 cores): build 49-57 s, self-test 137 s (Triton
# compiles every kernel variant), the kernel tests ~190 s on 8 xdist workers.
#
# Rows record the commit from git, or from UCA_BENCH_COMMIT where the copy has no .git.
#
# Everything lands in $OUT (default ./gpu_check_out), at most 8 files, none in subfolders:
#   log.txt                          every step's full output (the build verbose, the extension's
#                                    link and libstdc++ symbols, the self-test JSON)
#   steps.tsv                        step, exit code (124 = timed out), seconds
#   headline-cuda.{json,csv,md}      W2+SDM fwd+bwd, E = 1024, fp32 (TF32) and bf16: each fused
#                                    backend (B = 1024 … 262144) vs reference (… 65536) vs four
#                                    torch.matmul; fused / 4-matmul time at B = 32768
#   sweep-cuda.{json,csv,md}         the issue-7 sweep on a subset of cases (D = 512), B ≤ 65536,
#                                    as far as the time left allows
#                                    (plots: python -m benchmarks.plot sweep-cuda.json, here)
set -u
cd "$(dirname "$0")/.."

DRY=${UCA_GPU_CHECK_DRY:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
STEPS=$OUT/steps.tsv
BUDGET_S=${UCA_GPU_CHECK_BUDGET_S:-540}
START=$(date +%s)
export PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
: > "$LOG"
printf 'step\texit\tseconds\n' > "$STEPS"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME MAX_S RESERVE_S CMD...: run CMD with a timeout of min(MAX_S, time left - RESERVE_S).
step() {
    local name=$1 max=$2 reserve=$3
    shift 3
    local t=$(( $(left) - reserve ))
    [ "$t" -gt "$max" ] && t=$max
    if [ "$t" -lt 15 ]; then
        printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
        echo "== $name: skipped (budget spent)" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (timeout ${t}s): $*" | tee -a "$LOG"
    local s=$(date +%s)
    timeout -k 10 "$t" "$@" >> "$LOG" 2>&1
    local rc=$?
    local took=$(( $(date +%s) - s ))
    printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$STEPS"
    echo "   $name: exit $rc after ${took}s$([ $rc = 124 ] && echo ' (TIMED OUT)')" | tee -a "$LOG"
    return 0
}

{
    echo "gpu_check $(date -u +%FT%TZ) dry=$DRY budget=${BUDGET_S}s commit=${UCA_BENCH_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null)}"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available())" 2>&1
} | tee -a "$LOG"

# -- 1. build --------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    echo "== build: skipped in a dry run (uses the extension built here)" | tee -a "$LOG"
    printf 'build\tskipped\t0\n' >> "$STEPS"
else
    export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    export PATH="$PATH:$CUDA_HOME/bin"  # compute-sanitizer for tests/test_cuda_contrast.py (memcheck, racecheck, synccheck)
    if ls csrc/cuda/*.cu > /dev/null 2>&1; then export UCA_BUILD_CUDA=1; else export UCA_BUILD_CUDA=0; fi
    echo "   UCA_BUILD_CUDA=$UCA_BUILD_CUDA TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" | tee -a "$LOG"
    # --no-deps: the machine is offline and has the dependencies; fall back to an in-place build.
    # -v: the compile and link lines land in the log
    step build 240 200 bash -c "$PY -m pip install -v --no-build-isolation --no-deps -e . \
        || $PY setup.py build_ext --inplace"
    # libstdc++ internals defined inside the extension (a static copy): on the first H200 run the
    # extension crashed in std::ostream::_M_insert<long>, which it defined itself
    {
        echo "== extension: dynamic libraries and libstdc++ symbols it defines"
        so=$(ls uca_kernels/_C*.so 2>/dev/null | head -n 1)
        if [ -n "$so" ]; then
            ldd "$so" | grep -E "stdc|gomp|c10|torch_cpu" || true
            echo "defined std:: ostream / locale / codecvt symbols: $(nm -C --defined-only "$so" 2>/dev/null \
                | grep -cE "std::(basic_ostream|ostream|locale|codecvt|ios_base)")"
            nm -C --defined-only "$so" 2>/dev/null | grep -E "std::(basic_ostream|ostream|locale|codecvt|ios_base)" \
                | head -n 5
        fi
        g++ --version | head -n 1
    } >> "$LOG" 2>&1
fi

# -- 2. what is usable -----------------------------------------------------------------------------
# the self-tests first (triton compiles every kernel variant here): their verdicts land in the
# cache and, as JSON, in the log; info then reads them from the cache
step selftest 180 190 bash -c "$PY -m uca_kernels.selftest -v --json > /tmp/uca-selftest.json"
cat /tmp/uca-selftest.json >> "$LOG" 2>/dev/null
step info 60 190 $PY -m uca_kernels.info
grep -E "^extension|^  [a-z]+ +(usable|unusable)" "$LOG" || true

# -- 3. the kernel tests on the GPU (the model's tests need no GPU: CI runs them) ------------------
# addopts cleared: the project's --benchmark-disable needs pytest-benchmark, which may be absent.
# With pytest-xdist, 8 workers and -v: a test that crashes its process is reported and the others
# go on, and each result line names its test even if the step times out.
TESTS="$PY -m pytest -o addopts= -p no:cacheprovider -q tests --ignore=tests/model -rfE"
if $PY -c "import xdist" 2> /dev/null; then TESTS="$TESTS -n 8 -v"; else TESTS="$TESTS -x"; fi
if [ "$DRY" = 1 ]; then
    step tests 60 150 $TESTS --collect-only
else
    step tests 200 170 $TESTS
fi
tail -n 40 "$LOG" | grep -E "passed|failed|error" | tail -n 2 || true

# -- 3b. where the fused op's time goes: each launch and op alone vs one matmul (table in the log) --
if [ "$DRY" = 1 ]; then
    step phases 60 120 env TRITON_INTERPRET=1 $PY -m benchmarks.gpu_phases --device cpu --dry --dtypes float32
else
    step phases 60 120 $PY -m benchmarks.gpu_phases --device cuda --B 16384 --E 256,1024 --dtypes bfloat16,float32
fi

# -- 4. headline: fused vs reference vs four matmuls ----------------------------------------------
if [ "$DRY" = 1 ]; then
    step headline 120 40 $PY -m benchmarks.headline --device cpu --dry --dtypes float32,bfloat16 \
        --name headline-dry --out "$OUT"
else
    step headline 150 40 $PY -m benchmarks.headline --device cuda --out "$OUT" --max-call-s 1.5 --target-s 0.3
fi

# -- 5. the sweep, on a subset of cases, in what time is left --------------------------------------
SWEEP_S=$(( $(left) - 15 ))
SWEEP_MIN=$(awk "BEGIN { printf \"%.2f\", ($SWEEP_S - 25) / 60 }")
if [ "$DRY" = 1 ]; then
    step sweep 120 10 $PY -m benchmarks.sweep --device cpu --ci --b-max 512 --b-max-fused 1024 --max-call-s 0.5 \
        --providers cpu,triton,cuda,reference,naive,infcl --target-s 0.1 \
        --name sweep-dry --out "$OUT" --no-plot --budget-min "$SWEEP_MIN"
else
    step sweep 600 10 $PY -m benchmarks.sweep --device cuda --gpu --out "$OUT" --no-plot \
        --cases dist-w2-sdm,dist-kl-infonce,point-K4,clip --compile-cases dist-w2-sdm-D512-fwdbwd \
        --b-max 32768 --b-max-fused 65536 --max-call-s 1 --target-s 0.2 --budget-min "$SWEEP_MIN"
fi

# -- the short table -------------------------------------------------------------------------------
echo
echo "== steps (exit 124 = timed out)"
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
echo
echo "== total $(( $(date +%s) - START ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
for f in "$OUT"/headline-*.md; do
    [ -f "$f" ] || continue
    echo
    sed -n '/^## Summary/,/^## All measurements/p' "$f" | grep -v "^## All"
done
