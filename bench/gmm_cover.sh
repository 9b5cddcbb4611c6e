#!/usr/bin/env bash
# Issue 23, mode coverage: does forward KL / JS reach modes that reverse KL drops? On islands3 (a heavy mode and two
# light islands 18 stds away, fdistill.data), from two starts, 3 seeds each:
#   flow   = the recipe's start (the generator regressed onto the teacher's probability-flow map: every mode is
#            already covered when distillation begins);
#   denoiser = DMD's start (network.flow_fit_steps=0: the generator is the MLP fitted to the teacher's denoiser at
#            sigma_init = 10 sigma_data, which maps all noise close to the mixture's mean, next to the heavy mode),
#            without the regression term (objective.regression_weight=0): it ties every z to its flow-map sample's mode
#            and so would cover the islands by construction, hiding what the divergence alone does.
# Resumable (bench/gmm_table.py reuses finished runs); results in bench/results/gmm_cover_islands3_<start>.*
# Run it from a checkout that does not change while it runs (see bench/gmm_sweep.sh).
#   nohup bash bench/gmm_cover.sh > logs/gmm_cover.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2}"
python bench/gmm_table.py --teachers islands3 --seeds $SEEDS --workers 2 --runs runs/gmm_cover/denoiser \
    --out bench/results/gmm_cover_islands3_denoiser network.flow_fit_steps=0 objective.regression_weight=0 \
    data.num_steps=18
python bench/gmm_table.py --teachers islands3 --seeds $SEEDS --baseline --workers 2 --runs runs/gmm_cover/flow \
    --out bench/results/gmm_cover_islands3_flow network.warm_start_cache=runs/warm_start_cache
