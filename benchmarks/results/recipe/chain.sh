#!/bin/bash
# Runs the recipe rows one after another (each: bash queue.sh NAME --set ...); restartable (finished
# runs are skipped by uca train, interrupted ones resume). Usage: nohup bash chain.sh &
cd "$(dirname "$0")/../../.."
Q=benchmarks/results/recipe/queue.sh
CE="--set model.loss.metric=ce --set model.loss.dcl_scale=0.025 --set model.loss.dcl_bias=-8.0"
ID="--set data.sampler=identity --set data.samples_per_id=4 --set data.lookalike_group=4"
bash $Q ce-scale0.025 $CE
bash $Q ce-identity-nosiblings-occl $CE $ID --set model.loss.pcl_intra_siblings=false \
    --set model.loss.occlusion_weight=0.02
