#!/usr/bin/env bash
# The main job on the bundled sample data. Installs megabert first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
python3 -c "
import torch
from megabert.config import load_config
from megabert.model.bert import MosaicBertForMaskedLM
cfg = load_config('configs/tiny.json')
model = MosaicBertForMaskedLM(cfg.model)
ids = torch.randint(5, 1000, (4, 32)); labels = ids.clone(); labels[:, ::2] = -100
out = model(ids, torch.ones_like(ids), labels=labels)
out.loss.backward()
print(f'tiny MosaicBERT forward/backward ok, loss {out.loss.item():.3f}')
"
