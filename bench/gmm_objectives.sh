#!/usr/bin/env bash
# Issue 23: every objective of the package on ring8 with the current recipe (configs/gmm2d.yaml), 3 seeds: the nine
# f-distill divergences, Uni-Instruct with reverse and forward KL, and the SiD preset. Runs in RUNS (default
# runs/gmm_objectives). Resumable; results in OUT.{json,md,png} (default bench/results/gmm_objectives_ws750_ring8:
# today's recipe, 750 warm-start steps per mode; the R1b recipe's table before it is bench/results/gmm_objectives_ring8).
# The overrides are the results table's (bench/gmm_sweep.sh; the teacher-dependent defaults are stated as recipe words
# by bench/gmm_table.py), so its forward-KL, JS and reverse-KL rows of the same seeds are the same runs: they are
# reused from REUSE (bench/gmm_table.py --reuse-from; default bench/results/gmm_table_ws750_ring8.json) and only the
# other nine objectives are trained.
# Run it from a checkout that does not change while it runs.
#   nohup bash bench/gmm_objectives.sh > logs/gmm_objectives.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2}"
python bench/gmm_table.py --teachers ring8 --seeds $SEEDS --workers "${WORKERS:-2}" --runs "${RUNS:-runs/gmm_objectives}" \
    --out "${OUT:-bench/results/gmm_objectives_ws750_ring8}" --reuse-from ${REUSE:-bench/results/gmm_table_ws750_ring8.json} \
    --objectives fdistill:rkl fdistill:srkl fdistill:js fdistill:sh fdistill:fkl fdistill:jeffreys fdistill:pearson \
    fdistill:neyman fdistill:alpha:0.5 uni_instruct:rkl uni_instruct:fkl sid:rkl \
    network.warm_start_cache=runs/warm_start_cache
