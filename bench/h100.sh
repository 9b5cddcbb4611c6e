#!/usr/bin/env bash
# The GPU benchmark runs of bench/README.md, grouped so that each part fits one device-tool call (< 10 minutes):
#
#   BENCH_GIT_COMMIT=<sha> bash bench/h100.sh PART      # PART: perf | big | digits | next | env
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
      'accelerate', accelerate.__version__, torch.cuda.get_device_name(0))"
}

stamp "install"
install_wheels || { echo "wheel install / import failed"; exit 1; }
nvidia-smi -L

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
  *) echo "unknown part ${1}; valid: env perf big digits next"; exit 2 ;;
esac
stamp "done"
