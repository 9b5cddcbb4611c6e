#!/usr/bin/env bash
# The GPU benchmark runs of bench/README.md, grouped so that each part fits one device-tool call (< 10 minutes):
#
#   BENCH_GIT_COMMIT=<sha> bash bench/h100.sh PART      # PART: perf | big | digits | next | decay | pool | env
#
# Runs from the repository root on the device machine with the wheels of ../shared/device/fetch-wheels.sh carried in
# .whl/ (and, only if diffusers does not import with the machine's own huggingface_hub, .whl_extra/). Everything is
# written to $OUT (the device tool's return folder; default bench/results/raw): JSON per script plus one log.txt.
# Each script runs under its own `timeout`, so one that hangs or overruns does not take the others' results with it.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/raw}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
stamp() { echo "== $(date -u +%T) $*"; }

install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  if ! python3 -c "import diffusers, omegaconf, cleanfid, transformers" 2>/dev/null; then
    echo "diffusers does not import with the machine's packages; adding .whl_extra/"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_extra/*.whl || return 1
  fi
  python3 -c "import diffusers, omegaconf, cleanfid, transformers, accelerate, torch
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__,
      'accelerate', accelerate.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
}

stamp "install"
install_wheels || { echo "wheel install / import failed"; exit 1; }
nvidia-smi -L

# The digits continuation parts (decay, pool): students staged in $IN (bench/digits_stage_decay.sh) resumed on the
# device; `probe NAME SEED STEPS... overrides` launches train.py once per step count and keeps the exports after each
# (snap/step-N/), then tars the run as $OUT/<part>_NAME.tar for bench/digits_score_exports.py.
continuation_setup() {  # PART DEFAULT_LIMIT_MIN
  PART=$1; IN=${IN:-.device_in}; W=/tmp/$1; LIMIT=${LIMIT:-$2}; mkdir -p "$W"
  common=(--config configs/digits.yaml "teacher.path=$PWD/$IN/teacher" data.kind=teacher objective.name=fdistill
          objective.divergence=fkl train.batch_size=64 train.lr=2e-5 train.fake_updates=5
          "train.ema=[0.998,0.995,0.99]" data.pool_size=4096 log.progress=false "log.trackers=[]" resume=latest
          train.sample_every=100000 train.checkpoint_every=100000 ${EXTRA:-})
}
keep() { mkdir -p "$W/$1/snap/step-$2"; cp -r "$W/$1"/generator* "$W/$1/snap/step-$2/"; }
probe() {
  local name=$1 seed=$2; shift 2; local steps=(); while [[ ${1:-} =~ ^[0-9]+$ ]]; do steps+=("$1"); shift; done
  cp -r "$IN/runs/datafree-fkl-s$seed" "$W/$name" || { echo "$name: nothing staged for seed $seed"; return; }
  local start; start=$(date +%s)
  for n in "${steps[@]}"; do  # each launch may use what is left of LIMIT minutes
    local limit; limit=$(python3 -c "print(max(0.05, round($LIMIT - ($(date +%s) - $start) / 60, 2)))")
    python3 train.py "${common[@]}" "out_dir=$W/$name" "seed=$seed" "train.steps=$n" \
      "train.time_limit_min=$limit" "$@" >> "$W/$name.log" 2>&1 || { echo "$name failed at $n"; tail -5 "$W/$name.log"; return; }
    keep "$name" "$(last_step "$W/$name")"  # the step reached: a launch stopped by its time limit ends short of $n
  done
  tar cf "$OUT/${PART}_$name.tar" -C "$W" "$name/snap" "$name/metrics.jsonl" "$name.log"
  echo "$name: step $(last_step "$W/$name"), images/s $(last_step "$W/$name" images_per_s)"
}
last_step() {  # RUN_DIR [KEY]: KEY (default step) of the run's last metrics line
  tail -n 1 "$1/metrics.jsonl" | python3 -c "import json,sys; print(round(json.loads(sys.stdin.read())['${2:-step}']))"
}

case "${1:-env}" in
  env) ;;
  perf)  # issue 8 items 1-4: distillation step + toggles + profile, sampling speed, SuperDiff cost; digits speed probe
    stamp "distill_step (f-distill JS, batch 256, toggles, profile)"
    timeout 300 python3 bench/distill_step.py --toggles bf16,channels_last,adam,sdpa,sdpa_backends,cudnn_benchmark \
      --profile --out "$OUT/distill_step.json"
    stamp "sampling_speed"
    timeout 110 python3 bench/sampling_speed.py --out "$OUT/sampling_speed.json"
    stamp "superpose_bench fp32 / bf16"
    timeout 45 python3 bench/superpose_bench.py --json "$OUT/superpose_fp32.json"
    timeout 40 python3 bench/superpose_bench.py --dtype bf16 --json "$OUT/superpose_bf16.json"
    stamp "digits speed probe (teacher 300 steps, student 100 steps)"
    timeout 40 python3 train.py --config configs/digits-teacher.yaml out_dir=/tmp/probe-teacher train.steps=300 \
      train.checkpoint_every=100000 train.sample_every=100000 log.progress=false && tail -n 2 /tmp/probe-teacher/metrics.jsonl
    timeout 40 python3 train.py --config configs/digits.yaml out_dir=/tmp/probe-student teacher.path=/tmp/probe-teacher/teacher \
      train.steps=100 train.checkpoint_every=100000 train.sample_every=100000 log.progress=false && tail -n 2 /tmp/probe-student/metrics.jsonl
    ;;
  big)  # issue 7 (SD1.5 at 512 px) and issue 8 items 1, 3-5: Uni-Instruct step, largest batches, profile
    stamp "superpose_bench fp32 (interleaved rounds)"
    timeout 35 python3 bench/superpose_bench.py --json "$OUT/superpose_fp32.json"
    stamp "sampling_speed bf16"
    timeout 45 python3 bench/sampling_speed.py --dtypes bf16 --batch 256 1024 --out "$OUT/sampling_speed.json"
    stamp "sd15_step (full-size random SD1.5, 512 px)"
    timeout 220 python3 bench/sd15_step.py --max-batch --search-budget 60 --workdir /tmp/sd15 --out "$OUT/sd15_step.json"
    stamp "distill_step Uni-Instruct + largest batch"
    timeout 110 python3 bench/distill_step.py --objective uni_instruct --toggles none --iters 5 --max-batch \
      --search-granularity 64 --search-limit 1024 --out "$OUT/distill_step_uni_instruct.json"
    stamp "distill_step f-distill: largest batch + profile"
    timeout 80 python3 bench/distill_step.py --toggles none --no-passes --iters 3 --max-batch --search-granularity 64 \
      --search-limit 2048 --profile --out "$OUT/distill_step_maxbatch.json"
    ;;
  digits)  # issue 4 result 2: teacher (2.5 min budget) + classifier, 4 students in parallel (3.3 min), FD-digits, grid
    stamp "digits demo"
    timeout 560 python3 bench/digits_demo.py --out "$OUT/digits" --time-limit 550 --eval-reserve 100 \
      --teacher-override train.time_limit_min=2.5 --student-override train.time_limit_min=3.3 \
      --student-override train.checkpoint_every=500
    ;;
  next)  # what the 2026-11-23 session could not measure: compile, Uni-Instruct at a batch that fits, AND after its
         # closed-form two-model solve
    stamp "superpose_bench fp32 / bf16 (3 interleaved rounds)"
    timeout 70 python3 bench/superpose_bench.py --rounds 3 --json "$OUT/superpose_fp32.json"
    timeout 70 python3 bench/superpose_bench.py --rounds 3 --dtype bf16 --json "$OUT/superpose_bf16.json"
    stamp "distill_step Uni-Instruct at batch 192 (256 does not fit)"
    timeout 90 python3 bench/distill_step.py --objective uni_instruct --batch 192 --toggles none \
      --out "$OUT/distill_step_uni_instruct_192.json"
    stamp "distill_step f-distill: torch.compile"
    timeout 300 python3 bench/distill_step.py --toggles compile --iters 5 --no-passes --out "$OUT/distill_step_compile.json"
    ;;
  decay)  # issue 24: the data-free forward-KL digits students (fake_updates 5, lr 2e-5, batch 64, EMAs 0.998 / 0.995 /
          # 0.99) continued from their CPU checkpoints at step 3200 (staged in .device_in/ by bench/digits_stage_decay.sh:
          # runs/datafree-fkl-s<seed>/ and teacher/), seeds 0 and 1: a linear decay of the rate to 0 over 3200 -> 4000
          # (train.lr_schedule=wsd), over 3200 -> 3600, and the constant rate to 3600 and 4000 (the control, on the same
          # device). Each run under train.time_limit_min; the exports come back as one tar per run, scored on the CPU
          # with bench/digits_score_exports.py. Env: LIMIT (minutes per run), SEEDS, EXTRA (further overrides).
    continuation_setup decay 6.5
    stamp "six continuations in parallel (limit $LIMIT min each)"
    pids=()  # waited for by pid: a bare `wait` also waits for the log's tee, which ends only with the script
    for seed in ${SEEDS:-0 1}; do
      probe "wsd4000-s$seed" $seed 4000 train.lr_schedule=wsd train.lr_decay_fraction=0.2 & pids+=($!)
      probe "wsd3600-s$seed" $seed 3600 train.lr_schedule=wsd "train.lr_decay_fraction=$(python3 -c 'print(400/3600)')" &
      pids+=($!)
      probe "const-s$seed" $seed 3600 4000 train.lr_schedule=constant & pids+=($!)
    done
    wait "${pids[@]}"
    ;;
  pool)  # issue 24: a larger teacher pool (data.pool_size 32768, drawn on the device, against the recipe's 4096). Two
         # groups of three at once: the students staged as for `decay` continued 3200 -> 3600 -> 4000 at the constant
         # rate (SEEDS; the 4096 control of seeds 0 / 1 is the `decay` part's const runs), and new students from scratch
         # (SCRATCH_SEEDS) trained until LIMIT minutes, whose checkpoint comes back to be continued on the CPU
         # (`train.py ... resume=latest` draws the pool there again). One tar per run. Env: LIMIT, SEEDS, SCRATCH_SEEDS.
    continuation_setup pool 7.5
    stamp "pool 32768: continuations and students from scratch in parallel (limit $LIMIT min each)"
    pids=()
    for seed in ${SEEDS-0 1 2}; do probe "pool32768-s$seed" $seed 3600 4000 data.pool_size=32768 & pids+=($!); done
    scratch() {  # SEED: a student from scratch under the time limit; its checkpoint and metrics come back
      local name=scratch32768-s$1
      python3 train.py "${common[@]}" "out_dir=$W/$name" "seed=$1" train.steps=4000 "train.time_limit_min=$LIMIT" \
        data.pool_size=32768 > "$W/$name.log" 2>&1 || { echo "$name failed"; tail -5 "$W/$name.log"; return; }
      tar cf "$OUT/pool_$name.tar" -C "$W" "$name/checkpoints" "$name/config.yaml" "$name/metrics.jsonl" "$name.log"
      echo "$name: step $(last_step "$W/$name"), images/s $(last_step "$W/$name" images_per_s)"
    }
    for seed in ${SCRATCH_SEEDS-0 1 2}; do scratch $seed & pids+=($!); done
    wait "${pids[@]}"
    ;;
  *) echo "unknown part ${1}; valid: env perf big digits next decay pool"; exit 2 ;;
esac
stamp "done"
