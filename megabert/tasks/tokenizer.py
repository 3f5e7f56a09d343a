"""The tokenizer travels inside the model directory, so fine-tuning and export find it without flags.

config.json gets a "tokenizer" entry with DataConfig's field names, pointing at files copied into the directory:
    {"tokenizer_type": "BertWordPieceLowerCase", "vocab_file": "vocab.txt"}
    {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": "tokenizer.json"}
    {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": "tokenizer.model"}
Text is split by megabert.data's tokenizer (the one pretraining used) and framed as BERT does:
[CLS] a [SEP] (b [SEP]), token types 0/1, longest-first truncation to the sequence length.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from megabert.model.pretrained import CONFIG_NAME

WORDPIECE_TYPES = {"BertWordPieceLowerCase": True, "BertWordPieceCase": False}  # type -> lowercase
MODEL_FILE_NAMES = {"HuggingFaceTokenizer": "tokenizer.json", "SentencePieceTokenizer": "tokenizer.model"}
SUPPORTED_TYPES = (*WORDPIECE_TYPES, *MODEL_FILE_NAMES)


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
    elif tokenizer_type in MODEL_FILE_NAMES:
        source, field, name = tokenizer_model, "tokenizer_model", MODEL_FILE_NAMES[tokenizer_type]
        if tokenizer_model and Path(tokenizer_model).is_dir():  # a Hugging Face tokenizer directory
            source = str(Path(tokenizer_model) / "tokenizer.json")
    else:
        raise TokenizerError(f"tokenizer type {tokenizer_type!r} is not supported; use one of "
                             f"{', '.join(SUPPORTED_TYPES)}")
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
    """The "tokenizer" entry of the model dir's config.json (file names relative to the dir), or None."""
    config_path = Path(model_dir) / CONFIG_NAME
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text()).get("tokenizer")


def training_run_config(model_dir: str | Path) -> Optional[dict]:
    """The pretraining run's config for a model dir exported by megabert.train.export (it records the
    checkpoint it came from, whose config.json is the whole TrainConfig), or None."""
    config_path = Path(model_dir) / CONFIG_NAME
    if not config_path.is_file():
        return None
    source = json.loads(config_path.read_text()).get("source_checkpoint")
    run_config = Path(source) / CONFIG_NAME if source else None
    return json.loads(run_config.read_text()) if run_config and run_config.is_file() else None


def resolve_tokenizer(model_dir: str | Path) -> Optional[dict]:
    """{tokenizer_type, vocab_file, tokenizer_model} with usable paths: the model dir's own files, else those of
    the pretraining run it was exported from (when they still exist). None when neither is found."""
    entry = tokenizer_entry(model_dir)
    if entry is not None:
        return {"tokenizer_type": entry["tokenizer_type"],
                **{k: str(Path(model_dir) / entry[k]) if entry.get(k) else None
                   for k in ("vocab_file", "tokenizer_model")}}
    data = (training_run_config(model_dir) or {}).get("data") or {}
    files = {k: data.get(k) for k in ("vocab_file", "tokenizer_model")}
    if data.get("tokenizer_type") and any(files.values()) and all(Path(f).exists() for f in files.values() if f):
        return {"tokenizer_type": data["tokenizer_type"], **files}
    return None


class PairEncoder:
    """BERT framing on top of megabert.data's tokenizer (the one pretraining used): [CLS] a [SEP] (b [SEP]),
    token types 0 then 1, longest-first truncation of the texts so the whole fits in `seq_len`."""

    def __init__(self, tokenizer, seq_len: int):
        if seq_len < 4:
            raise TokenizerError(f"seq_len {seq_len} leaves no room for text between [CLS] and [SEP]")
        self.tokenizer = tokenizer
        self.seq_len = seq_len

    @staticmethod
    def _truncate(a: list, b: Optional[list], budget: int) -> tuple[list, Optional[list]]:
        if b is None:
            return a[:budget], None
        if len(a) + len(b) <= budget:
            return a, b
        # Longest first, as Hugging Face: trim the longer text one token at a time, b on ties. In closed form:
        # a keeps ceil(budget / 2) unless b is short enough to leave it more.
        keep_a = min(len(a), max(budget - len(b), -(-budget // 2)))
        return a[:keep_a], b[:budget - keep_a]

    def encode(self, texts_a: list, texts_b: Optional[list]) -> tuple[list, list]:
        """Token ids and token-type ids per example (unpadded lists; the collator pads per batch)."""
        tok = self.tokenizer
        ids_a = tok.encode_batch(list(texts_a))
        ids_b = tok.encode_batch(list(texts_b)) if texts_b is not None else [None] * len(ids_a)
        ids, types = [], []
        for a, b in zip(ids_a, ids_b):
            a, b = self._truncate(a, b, self.seq_len - (3 if b is not None else 2))
            seq = [tok.cls_id, *a, tok.sep_id]
            type_ids = [0] * len(seq)
            if b is not None:
                seq += [*b, tok.sep_id]
                type_ids += [1] * (len(b) + 1)
            ids.append(seq)
            types.append(type_ids)
        return ids, types


def load_tokenizer(model_dir: str | Path, seq_len: int) -> PairEncoder:
    """The model dir's tokenizer (megabert.data.load_tokenizer) wrapped for sentence (pair) classification."""
    from megabert.data import load_tokenizer as load_data_tokenizer

    found = resolve_tokenizer(model_dir)
    if found is None:
        raise TokenizerError(
            f"{model_dir} records no tokenizer; attach one with megabert.tasks.tokenizer.attach_tokenizer or pass "
            f"--vocab-file (WordPiece vocab.txt) / --tokenizer-json / --sentencepiece-model to tools/run_glue.py")
    return PairEncoder(load_data_tokenizer(**found), seq_len)


def encode(encoder: PairEncoder, texts_a: list, texts_b: Optional[list]) -> tuple[list, list]:
    return encoder.encode(texts_a, texts_b)
