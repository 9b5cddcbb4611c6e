#!/usr/bin/env bash
# The quality table of README "Results" (bench/gmm_table.py), one teacher at a time so that each teacher's table lands
# as soon as it is done; every run resumes (a finished run is reused), warm starts are shared through a cache.
#   nohup bash bench/gmm_sweep.sh > logs/gmm_sweep.log 2>&1 &
# Run it from a checkout that does not change while it runs (e.g. `git worktree add ../sweep HEAD`, with `runs`
# linked): every run is a new `python train.py` of the tree it starts in.
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2 3 4}"
FIRST_SEEDS="${FIRST_SEEDS:-0 1 2}"
TEACHERS="${TEACHERS:-ring8 grid25 gmm16d blobs6 aniso8d ring8*4}"
table() {  # $1 teacher, $2 student seeds; the regression ceiling on the first seeds
  python bench/gmm_table.py --teachers "$1" --seeds $2 --baseline --baseline-seeds $FIRST_SEEDS --workers 2 \
      --out "bench/results/gmm_table_${1/\*/x}" network.warm_start_cache=runs/warm_start_cache
}
# first pass: the first seeds of every teacher (a table for each early), then every seed
for t in $TEACHERS; do table "$t" "$FIRST_SEEDS"; done
for t in $TEACHERS; do table "$t" "$SEEDS"; done
# every teacher in one table (reuses every run)
python bench/gmm_table.py --teachers $TEACHERS --seeds $SEEDS --baseline --baseline-seeds $FIRST_SEEDS --workers 2 \
    --out bench/results/gmm_table network.warm_start_cache=runs/warm_start_cache
