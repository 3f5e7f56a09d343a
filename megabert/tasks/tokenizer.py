"""The tokenizer travels inside the model directory, so fine-tuning and export find it without flags.

config.json gets a "tokenizer" entry with DataConfig's field names, pointing at files copied into the directory:
    {"tokenizer_type": "BertWordPieceLowerCase", "vocab_file": "vocab.txt"}
    {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": "tokenizer.json"}
Encoding is BERT's: [CLS] a [SEP] (b [SEP]), token types 0/1, longest-first truncation to the sequence length.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from megabert.model.pretrained import CONFIG_NAME

WORDPIECE_TYPES = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # type -> lowercase
SUPPORTED_TYPES = (*WORDPIECE_TYPES, "HuggingFaceTokenizer")


class TokenizerError(ValueError):
    """The model directory has no usable tokenizer; the message says which flag or file supplies one."""


def attach_tokenizer(model_dir: str | Path, tokenizer_type: str, vocab_file: Optional[str] = None,
                     tokenizer_model: Optional[str] = None) -> dict:
    """Copies the tokenizer files into `model_dir` and records them in its config.json. Returns the entry."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise TokenizerError(f"{config_path} not found: save the model (save_pretrained) before its tokenizer")
    if tokenizer_type in WORDPIECE_TYPES:
        source, field, name = vocab_file, "vocab_file", "vocab.txt"
    elif tokenizer_type == "HuggingFaceTokenizer":
        source, field, name = tokenizer_model, "tokenizer_model", "tokenizer.json"
    else:
        raise TokenizerError(f"tokenizer type {tokenizer_type!r} is not supported for fine-tuning/export; use one "
                             f"of {', '.join(SUPPORTED_TYPES)}")
    if not source or not Path(source).is_file():
        raise TokenizerError(f"tokenizer type {tokenizer_type} needs {field} pointing at an existing file, "
                             f"got {source!r}")
    if Path(source).resolve() != (model_dir / name).resolve():
        shutil.copyfile(source, model_dir / name)
    entry = {"tokenizer_type": tokenizer_type, field: name}
    config = json.loads(config_path.read_text())
    config["tokenizer"] = entry
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return entry


def tokenizer_entry(model_dir: str | Path) -> Optional[dict]:
    config_path = Path(model_dir) / CONFIG_NAME
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text()).get("tokenizer")


def load_tokenizer(model_dir: str | Path, seq_len: int):
    """A `tokenizers.Tokenizer` that adds [CLS]/[SEP] and token types and truncates pairs to `seq_len`."""
    entry = tokenizer_entry(model_dir)
    if entry is None:
        raise TokenizerError(
            f"{model_dir} records no tokenizer; attach one with megabert.tasks.tokenizer.attach_tokenizer or pass "
            f"--vocab-file (WordPiece vocab.txt) / --tokenizer-json to tools/run_glue.py")
    tokenizer_type = entry["tokenizer_type"]
    if tokenizer_type in WORDPIECE_TYPES:
        from tokenizers import BertWordPieceTokenizer

        tokenizer = BertWordPieceTokenizer(str(Path(model_dir) / entry["vocab_file"]),
                                           lowercase=WORDPIECE_TYPES[tokenizer_type])
    elif tokenizer_type == "HuggingFaceTokenizer":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(model_dir) / entry["tokenizer_model"]))
    else:
        raise TokenizerError(f"{model_dir}: tokenizer type {tokenizer_type!r} is not supported here; use one of "
                             f"{', '.join(SUPPORTED_TYPES)}")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=seq_len, strategy="longest_first")
    return tokenizer


def encode(tokenizer, texts_a: list, texts_b: Optional[list]) -> tuple[list, list]:
    """Token ids and token-type ids per example (unpadded lists; the collator pads per batch)."""
    batch = list(zip(texts_a, texts_b)) if texts_b is not None else list(texts_a)
    encodings = tokenizer.encode_batch(batch)
    return [e.ids for e in encodings], [e.type_ids for e in encodings]
