#!/bin/bash
# After a recipe row has finished (runs/recipe2/<row>/metrics.json exists): its uncertainty reports on
# val and test, its files copied here, and runs.md / runs.json rewritten for every finished row.
# Usage: bash benchmarks/results/recipe/sigma/finish_row.sh ROW
cd "$(dirname "$0")/../../../.."
row=$1
out=benchmarks/results/recipe/sigma
test -f runs/recipe2/$row/metrics.json || { echo "runs/recipe2/$row has not finished"; exit 1; }
export OMP_NUM_THREADS=1
for split in val test; do
    .venv/bin/python -m benchmarks.uncertainty runs/recipe2/$row --split $split --out $out/uncertainty-$row-$split.json
done
rows=(); for r in ce-scale0.025 ce-identity-nosiblings-occl ce-occl ce-identity-64x2; do
    test -f runs/recipe2/$r/metrics.json && rows+=("$r")
done
.venv/bin/python -m benchmarks.collect_runs "${rows[@]/#/runs/recipe2/}" --labels "${rows[@]}" --out $out \
    --title "sigma in the ranking: demo recipe rows"
for r in "${rows[@]}"; do cp runs/recipe2/$r/metrics.json runs/recipe2/$r/history.csv $out/$r/; done
