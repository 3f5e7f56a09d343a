#!/usr/bin/env bash
# GPU call A: DeepSpeed engine variants against the plain step; the trainer before (baseline/) and after the redesign.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv
  python3 -c 'import torch, triton, transformers, deepspeed; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)'; } > $OUT/env.log 2>&1
python3 tools/preprocess_data.py --input data/sample/c4-train.00000-of-00001.json.gz --output-prefix data/sample/c4_sample \
  --tokenizer-type BertWordPieceLowerCase --vocab-file data/sample/vocab.txt --workers 8 > $OUT/preprocess.log 2>&1
cp data/sample/c4_sample_text_document.* baseline/data/sample/
echo "engine $(date -u +%T)"
timeout 210 python3 -m benchmarks.engine_overhead --rounds 4 --json-out $OUT/engine_overhead.json > $OUT/engine_overhead.log 2>&1
echo "engine exit $? $(date -u +%T)"
timeout 170 python3 -m benchmarks.trainer --config configs/base.json --steps 100 --global_batch_size 1024 --engine-step > $OUT/trainer_new.log 2>&1
echo "trainer new exit $? $(date -u +%T)"
cp runs/bench_trainer/base/bench_trainer.json $OUT/trainer_new.json
cd baseline && PYTHONPATH=/tmp/site:$PWD timeout 170 python3 tools/bench_trainer.py --config configs/base.json --steps 100 \
  --global_batch_size 1024 --interleave --bare-steps 30 --short-steps 10 > $OUT/trainer_old.log 2>&1
echo "trainer old exit $? $(date -u +%T)"
