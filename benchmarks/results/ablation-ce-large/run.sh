#!/bin/bash
# The σ control under the per-dimension `ce` score on SynthPedes 'large': UCA against UCA-nosigma,
# the seeds given (default 0). Restartable: finished runs are reused, interrupted ones resume.
# Usage: bash benchmarks/results/ablation-ce-large/run.sh [SEED ...]
cd "$(dirname "$0")/../../.."
seeds=${*:-0}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m benchmarks.ablation --preset large --variants UCA UCA-nosigma --seeds $seeds \
    --parallel 2 --threads 1 --runs runs/ablation-ce --out benchmarks/results/ablation-ce-large \
    --set model.loss.metric=ce --set model.loss.dcl_scale=0.025 --set model.loss.dcl_bias=-8.0
