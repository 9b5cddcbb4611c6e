#!/usr/bin/env bash
# The quality table of README "Results" (bench/gmm_table.py), one teacher at a time so that each teacher's table lands
# as soon as it is done; every run resumes (a finished run is reused), warm starts are shared through a cache.
#   nohup bash bench/gmm_sweep.sh > logs/gmm_sweep.log 2>&1 &
# Run it from a checkout that does not change while it runs (e.g. `git worktree add ../sweep HEAD`, with `runs`
# linked): every run is a new `python train.py` of the tree it starts in. A finished run is reused when its config
# has every override word, and bench/gmm_table.py states the teacher-dependent defaults (sampler levels, regression
# term) and the warm start's Adam betas as words of every run, so a run made under another recipe is trained again,
# never reused. RUNS and OUT choose the folders, EXTRA adds overrides. The default recipe's table (since the warm
# start became 750 steps per mode on the evening of 2026-12-05) is in runs/gmm_table_ws750; the recipes before it,
# recorded in bench/results/: gmm_table_ws099_<teacher>.json (EXTRA="network.flow_fit_per_mode=375",
# RUNS=runs/gmm_table_ws099), gmm_table_r1b_<teacher>.json (EXTRA="network.flow_fit_betas=[0.9,0.999]") and
# gmm_table_<teacher>.json (EXTRA="objective.regression_weight=0 data.num_steps=18
# network.flow_fit_betas=[0.9,0.999]"). BASELINE=0 leaves out the regression ceiling (task=regress).
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2 3 4}"
FIRST_SEEDS="${FIRST_SEEDS:-0 1 2}"
TEACHERS="${TEACHERS:-ring8 grid25 gmm16d blobs6 aniso8d ring8*4}"
RUNS="${RUNS:-runs/gmm_table_ws750}"
OUT="${OUT:-bench/results/gmm_table_ws750}"
EXTRA="${EXTRA:-}"
BASELINE="${BASELINE:-1}"
WORKERS="${WORKERS:-2}"   # training processes at a time (1 leaves a core for another sweep)
BASE=$([ "$BASELINE" = 0 ] || echo "--baseline --baseline-seeds $FIRST_SEEDS")
table() {  # $1 teacher, $2 student seeds; the regression ceiling on the first seeds
  python bench/gmm_table.py --teachers "$1" --seeds $2 $BASE --workers "$WORKERS" \
      --runs "$RUNS" --out "${OUT}_${1/\*/x}" network.warm_start_cache=runs/warm_start_cache $EXTRA
}
# first pass: the first seeds of every teacher (a table for each early), then every seed
for t in $TEACHERS; do table "$t" "$FIRST_SEEDS"; done
for t in $TEACHERS; do table "$t" "$SEEDS"; done
# every teacher in one table (reuses every run)
python bench/gmm_table.py --teachers $TEACHERS --seeds $SEEDS $BASE --workers 2 \
    --runs "$RUNS" --out "$OUT" network.warm_start_cache=runs/warm_start_cache $EXTRA
