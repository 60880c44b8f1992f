#!/bin/bash
# Recipe runs on the demo preset, one at a time, 1 thread each (restartable: a finished run is skipped,
# an interrupted one resumes from its last checkpoint). Usage: bash queue.sh NAME [--set KEY=VALUE ...]
# Run folder runs/recipe2/NAME, log benchmarks/results/recipe/logs/NAME.log.
cd "$(dirname "$0")/../../.."
name=$1; shift
mkdir -p benchmarks/results/recipe/logs runs/recipe2
out=runs/recipe2/$name
resume=""; [ -f "$out/checkpoint_last.pt" ] && resume="--resume"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "# $(date -u +%F' '%T) commit $(git rev-parse --short HEAD): uca train --config configs/demo.json $* --out $out $resume" >> benchmarks/results/recipe/logs/$name.log
/usr/bin/time -v .venv/bin/python -m uca_model train --config configs/demo.json --threads 1 --no-progress \
    --set data.root=data/synthpedes-demo "$@" --out "$out" $resume >> benchmarks/results/recipe/logs/$name.log 2>&1
