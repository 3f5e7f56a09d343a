#!/usr/bin/env bash
# GPU call B: DeepSpeed engine variants against the plain step; pretrain_bert.py before (baseline/) and after, alternating.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0
date -u > $OUT/env.log
if [ ! -f data/sample/c4_sample_text_document.idx ]; then
  python3 tools/preprocess_data.py --input data/sample/c4-train.00000-of-00001.json.gz --output-prefix data/sample/c4_sample \
    --tokenizer-type BertWordPieceLowerCase --vocab-file data/sample/vocab.txt --workers 8 > $OUT/preprocess.log 2>&1
fi
cp data/sample/c4_sample_text_document.* baseline/data/sample/
echo "engine $(date -u +%T)"
timeout 200 python3 -m benchmarks.engine_overhead --rounds 3 --json-out $OUT/engine_overhead.json > $OUT/engine_overhead.log 2>&1
echo "engine exit $? $(date -u +%T)"
train() {  # tree label
  (cd "$1" && PYTHONPATH=/tmp/site:$PWD timeout 110 python3 pretrain_bert.py --config configs/base.json --global_batch_size 1024 \
     --schedule.total_steps 120 --logging.log_interval 10 --logging.eval_interval 0 --checkpoint.save_interval 60 \
     --checkpoint.keep_last 1 --output_dir /tmp/run_$2 --checkpoint.dir /tmp/run_$2/ckpt --checkpoint.resume none > $OUT/train_$2.log 2>&1)
  echo "train $2 exit $? $(date -u +%T): $(grep -o '"final/loop_tokens_per_s": [0-9.]*' /tmp/run_$2/metrics.jsonl)"
}
train baseline old1; train . new1; train baseline old2; train . new2
