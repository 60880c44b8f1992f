#!/bin/bash
# Recipe rows on SynthPedes 'large' (seed 0, data seed 0), 1 torch thread each, restartable: a finished
# run is skipped, an interrupted one resumes from its last checkpoint.
# Usage: bash benchmarks/results/recipe/large/queue.sh NAME [--set KEY=VALUE ...]
# Run folder runs/large/NAME, log benchmarks/results/recipe/large/logs/NAME.log.
cd "$(dirname "$0")/../../../.."
name=$1; shift
out=runs/large/$name
log=benchmarks/results/recipe/large/logs/$name.log
mkdir -p "$(dirname "$log")" runs/large
[ -f "$out/metrics.json" ] && { echo "$out has finished"; exit 0; }
resume=""; [ -f "$out/checkpoint_last.pt" ] && resume="--resume"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "# $(date -u +%F' '%T) commit $(git rev-parse --short HEAD): uca train --config configs/synthpedes-large.json $* --out $out $resume" >> "$log"
/usr/bin/time -v .venv/bin/python -m uca_model train --config configs/synthpedes-large.json --threads 1 \
    --no-progress "$@" --out "$out" $resume >> "$log" 2>&1
