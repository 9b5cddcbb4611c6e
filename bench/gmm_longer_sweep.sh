#!/usr/bin/env bash
# Issue 23, "longer never hurts": 1x and 4x the recipe's distillation steps, 3 seeds, fkl / JS / rkl, on ring8, grid25
# and gmm16d, for both fake-score starts (network.fake_score residual = the default, MATH R2; copy = the MLP fitted to
# the teacher). Resumable (bench/gmm_table.py reuses finished runs); one result set per teacher and fake score:
# bench/results/gmm_longer_<teacher>_<fake>.{json,png}. ~8 min per 4x run on one core: ~2.5 h per divergence on 2
# cores for all six sets. Run it from a checkout that does not change while it runs (see bench/gmm_sweep.sh).
#   nohup bash bench/gmm_longer_sweep.sh > logs/gmm_longer_sweep.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
TEACHERS="${TEACHERS:-ring8 grid25 gmm16d}"
DIVERGENCES="${DIVERGENCES:-fkl js rkl}"
for div in $DIVERGENCES; do
  for t in $TEACHERS; do
    for fake in residual copy; do
      base=$([ "$fake" = residual ] || echo --no-baseline)
      python bench/gmm_longer.py --teacher "$t" --objectives "fdistill:$div" --seeds 0 1 2 --multiples 1 4 $base \
          --runs "runs/gmm_longer/$fake" --out "bench/results/gmm_longer_${t}_${fake}_${div}" \
          "network.fake_score=$fake" network.warm_start_cache=runs/warm_start_cache
    done
  done
done
