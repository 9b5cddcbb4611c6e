#!/usr/bin/env bash
# Issue 23: every objective of the package on ring8 with the current recipe (configs/gmm2d.yaml), 3 seeds: the nine
# f-distill divergences, Uni-Instruct with reverse and forward KL, and the SiD preset. Shares the run folder of
# its own run folder (RUNS, default runs/gmm_objectives). Resumable; results in OUT.{json,md,png} (default
# bench/results/gmm_objectives_ring8_ws750: today's recipe, 750 warm-start steps per mode; the table before it, the R1b
# recipe's, is bench/results/gmm_objectives_ring8). The regression term (MATH R1b, 0.7 / sigma_data) and 70 sampler levels are the mixture defaults,
# written out so the runs say so. Run it from a checkout that does not change while it runs.
#   nohup bash bench/gmm_objectives.sh > logs/gmm_objectives.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2}"
python bench/gmm_table.py --teachers ring8 --seeds $SEEDS --workers "${WORKERS:-2}" --runs "${RUNS:-runs/gmm_objectives}" \
    --out "${OUT:-bench/results/gmm_objectives_ring8_ws750}" \
    --objectives fdistill:rkl fdistill:srkl fdistill:js fdistill:sh fdistill:fkl fdistill:jeffreys fdistill:pearson \
    fdistill:neyman fdistill:alpha:0.5 uni_instruct:rkl uni_instruct:fkl sid:rkl \
    network.warm_start_cache=runs/warm_start_cache objective.regression_weight=0.7 objective.regression_sigma=1 \
    data.num_steps=70
