#!/usr/bin/env bash
# The quality table of README "Results" (bench/gmm_table.py), one teacher at a time so that each teacher's table lands
# as soon as it is done; every run resumes (a finished run is reused), warm starts are shared through a cache.
#   nohup bash bench/gmm_sweep.sh > logs/gmm_sweep.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2 3 4}"
TEACHERS="${TEACHERS:-ring8 grid25 gmm16d blobs6 aniso8d ring8*4}"
# first pass: the first three seeds of every teacher (a table for each early), then every seed
for seeds in "${FIRST_SEEDS:-0 1 2}" "$SEEDS"; do
  for t in $TEACHERS; do
    python bench/gmm_table.py --teachers "$t" --seeds $seeds --baseline --workers 2 \
        --out "bench/results/gmm_table_${t/\*/x}" network.warm_start_cache=runs/warm_start_cache
  done
done
# every teacher in one table (reuses every run)
python bench/gmm_table.py --teachers $TEACHERS --seeds $SEEDS --baseline --workers 2 --out bench/results/gmm_table \
    network.warm_start_cache=runs/warm_start_cache
