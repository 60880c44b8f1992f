#!/bin/bash
# Row 3, after chain.sh: ce + the occlusion term alone (random batches, the seed's intra terms), to
# tell the occlusion term's cost from the identity batches' (row 2 had both).
cd "$(dirname "$0")/../../.."
bash benchmarks/results/recipe/queue.sh ce-occl --set model.loss.metric=ce \
    --set model.loss.dcl_scale=0.025 --set model.loss.dcl_bias=-8.0 --set model.loss.occlusion_weight=0.02
