#!/usr/bin/env bash
# The GPU check: one call on a lent GPU machine (one H100 or H200; Python 3.12, torch 2.11 + CUDA 13,
# triton 3.6, nvcc, pytest; bare and offline) that measures first and writes as it goes.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: every step's code path at tiny sizes on the CPU
#                                             # (no build; Triton in its interpreter; same as UCA_GPU_CHECK_DRY=1)
#
# Steps, in this order (UCA_GPU_CHECK_STEPS: a comma-separated subset, e.g. "card,build,tests"):
#   card      the card, its clocks and power limit (nvidia-smi -q -d CLOCK,POWER), versions
#   build     pip install --no-build-isolation -e . for the visible card's architecture, time-boxed;
#             at the same time the Triton backend's self-test (it compiles its kernels: the Triton
#             cache is warm for the headline); then the CUDA backend's self-test and uca_kernels.info
#   headline  benchmarks/gpu_headline.py: W2 + SDM, KL + InfoNCE, CLIP InfoNCE, CLIP sigmoid, points K = 4,
#             B = 8192 / 32768 / 131072, E = 1024 / 256, TF32 and bf16, forward + backward: the fused
#             backends (chunked design, then the tile kernels), four matmuls, the materialised reference,
#             the chunked plain-PyTorch form, torch.compile, open_clip; last one call at B = 1048576
#   clocks    the clocks and power again, after the load (throttling shows here)
#   profile   benchmarks/gpu_profile.py: torch.profiler of one call of each fused backend (B = 32768, E = 1024)
#   train     benchmarks/train_step.py: one training step of the clip-vit-b16 preset, random weights, bf16
#   tests     the GPU test files (xdist and pytest-timeout where installed), with what time is left
#
# Budget: UCA_GPU_CHECK_BUDGET_S (default 480 s: call it with a 600 s limit). Each step runs under
# `timeout` with min(its cap, time left - what later steps are guaranteed); a step that fails or times
# out is recorded in steps.tsv and the script goes on. The headline gets what is left after the build
# less about 2 minutes for the steps after it (at most 300 s); it stops itself at its budget and keeps
# 40 s of it for the B = 1048576 call.
#
# Python packages the machine lacks (open_clip: open_clip_torch, ftfy, wcwidth) travel as wheels in
# .whl/ (carried with the call): they are installed into /tmp/uca-site first. Rows record the commit
# from git, or from UCA_BENCH_COMMIT where the copy has no .git.
#
# Everything lands in $OUT (default ./gpu_check_out): 8 files, none in subfolders, each written as
# its step goes (a later crash or time-out loses nothing measured before):
#   card.txt                      card, clocks and power limit before and after the headline, versions
#   steps.tsv                     step, exit code (124 = timed out), seconds
#   log.txt                       every step's full output (build, self-tests, headline progress, tests -v)
#   headline.{md,json,csv,png}    the ratio tables (time ÷ four matmuls, peak memory), the targets with
#                                 this run's numbers beside them, every row (rewritten after each series)
#   profile-train.txt             the profiler tables, then the training-step timings
set -u
cd "$(dirname "$0")/.."

