"""sentence-transformers files for an export: SentenceTransformer(export, trust_remote_code=True).encode(...).

A sentence-transformers model directory is a transformers one plus modules.json, which chains modules: here the
transformer (AutoModel's last_hidden_state, in the export's root) and a pooling layer (1_Pooling/config.json).
Mean pooling over the real tokens is the default (the usual choice for embedding models trained from an MLM
encoder); CLS takes the [CLS] token's hidden state. The files use the layout sentence-transformers has read since
its version 2, so older and newer releases load them alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from megabert.model.pretrained import make_shared_dir, write_text_atomically

POOLING_MODES = ("mean", "cls")
POOLING_DIR = "1_Pooling"
FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
"""Written in the export's root (with POOLING_DIR)."""


def write_sentence_transformers_files(out: Path, hidden_size: int, pooling: str, max_seq_length: int) -> None:
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    make_shared_dir(out / POOLING_DIR)
    write_json(out / "modules.json", modules)
    write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    write_json(out / "config_sentence_transformers.json",
               {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    write_json(out / POOLING_DIR / "config.json", pooling_config)


def write_json(path: Path, content) -> None:
    write_text_atomically(path, json.dumps(content, indent=2) + "\n")
