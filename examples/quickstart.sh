#!/usr/bin/env bash
# The main job, on a fresh machine: install, preprocess the bundled sample corpus, pretrain the tiny MosaicBERT
# for 500 steps (about 4 minutes on 2 idle CPU cores; a GPU is used when present), show the masked-LM loss falling on
# the training and validation splits, export the final checkpoint to a plain model directory, and fine-tune that
# model on the bundled GLUE-format sample (all eight tasks, ~15 s; synthetic data that only shows the plumbing).
#
#   bash examples/quickstart.sh                 # outputs under runs/quickstart (recreated on every call)
#   bash examples/quickstart.sh --optim.lr 1e-3 # extra arguments are config overrides for pretrain_bert.py
#   SKIP_INSTALL=1 bash examples/quickstart.sh  # megabert is installed already
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/quickstart

echo "== 1/5 install"
[ "${SKIP_INSTALL:-0}" = 1 ] || bash tools/install.sh

echo "== 2/5 preprocess the bundled sample corpus (data/sample, Debian documentation, C4 JSON-lines layout)"
if [ ! -f data/sample/c4_sample_text_document.idx ]; then
  python3 tools/preprocess_data.py --input data/sample/c4-train.00000-of-00001.json.gz \
    --output-prefix data/sample/c4_sample --tokenizer-type BertWordPieceLowerCase \
    --vocab-file data/sample/vocab.txt --workers 2
fi

echo "== 3/5 pretrain configs/tiny.json (log: $RUN/metrics.jsonl, TensorBoard: $RUN/tensorboard)"
rm -rf "$RUN"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
python3 pretrain_bert.py --config configs/tiny.json --output_dir "$RUN" \
  --checkpoint.resume none "$@"

echo "== 4/5 results"
python3 - "$RUN" <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
valid = [(r["step"], r["eval/loss"], r["eval/accuracy"]) for r in records if "eval/loss" in r]
print("train MLM loss:     " + "  ".join(f"{s}:{l:.2f}" for s, l in train))
print("validation MLM loss (accuracy at 15% masking): "
      + "  ".join(f"{s}:{l:.2f} ({100 * a:.1f}%)" for s, l, a in valid))
if not (train[-1][1] < train[0][1] - 0.5 and valid[-1][1] < valid[0][1]):
    sys.exit("the loss did not fall: something is wrong")
ckpt = (run / "checkpoints" / "latest").read_text().strip()
print(f"checkpoint: {run / 'checkpoints' / ckpt}    exported model: {run / 'model'}")
PY

# The trainer exported the final checkpoint already; the same export by hand (any checkpoint, offline):
python3 -m megabert.checkpoint.export "$RUN/checkpoints" "$RUN/model"
python3 - "$RUN/model" <<'PY'
import sys
import torch
from megabert.config import load_config
from megabert.data import build_tokenizer
from megabert.model.bert import MosaicBertForMaskedLM
from megabert.model.pretrained import load_model_config, load_state_dict

model = MosaicBertForMaskedLM(load_model_config(sys.argv[1]))
model.load_state_dict(load_state_dict(sys.argv[1]))
model.eval()
tok = build_tokenizer(load_config("configs/tiny.json").data)
words = tok.encode("install the package with apt and then run the program")
ids = torch.tensor([[tok.cls_id, *words, tok.sep_id]])
ids[0, 2] = tok.mask_id  # "install [MASK] package ..."
with torch.no_grad():
    logits = model(ids, torch.ones_like(ids)).logits[0, 2]
print("fill-mask 'install [MASK] package with apt ...':", [tok.id_to_token(i) for i in logits.topk(5).indices.tolist()])
PY

echo "== 5/5 fine-tune the exported model on the bundled GLUE-format sample (data/glue_sample)"
python3 tools/run_glue.py --model "$RUN/model" --glue-dir data/glue_sample --output "$RUN/glue" --seeds 1 \
  --epochs 2 --seq-len 192 --lr 1e-3
