#!/usr/bin/env bash
# Issue 23, "longer never hurts": the recipe (configs/gmm2d.yaml with the mixture defaults; EXTRA adds overrides, with
# RUNS and OUT_TAG to keep another recipe's runs and results apart) at 1x, 2x
# and 4x its distillation steps (MULTIPLES), 3 seeds, on ring8, grid25 and gmm16d, for forward KL, reverse KL and JS,
# in that order of priority (the first pair of each teacher also runs the probability-flow regression ceiling).
# Resumable (bench/gmm_table.py reuses finished runs); one result set per teacher and divergence:
# bench/results/gmm_longer_<teacher>_<div>.{json,png,_x1.*,_x2.*,_x4.*}. About 45 core-minutes per pair on ring8 (a 4x
# run is ~8 min on one core), more on grid25 and gmm16d. Run it from a checkout that does not change while it runs
# (see bench/gmm_sweep.sh).
#   nohup bash bench/gmm_longer_sweep.sh > logs/gmm_longer_sweep.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
EXTRA="${EXTRA:-}"
RUNS="${RUNS:-runs/gmm_longer/lrb}"  # today's recipe (750 warm-start steps per mode, the generator's rate budget
OUT_TAG="${OUT_TAG:-_lrb}"            # train.lr_budget_steps: a mixture teacher's default 500, 2026-12-06); the recipes before:
#   EXTRA="train.lr_budget_steps=0" RUNS=runs/gmm_longer/ws750 OUT_TAG=_ws750    (every length at the full rate)
#   EXTRA="train.lr_budget_steps=0 network.flow_fit_per_mode=375" RUNS=runs/gmm_longer/ws099 OUT_TAG=_ws099
#   EXTRA="train.lr_budget_steps=0 network.flow_fit_per_mode=375 network.flow_fit_betas=[0.9,0.999]" \
#   RUNS=runs/gmm_longer/r1b OUT_TAG=_r1b
#   EXTRA="train.lr_budget_steps=0 objective.regression_weight=0 data.num_steps=18 network.flow_fit_per_mode=375 network.flow_fit_betas=[0.9,0.999]" \
#   RUNS=runs/gmm_longer/residual OUT_TAG=""
BASELINE="${BASELINE:-1}" # 0: no regression-ceiling runs
MULTIPLES="${MULTIPLES:-1 2 4}" # distillation lengths, in multiples of the recipe's train.steps
WORKERS="${WORKERS:-2}"   # training processes at a time (1 leaves a core for other work)
PAIRS="${PAIRS:-ring8:fkl ring8:rkl grid25:fkl gmm16d:fkl ring8:js grid25:rkl gmm16d:rkl grid25:js gmm16d:js}"
declare -A seen
for pair in $PAIRS; do
  t="${pair%%:*}"; div="${pair#*:}"
  base=$([ -z "${seen[$t]:-}" ] && [ "$BASELINE" != 0 ] || echo --no-baseline); seen[$t]=1
  python bench/gmm_longer.py --teacher "$t" --objectives "fdistill:$div" --seeds 0 1 2 --multiples $MULTIPLES $base --workers "$WORKERS" \
      --runs "$RUNS" --out "bench/results/gmm_longer_${t}_${div}${OUT_TAG}" \
      network.fake_score=residual network.warm_start_cache=runs/warm_start_cache $EXTRA
done