DRY=${UCA_GPU_CHECK_DRY:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
STEPS=$OUT/steps.tsv
CARD=$OUT/card.txt
EXTRA=$OUT/profile-train.txt
if [ "$DRY" = 1 ]; then BUDGET_S=${UCA_GPU_CHECK_BUDGET_S:-240}; else BUDGET_S=${UCA_GPU_CHECK_BUDGET_S:-480}; fi
WANT=${UCA_GPU_CHECK_STEPS:-card,build,headline,clocks,profile,train,tests}
START=$(date +%s)
export PYTHONUNBUFFERED=1
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the dry run's tiny sizes: one thread is fastest
if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
: > "$LOG"
: > "$EXTRA"
printf 'step\texit\tseconds\n' > "$STEPS"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
wanted() { case ",$WANT," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# step NAME MAX_S RESERVE_S CMD...: run CMD (output appended to log.txt) with a timeout of
# min(MAX_S, time left - RESERVE_S); record it in steps.tsv.
step() {
    local name=$1 max=$2 reserve=$3
    shift 3
    local t=$(( $(left) - reserve ))
    [ "$t" -gt "$max" ] && t=$max
    if [ "$t" -lt 10 ]; then
        printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
        echo "== $name: skipped (budget spent)" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (timeout ${t}s, $(( $(date +%s) - START ))s in): $*" | tee -a "$LOG"
    local s=$(date +%s)
    timeout -k 10 "$t" "$@" >> "$LOG" 2>&1
    local rc=$?
    local took=$(( $(date +%s) - s ))
    printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$STEPS"
    echo "   $name: exit $rc after ${took}s$([ $rc = 124 ] && echo ' (TIMED OUT)')" | tee -a "$LOG"
    return 0
}

clocks() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
        nvidia-smi -q -d CLOCK,POWER
    else
        echo "no nvidia-smi here"
    fi
}

# -- card ------------------------------------------------------------------------------------------
if wanted card; then
    {
        echo "gpu_check $(date -u +%FT%TZ) dry=$DRY budget=${BUDGET_S}s steps=$WANT commit=${UCA_BENCH_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
        echo "host $(uname -n), $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
        clocks
        $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1
        command -v nvcc > /dev/null && nvcc --version | tail -n 2
    } > "$CARD" 2>&1
    cat "$CARD" | tee -a "$LOG"
    printf 'card\t0\t%s\n' $(( $(date +%s) - START )) >> "$STEPS"
fi

# -- wheels the machine lacks (optional providers), carried in .whl/ ------------------------------
if [ "$DRY" != 1 ] && ls .whl/*.whl > /dev/null 2>&1; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/uca-site .whl/*.whl >> "$LOG" 2>&1; then
        export PYTHONPATH="/tmp/uca-site${PYTHONPATH:+:$PYTHONPATH}"
        echo "== wheels installed into /tmp/uca-site: $(ls .whl | tr '\n' ' ')" | tee -a "$LOG"
    else
        echo "== wheels in .whl/ did not install (see log.txt); their providers are skipped" | tee -a "$LOG"
    fi
fi

# -- build, with the Triton self-test beside it ---------------------------------------------------
export UCA_SELFTEST_CACHE=${UCA_SELFTEST_CACHE:-/tmp/uca-selftest-cache.json}
if wanted build; then
    if [ "$DRY" = 1 ]; then
        echo "== build: skipped in a dry run (uses the extension built here)" | tee -a "$LOG"
        printf 'build\tskipped\t0\n' >> "$STEPS"
        step selftest 60 60 $PY -m uca_kernels.selftest --backend cpu --device cpu
    else
        ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
        export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${ARCH:-9.0}}
        export MAX_JOBS=${MAX_JOBS:-16} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
        export PATH="$PATH:$CUDA_HOME/bin"  # compute-sanitizer for tests/test_cuda_contrast.py
        if ls csrc/cuda/*.cu > /dev/null 2>&1; then export UCA_BUILD_CUDA=1; else export UCA_BUILD_CUDA=0; fi
        echo "   UCA_BUILD_CUDA=$UCA_BUILD_CUDA TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" | tee -a "$LOG"
        # the Triton self-test needs no extension: it runs while the extension compiles (own log,
        # appended below), and compiles the Triton kernels the headline will use
        ( s=$(date +%s); timeout -k 10 150 $PY -m uca_kernels.selftest --backend triton --device cuda -v \
            > /tmp/uca-selftest-triton.txt 2>&1; echo "selftest-triton	$?	$(( $(date +%s) - s ))" > /tmp/uca-selftest-triton.rc ) &
        TRITON_ST=$!
        # --no-deps: the machine is offline and has the dependencies; fall back to an in-place build.
        # -v: the compile and link lines land in the log
        step build 170 300 bash -c "$PY -m pip install -v --no-build-isolation --no-deps -e . \
            || $PY setup.py build_ext --inplace"
        wait $TRITON_ST
        cat /tmp/uca-selftest-triton.rc >> "$STEPS" 2>/dev/null
        { echo "== selftest-triton (beside the build)"; cat /tmp/uca-selftest-triton.txt; } >> "$LOG" 2>&1
        grep -E "^triton on" /tmp/uca-selftest-triton.txt | tee -a "$LOG"
        {   # libstdc++ internals defined inside the extension (the first H200 run crashed in its own copy)
            so=$(ls uca_kernels/_C*.so 2>/dev/null | head -n 1)
            if [ -n "$so" ]; then
                echo "== extension $so: $(ldd "$so" | grep -cE "stdc|c10|torch_cpu") torch/libstdc++ links;" \
                    "std:: stream symbols defined inside: $(nm -C --defined-only "$so" 2>/dev/null \
                    | grep -cE "std::(basic_ostream|ostream|locale|codecvt|ios_base)")"
            fi
        } >> "$LOG" 2>&1
        step selftest-cuda 60 290 $PY -m uca_kernels.selftest --backend cuda --device cuda -v
        grep -E "^cuda on" "$LOG" | tail -n 1
    fi
    step info 30 $([ "$DRY" = 1 ] && echo 150 || echo 280) $PY -m uca_kernels.info
fi

# -- the headline ----------------------------------------------------------------------------------
if wanted headline; then
    if [ "$DRY" = 1 ]; then
        step headline 200 20 env TRITON_INTERPRET=1 $PY -m benchmarks.gpu_headline --device cpu --dry --out "$OUT" \
            --name headline
    else
        H=$(( $(left) - 110 ))
        [ "$H" -gt 300 ] && H=300
        [ "$H" -lt 60 ] && H=60
        step headline $(( H + 90 )) 60 $PY -m benchmarks.gpu_headline --device cuda --out "$OUT" --name headline \
            --budget-s "$H"
    fi
fi

rm -f "$OUT"/*.tmp  # a write cut by the headline's time-out (the call returns at most 8 files)

if wanted clocks; then
    { echo; echo "== after the headline ($(( $(date +%s) - START ))s in)"; clocks; } >> "$CARD" 2>&1
fi

# -- where one call's time goes; one training step ------------------------------------------------
if wanted profile; then
    if [ "$DRY" = 1 ]; then
        step profile 60 15 env TRITON_INTERPRET=1 $PY -m benchmarks.gpu_profile --device cpu --dry --out "$EXTRA" \
            --dtypes float32 --backends triton,triton-tiles
    else
        step profile 45 60 $PY -m benchmarks.gpu_profile --device cuda --out "$EXTRA" \
            --backends triton,cuda,triton-tiles,cuda-tiles --dtypes float32,bfloat16
    fi
fi
if wanted train; then
    if [ "$DRY" = 1 ]; then
        step train 60 10 $PY -m benchmarks.train_step --device cpu --dry --steps 1 --out "$EXTRA"
    else
        step train 75 30 $PY -m benchmarks.train_step --device cuda --out "$EXTRA"
    fi
fi

# -- the GPU tests, in what time is left ----------------------------------------------------------
# addopts cleared: the project's --benchmark-disable needs pytest-benchmark, which may be absent.
# With pytest-xdist, 8 workers and -v: a test that crashes its process is reported and the others go
# on, and each result line names its test even if the step times out.
if wanted tests; then
    GPU_TESTS=${UCA_GPU_TESTS:-$(ls tests/test_*chunk*.py 2>/dev/null | tr '\n' ' ')tests/test_cuda_contrast.py tests/test_triton_contrast.py tests/test_sigmoid_sum.py tests/test_selftest.py}
    TESTS="$PY -m pytest -o addopts= -p no:cacheprovider -rfE $GPU_TESTS"
    if $PY -c "import xdist" 2> /dev/null; then TESTS="$TESTS -n 8 -v"; else TESTS="$TESTS -v -x"; fi
    if $PY -c "import pytest_timeout" 2> /dev/null; then TESTS="$TESTS --timeout=120"; fi
    if [ "$DRY" = 1 ]; then
        step tests 60 0 $TESTS --collect-only -q
    else
        T=$(( $(left) - 5 ))
        [ "$T" -lt 30 ] && T=30
        step tests "$T" -1000 $TESTS  # (a negative reserve: at least 30 s even past the budget)
    fi
    tail -n 60 "$LOG" | grep -E "passed|failed|error" | tail -n 2 || true
fi

# -- the short table -------------------------------------------------------------------------------
{
    echo
    echo "== steps (exit 124 = timed out)"
    column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
    echo
    echo "== total $(( $(date +%s) - START ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
    if [ -f "$OUT/headline.md" ]; then
        echo
        sed -n '/^## Targets/,/^## All rows/p' "$OUT/headline.md" | grep -v "^## All rows"
    fi
} | tee -a "$LOG"
