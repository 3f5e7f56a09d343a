#!/usr/bin/env bash
# One GPU check for megabert: GPU tests, attention and training-throughput benchmarks (eager and compiled steps
# against Hugging Face + torch.compile), the trainer and its DeepSpeed engine step against the plain step, and the
# tensor-parallel code path's overhead at TP = 1.
#
#   benchmarks/gpu_check.sh [SECTION ...]   sections: tests attention fused compiled pooled host base profile
#                                           ablation large trainer checkpoint tp
#                                      (default: all but compiled, pooled, host, trainer, checkpoint and tp)
#
# `pooled` is one fresh machine's run for the floors' medians: the compiled step against HF + torch.compile, base
# and large, to $OUT/compiled_pooled.json; run it with `trainer` on each of three fresh machines, then pool the
# files with `python -m benchmarks.pool_runs` and the trainer's with `python -m benchmarks.trainer_ratio`.
#
# The trainer and checkpoint sections need DeepSpeed: with wheels in .whl/ (../shared/gpu/fetch_wheels.sh makes them) they are
# installed into /tmp/site first. The trainer section times the plain step (megabert + fused AdamW, no engine)
# between the trainer's log windows (the ratio's reference) and the trainer's engine step on in-memory batches
# beside it (~4 minutes at the default 200 steps). TRAINER_STEPS and TRAINER_GLOBAL_BATCH size it; TRAINER_EXTRA
# adds benchmarks/trainer.py arguments (shell words); nvidia-smi dmon logs clocks and power beside it.
#
# Logs go to $OUT (the device machine's output folder) or ./gpu_logs. Sized to finish in ~8 minutes on one
# H200; each section has its own time limit so one slow part cannot eat the others. Environment knobs for a shorter
# run: BASE_SYSTEMS, LARGE_DISTS, ABLATION_DISTS (space-separated lists).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu_logs}"
mkdir -p "$OUT"
SECTIONS=("$@")
BASE_SYSTEMS=${BASE_SYSTEMS:-megabert megabert-compile hf-sdpa hf-eager hf-compile}
LARGE_DISTS=${LARGE_DISTS:-c4-128 c4-512}
ABLATION_DISTS=${ABLATION_DISTS:-c4-128 c4-512}
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(tests attention fused base profile ablation large)

run() {  # run NAME SECONDS CMD...: tee the output to $OUT/NAME.log, report the exit status
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name exit ${PIPESTATUS[0]}"
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/env.log"

need_deepspeed() {  # DeepSpeed from the wheels in .whl/ when the image lacks it
  if ! python3 -c "import deepspeed" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH" PATH="/tmp/site/bin:$PATH"
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # "9.0a" breaks DeepSpeed's op builder
}

for section in "${SECTIONS[@]}"; do
  case $section in
    tests) run gpu_tests 300 python3 -m pytest -q -m gpu tests/ops tests/model tests/hf tests/benchmarks -p no:cacheprovider ;;
    attention) run bench_attention 90 python3 -m benchmarks.attention ;;
    fused) run bench_fused_ops 90 python3 -m benchmarks.fused_ops ;;
    base) run bench_throughput_base 230 python3 -m benchmarks.throughput --models base \
            --dists c4-128 c4-512 --systems $BASE_SYSTEMS --warmup 3 --steps 15 ;;
    compiled) run compiled_step 480 python3 -m benchmarks.compiled_step --json-out "$OUT/compiled_step.json" ;;
    pooled) run compiled_pooled 480 python3 -m benchmarks.compiled_step --models base large --no-checks \
              --systems megabert-compiled hf-compile --budget-s 460 --json-out "$OUT/compiled_pooled.json" ;;
    host) run host_time 200 python3 -m benchmarks.host_time --systems megabert-compiled hf-compile \
            --dists c4-128 c4-512 ;;
    profile) run bench_profile 40 python3 -m benchmarks.step_profile --model base --dists c4-128 ;;
    ablation) run bench_ablation 120 python3 -m benchmarks.throughput --models base --systems \
                --ablation --ablation-dists $ABLATION_DISTS --warmup 2 --steps 10 ;;
    large) run bench_throughput_large 90 python3 -m benchmarks.throughput --models large \
             --dists $LARGE_DISTS --systems megabert hf-sdpa --warmup 3 --steps 15 ;;
    trainer)
      need_deepspeed
      nvidia-smi dmon -s pc -d 1 -o T > "$OUT/dmon.log" 2>&1 &  # clocks and power beside the run
      dmon=$!
      eval "extra=(${TRAINER_EXTRA:-})"  # shell words: quote arguments with spaces
      run bench_trainer 575 python3 -m benchmarks.trainer --config configs/base.json \
        --steps "${TRAINER_STEPS:-200}" --global_batch_size "${TRAINER_GLOBAL_BATCH:-1024}" --engine-step \
        "${extra[@]}"
      cp runs/bench_trainer/base/bench_trainer.json "$OUT/" 2>/dev/null
      kill $dmon 2>/dev/null ;;
    checkpoint)
      need_deepspeed
      run bench_checkpoint 220 python3 -m benchmarks.checkpoint --config configs/base.json \
        --global_batch_size "${TRAINER_GLOBAL_BATCH:-1024}" --rounds "${CHECKPOINT_ROUNDS:-3}" ;;
    tp) run bench_tp_overhead 90 python3 -m benchmarks.tp_overhead --json-out "$OUT/tp_overhead.json" ;;
    *) echo "unknown section $section (tests attention fused compiled pooled host base profile ablation large trainer" \
            "checkpoint tp)"
       exit 2 ;;
  esac
done
