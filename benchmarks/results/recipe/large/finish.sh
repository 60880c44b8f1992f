#!/bin/bash
# After 'large' recipe rows have finished (runs/large/<row>/metrics.json): each row's uncertainty
# reports on val and test (once), its files copied here, and runs.md / runs.json rewritten for every
# finished row, after the reference row (`ce`: the UCA seed-0 run of ../../ablation-ce-large/).
# Usage: bash benchmarks/results/recipe/large/finish.sh
cd "$(dirname "$0")/../../../.."
out=benchmarks/results/recipe/large
export OMP_NUM_THREADS=1
paths=(runs/ablation-ce/UCA-s0); labels=(ce)
for r in ce-16ep ce-identity ce-identity-nosigma ce-identity-noerase ce-identity-96x48 ce-identity-96x48-16ep; do
    test -f runs/large/$r/metrics.json || continue
    paths+=(runs/large/$r); labels+=("$r")
done
for i in "${!paths[@]}"; do
    if [[ ${labels[$i]} == *nosigma ]]; then  # sigma is fixed: only the 100-identity sub-galleries
        f=$out/subgallery-${labels[$i]}-test.json
        test -f $f || .venv/bin/python -c "import json, sys; from uca_model.uncertainty import run_sub_galleries
json.dump(run_sub_galleries(sys.argv[1], 'test'), open(sys.argv[2], 'w'), indent=1)" "${paths[$i]}" $f
        continue
    fi
    for split in val test; do
        f=$out/uncertainty-${labels[$i]}-$split.json
        test -f $f || .venv/bin/python -m benchmarks.uncertainty "${paths[$i]}" --split $split --out $f
    done
done
.venv/bin/python -m benchmarks.collect_runs "${paths[@]}" --labels "${labels[@]}" --out $out \
    --title "recipe rows on SynthPedes 'large'"
for i in "${!paths[@]}"; do cp "${paths[$i]}"/metrics.json "${paths[$i]}"/history.csv $out/${labels[$i]}/; done
