#!/usr/bin/env bash
# Stage the inputs of `bench/h100.sh decay` in .device_in/ (git-ignored through .git/info/exclude; carried by the
# device call): the teacher and, per seed, the run folder of a data-free student with only its latest checkpoint and
# its teacher pool (what resume=latest needs). STEP=N stages checkpoint step-N instead of the latest; APPEND=1 adds to
# what is staged (seeds from several run folders).
#   [STEP=N] [APPEND=1] bash bench/digits_stage_decay.sh RUNS_DIR TEACHER_DIR [SEEDS...]
#   e.g. bash bench/digits_stage_decay.sh runs/pilot_fu5_ema998/runs runs/digits_teacher_curve_s16/teachers/step-010000 0 1
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$1; TEACHER=$2; shift 2
grep -qx '/.device_in/' .git/info/exclude 2>/dev/null || echo '/.device_in/' >> .git/info/exclude
[ "${APPEND:-0}" = 1 ] || rm -rf .device_in
mkdir -p .device_in/runs
[ -d .device_in/teacher ] || cp -r "$TEACHER" .device_in/teacher
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(0 1)
for seed in "${seeds[@]}"; do
  src=$RUNS/datafree-fkl-s$seed dst=.device_in/runs/datafree-fkl-s$seed
  if [ -n "${STEP:-}" ]; then last=$src/checkpoints/step-$STEP; else
    last=$(ls -d "$src"/checkpoints/step-* | sort -t- -k2 -n | tail -n 1); fi
  [ -d "$last" ] || { echo "no checkpoint $last"; exit 1; }
  rm -rf "$dst"; mkdir -p "$dst/checkpoints"
  cp -r "$last" "$dst/checkpoints/"
  cp "$src/teacher_pool.pt" "$src/config.yaml" "$dst/"
done
du -sh .device_in
