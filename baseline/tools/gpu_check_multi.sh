#!/usr/bin/env bash
# Issue 8's multi-GPU measurements on one node, in one call: data-parallel weak scaling of megabert-base through
# the trainer's DeepSpeed engine, megabert-large at TP 1/2/4 (throughput, memory, first losses), and the README's
# one-node command for a short run. Uses every GPU that `nvidia-smi -L` lists.
#
#   tools/gpu_check_multi.sh [SECTION ...]   sections: dp tp readme (default: all three, in that order)
#
#   dp      torchrun --nproc_per_node N tools/bench_dp_scaling.py, N = 1, 2, 4, ... up to the GPU count (ZeRO-1
#           and ZeRO-2, bf16, seq 128, per-GPU micro-batch of configs/base.json): real tokens/s, efficiency.
#   tp      torchrun --nproc_per_node <all GPUs> tools/bench_tp_scaling.py --model large --tp 1 2 4 --check on the
#           sample corpus: tokens/s, peak memory, fp32 equivalence, bf16 losses of the first 10 steps per TP size.
#   readme  deepspeed --num_gpus <all GPUs> pretrain_bert.py --config configs/large.json, as README.md has it,
#           plus a short schedule (README_STEPS, default 50 x GPUs, at most 300) and its own output directory.
#
# DeepSpeed comes from the wheels in .whl/ (../shared/gpu/fetch_wheels.sh makes them), installed into /tmp/site.
# Nothing is JIT-compiled: the optimizer is torch's fused Adam (no DeepSpeed FusedAdam) and the CUDA accelerator
# has no shared-memory comm op to build; Triton kernels compile on their first call (cached for later sections).
# Logs and JSON go to $OUT (the device machine's output folder; at most 8 files) or ./gpu_logs. Each section has
# its own time limit, and every limit is cut to what is left of TOTAL_SECONDS (default 540), so a slow section
# cannot cost the summary. Knobs: DP_SIZES, DP_ARGS, TP_SIZES, TP_ARGS, README_STEPS, TOTAL_SECONDS.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
START=$SECONDS
TOTAL_SECONDS=${TOTAL_SECONDS:-540}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# NVLink multicast stays off: a program using it can take the host's shared GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # "9.0a" breaks DeepSpeed's op builder
OUT="${OUT:-$PWD/gpu_logs}"
mkdir -p "$OUT"
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(dp tp readme)
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$NGPU" -lt 1 ]; then echo "no GPU found by nvidia-smi -L"; exit 1; fi
DP_SIZES=${DP_SIZES:-$(n=1; while [ $n -lt "$NGPU" ]; do printf '%s ' $n; n=$((n * 2)); done; echo "$NGPU")}
TP_SIZES=${TP_SIZES:-$(for t in 1 2 4; do [ $((NGPU % t)) -eq 0 ] && printf '%s ' $t; done)}
README_STEPS=${README_STEPS:-$((50 * NGPU > 300 ? 300 : 50 * NGPU))}
SUMMARY_RESERVE=20  # seconds kept for the summary

run() {  # run LOG SECONDS CMD...: append the output to $OUT/LOG.log, within what is left of TOTAL_SECONDS
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL_SECONDS - SUMMARY_RESERVE - (SECONDS - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "=== $name skipped: ${left}s left of TOTAL_SECONDS=$TOTAL_SECONDS" | tee -a "$OUT/$name.log"
    return 1
  fi
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$OUT/$name.log"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local status=${PIPESTATUS[0]}
  echo "=== $name exit $status after $((SECONDS - START))s in all" | tee -a "$OUT/$name.log"
  return "$status"
}

{ date -u
  nvidia-smi
  nvidia-smi topo -m
  echo "GPUs: $NGPU; DP sizes: $DP_SIZES; TP sizes: $TP_SIZES; README steps: $README_STEPS; sections: ${SECTIONS[*]}"
  env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_)' | sort
  if ! python3 -c "import deepspeed" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  fi
} 2>&1 | tee "$OUT/env.log"
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH" PATH="/tmp/site/bin:$PATH"
# The sample corpus every section trains on, preprocessed once here rather than by racing ranks.
python3 - <<'EOF' 2>&1 | tee -a "$OUT/env.log"
import sys
sys.path.insert(0, "tools")
import torch, deepspeed, triton
from bench_trainer import ensure_sample_data
from megabert.config import load_config
for config in ("configs/base.json", "configs/large.json"):
    ensure_sample_data(load_config(config))
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "deepspeed",
      deepspeed.__version__, "nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else None)
EOF

for section in "${SECTIONS[@]}"; do
  case $section in
    dp)
      for n in $DP_SIZES; do
        # shellcheck disable=SC2086  # DP_ARGS: extra arguments, split on spaces
        run dp 150 torchrun --standalone --nproc_per_node "$n" tools/bench_dp_scaling.py --config configs/base.json \
          --zero-stages 1 2 --json-out "$OUT/dp_scaling.jsonl" ${DP_ARGS:-}
      done ;;
    tp)
      # shellcheck disable=SC2086
      run tp 150 torchrun --standalone --nproc_per_node "$NGPU" tools/bench_tp_scaling.py --model large \
        --tp $TP_SIZES --batch-per-gpu 64 --data-config configs/large.json --check \
        --json-out "$OUT/tp_scaling.json" ${TP_ARGS:-} ;;
    readme)
      rm -rf runs/readme_check  # this script's own run directory: start from step 0 on a reused machine
      run readme 330 deepspeed --num_gpus "$NGPU" pretrain_bert.py --config configs/large.json \
        --schedule.total_steps "$README_STEPS" --logging.log_interval 10 \
        --output_dir runs/readme_check --checkpoint.dir runs/readme_check/checkpoints
      cp runs/readme_check/metrics.jsonl "$OUT/readme_metrics.jsonl" 2>/dev/null ;;
    *) echo "unknown section $section (dp tp readme)"; exit 2 ;;
  esac
done

{ echo "## Summary ($(date -u '+%Y-%m-%d %H:%M UTC'), $NGPU GPUs, $((SECONDS - START)) s)"
  if [ -f "$OUT/dp_scaling.jsonl" ]; then
    echo; echo "### Data-parallel weak scaling (configs/base.json; overrides in dp.log)"
    python3 tools/bench_dp_scaling.py --summarize "$OUT/dp_scaling.jsonl"
  fi
  if [ -f "$OUT/tp_scaling.json" ]; then
    echo; echo "### Tensor parallel (megabert-large)"
    python3 tools/bench_tp_scaling.py --summarize "$OUT/tp_scaling.json"
  fi
  if [ -f "$OUT/readme_metrics.jsonl" ]; then
    echo; echo "### README command (deepspeed --num_gpus $NGPU pretrain_bert.py --config configs/large.json)"
    python3 - "$OUT/readme_metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
train = [r for r in rows if "train/loss" in r]
for r in train[:1] + train[-1:]:
    print(f"step {r['step']}: loss {r['train/loss']:.3f}, {r['train/tokens_per_s']:,.0f} real tokens/s, "
          f"MFU {100 * r['train/mfu']:.1f}%")
final = next((r for r in reversed(rows) if "final/run_tokens_per_s" in r), None)
if final:
    print(f"run: {final['final/run_tokens_per_s']:,.0f} real tokens/s end to end, MFU "
          f"{100 * final['final/run_mfu']:.1f}%, eval loss {final.get('final/eval_loss', float('nan')):.3f}")
EOF
  fi
} 2>&1 | tee "$OUT/summary.md"
