#!/bin/bash
# The ablation on SynthPedes 'large' with the recipe of benchmarks/results/recipe/large/ (the `ce`
# score, scale 0.025, bias -8; identity batches of 64 identities x 2, look-alike groups of 4).
# Restartable: the rows of this folder's runs.json are taken as they are, finished runs are reused,
# interrupted ones resume from their last checkpoint.
# Usage: bash benchmarks/results/ablation/run.sh "VARIANT ..." "SEED ..."
#   default: "UCA UCA-nosigma" "0 1 2"
cd "$(dirname "$0")/../../.."
variants=${1:-UCA UCA-nosigma}
seeds=${2:-0 1 2}
out=benchmarks/results/ablation
reuse=""; [ -f $out/runs.json ] && reuse="--reuse $out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m benchmarks.ablation --preset large --variants $variants --seeds $seeds \
    --parallel 2 --threads 1 --runs runs/ablation-recipe --out $out $reuse \
    --set model.loss.metric=ce --set model.loss.dcl_scale=0.025 --set model.loss.dcl_bias=-8.0 \
    --set data.sampler=identity --set data.samples_per_id=2 --set data.lookalike_group=4
