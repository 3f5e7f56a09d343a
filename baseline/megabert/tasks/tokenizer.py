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
from pathlib import Path
from typing import Optional

from megabert.model.pretrained import CONFIG_NAME, TokenizerError, tokenizer_entry

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
            f"{model_dir} records no tokenizer; attach one with megabert.model.pretrained.attach_tokenizer or pass "
            f"--vocab-file (WordPiece vocab.txt) / --tokenizer-json / --sentencepiece-model to tools/run_glue.py")
    return PairEncoder(load_data_tokenizer(**found), seq_len)


def encode(encoder: PairEncoder, texts_a: list, texts_b: Optional[list]) -> tuple[list, list]:
    return encoder.encode(texts_a, texts_b)
