#!/usr/bin/env bash
# The quality table of README "Results" (bench/gmm_table.py), one teacher at a time so that each teacher's table lands
# as soon as it is done; every run resumes (a finished run is reused), warm starts are shared through a cache.
#   nohup bash bench/gmm_sweep.sh > logs/gmm_sweep.log 2>&1 &
# Run it from a checkout that does not change while it runs (e.g. `git worktree add ../sweep HEAD`, with `runs`
# linked): every run is a new `python train.py` of the tree it starts in. A finished run is reused when its override
# words match, whatever the code's defaults were: after a recipe change, use a new RUNS folder.
# RUNS and OUT choose the folders (e.g. RUNS=runs/gmm_table_reg OUT=bench/results/gmm_table_reg with
# EXTRA=objective.regression_weight=0.7); the regression ceiling's runs are then linked from runs/gmm_table.
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2 3 4}"
FIRST_SEEDS="${FIRST_SEEDS:-0 1 2}"
TEACHERS="${TEACHERS:-ring8 grid25 gmm16d blobs6 aniso8d ring8*4}"
RUNS="${RUNS:-runs/gmm_table}"
OUT="${OUT:-bench/results/gmm_table}"
EXTRA="${EXTRA:-}"
# BASELINE=0: no ceiling runs (an EXTRA that changes them, e.g. data.num_steps, would not match the linked ones), e.g.
#   BASELINE=0 RUNS=runs/gmm_table_r1b OUT=bench/results/gmm_table_r1b \
#   EXTRA="objective.regression_weight=0.7 objective.regression_sigma=1 data.num_steps=70" bash bench/gmm_sweep.sh
BASELINE="${BASELINE:-1}"
BASE=$([ "$BASELINE" = 0 ] || echo "--baseline --baseline-seeds $FIRST_SEEDS")
table() {  # $1 teacher, $2 student seeds; the regression ceiling on the first seeds
  python bench/gmm_table.py --teachers "$1" --seeds $2 $BASE --workers 2 \
      --runs "$RUNS" --out "${OUT}_${1/\*/x}" network.warm_start_cache=runs/warm_start_cache $EXTRA
}
# the regression ceiling (task=regress) does not depend on the distillation recipe: reuse its runs from runs/gmm_table
for t in $TEACHERS; do
  d="${t/\*/x}"
  for old in runs/gmm_table/"$d"/regress-s*; do
    new="$RUNS/$d/$(basename "$old")"
    [ "$BASELINE" != 0 ] && [ -d "$old" ] && [ "$RUNS" != runs/gmm_table ] && [ ! -e "$new" ] && mkdir -p "$RUNS/$d" && ln -s "$(realpath "$old")" "$new"
  done
done
# first pass: the first seeds of every teacher (a table for each early), then every seed
for t in $TEACHERS; do table "$t" "$FIRST_SEEDS"; done
for t in $TEACHERS; do table "$t" "$SEEDS"; done
# every teacher in one table (reuses every run)
python bench/gmm_table.py --teachers $TEACHERS --seeds $SEEDS $BASE --workers 2 \
    --runs "$RUNS" --out "$OUT" network.warm_start_cache=runs/warm_start_cache $EXTRA
