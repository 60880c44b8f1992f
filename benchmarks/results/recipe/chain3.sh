#!/bin/bash
# Row 3, after chain.sh: identity batches of 64 identities x 2 (twice the identities per batch of row 2).
cd "$(dirname "$0")/../../.."
bash benchmarks/results/recipe/queue.sh ce-identity2-nosiblings-occl --set model.loss.metric=ce \
    --set model.loss.dcl_scale=0.025 --set model.loss.dcl_bias=-8.0 --set data.sampler=identity \
    --set data.samples_per_id=2 --set data.lookalike_group=4 --set model.loss.pcl_intra_siblings=false \
    --set model.loss.occlusion_weight=0.02
