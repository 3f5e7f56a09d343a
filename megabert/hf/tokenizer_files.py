"""Tokenizer files for an export, so AutoTokenizer.from_pretrained(export) encodes as megabert does.

megabert splits text with the tokenizer pretraining used (megabert.data) and frames it as BERT: [CLS] a [SEP]
(b [SEP]), token types 0 then 1. The export carries the same tokenizer with the same framing:
    WordPiece (vocab.txt)      vocab.txt + tokenizer.json, tokenizer_class BertTokenizer
    tokenizer.json             that file with megabert's framing as its post-processor
    SentencePiece (.model)     a tokenizer.json rebuilt from the model file (its pieces, scores, normalisation and
                               special pieces), with megabert's framing; the .model file is kept beside it
Special-token ids are megabert's, including the tokens megabert appends to a SentencePiece vocabulary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from megabert.model.pretrained import WORDPIECE_TYPES, attach_tokenizer, copy_atomically, write_text_atomically
from megabert.tasks.tokenizer import resolve_tokenizer

log = logging.getLogger(__name__)

SENTENCEPIECE_FILE = "sentencepiece.model"
"""Where an export keeps a SentencePiece model (not tokenizer.model: transformers would try to load that)."""
ROLES = ("unk", "sep", "pad", "cls", "mask")


class TokenizerExportError(ValueError):
    """The tokenizer cannot be written for transformers; the message says why and what to do."""


def export_tokenizer(model_dir: Path, out: Path, max_length: int) -> Optional[dict]:
    """Writes the tokenizer files of `model_dir` into `out`; returns megabert's tokenizer entry (file names
    relative to `out`) for the export's config.json, or None when the model dir records no tokenizer."""
    from megabert.data import load_tokenizer

    entry = resolve_tokenizer(model_dir)
    if entry is None:
        log.warning("%s records no tokenizer: the export has no tokenizer files (attach one with "
                    "megabert.model.pretrained.attach_tokenizer and export again)", model_dir)
        return None
    tokenizer = load_tokenizer(**entry)
    specials = {f"{role}_token": tokenizer.id_to_token(getattr(tokenizer, f"{role}_id")) for role in ROLES}
    kind = entry["tokenizer_type"]
    if kind in WORDPIECE_TYPES:
        from tokenizers import BertWordPieceTokenizer

        lowercase = WORDPIECE_TYPES[kind]
        copy_atomically(entry["vocab_file"], out / "vocab.txt")
        backend = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=lowercase)._tokenizer
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase}
        recorded = {"tokenizer_type": kind, "vocab_file": "vocab.txt"}
    elif kind == "HuggingFaceTokenizer":
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(entry["tokenizer_model"])
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
        recorded = {"tokenizer_type": kind, "tokenizer_model": "tokenizer.json"}
    else:
        backend = sentencepiece_backend(entry["tokenizer_model"], tokenizer)
        copy_atomically(entry["tokenizer_model"], out / SENTENCEPIECE_FILE)
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
        recorded = {"tokenizer_type": kind, "tokenizer_model": SENTENCEPIECE_FILE}
    backend.post_processor = bert_framing(tokenizer)
    backend.no_padding()
    backend.no_truncation()
    write_text_atomically(out / "tokenizer.json", backend.to_str())
    # token types are part of the framing (the second segment is type 1): the model needs them
    config.update(model_max_length=max_length, clean_up_tokenization_spaces=False,
                  model_input_names=["input_ids", "token_type_ids", "attention_mask"], **specials)
    write_text_atomically(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomically(out / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
    return recorded


def bert_framing(tokenizer):
    """megabert's framing as a tokenizers post-processor: [CLS] a [SEP] (b [SEP]), token types 0 then 1."""
    from tokenizers import processors

    cls, sep = tokenizer.id_to_token(tokenizer.cls_id), tokenizer.id_to_token(tokenizer.sep_id)
    return processors.TemplateProcessing(single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
                                         special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)])


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece -> tokenizers
# ---------------------------------------------------------------------------------------------------------------

_UNIGRAM, _BPE = 1, 2  # TrainerSpec.model_type
_NORMAL, _USER_DEFINED = 1, 4  # ModelProto.SentencePiece.type


def _read_sentencepiece_proto(model_file: str):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:  # the generated module needs protobuf
        raise TokenizerExportError(f"reading the SentencePiece model {model_file} for the export needs protobuf: "
                                   f"pip install protobuf ({e})") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def sentencepiece_backend(model_file: str, tokenizer):
    """A tokenizers.Tokenizer that splits text as SentencePieceProcessor.encode does, with megabert's vocabulary
    (its names for the pad and unk pieces, and the special tokens it appends after the model's pieces)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = _read_sentencepiece_proto(model_file)
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    names = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    pieces = proto.pieces
    if trainer.model_type == _UNIGRAM:
        model = models.Unigram([(names[i], p.score) for i, p in enumerate(pieces)], unk_id=trainer.unk_id,
                               byte_fallback=trainer.byte_fallback)
    elif trainer.model_type == _BPE:
        model = models.BPE({names[i]: i for i in range(len(pieces))}, _bpe_merges(pieces, names),
                           unk_token=names[trainer.unk_id], fuse_unk=True, byte_fallback=trainer.byte_fallback)
    else:
        raise TokenizerExportError(f"{model_file} is a SentencePiece {'word' if trainer.model_type == 3 else 'char'} "
                                   f"model; the export supports unigram and BPE models")
    backend = Tokenizer(model)
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always" if spec.add_dummy_prefix else "never",
        split=bool(trainer.split_by_whitespace))
    backend.decoder = decoders.Sequence(
        [decoders.Metaspace(replacement="▁", prepend_scheme="always" if spec.add_dummy_prefix else "never")]
        + ([decoders.ByteFallback(), decoders.Fuse()] if trainer.byte_fallback else []))
    # SentencePiece emits user-defined pieces whole wherever they occur; megabert's special tokens are special.
    role_ids = {getattr(tokenizer, f"{role}_id") for role in ROLES}
    user_defined = [i for i, p in enumerate(pieces) if p.type == _USER_DEFINED and i not in role_ids]
    backend.add_tokens([AddedToken(names[i], normalized=False, special=False) for i in user_defined])
    # Roles first in id order, so tokens megabert appended past the model's pieces get megabert's ids.
    backend.add_special_tokens([AddedToken(names[i], normalized=False, special=True) for i in sorted(role_ids)])
    for i in sorted(role_ids):
        if backend.token_to_id(names[i]) != i:
            raise TokenizerExportError(f"{model_file}: special token {names[i]!r} would get id "
                                       f"{backend.token_to_id(names[i])}, megabert uses {i}")
    return backend


def _bpe_merges(pieces, names: list[str]) -> list[tuple[str, str]]:
    """BPE merges in SentencePiece's order: a pair merges into the piece it forms, higher piece scores first."""
    normal = {names[i]: (p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
    ranked = []
    for piece, (score, index) in normal.items():
        for split in range(1, len(piece)):
            left, right = piece[:split], piece[split:]
            if left in normal and right in normal:
                ranked.append((-score, index, normal[left][1], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


# ---------------------------------------------------------------------------------------------------------------
# Import: a Hugging Face dir's tokenizer -> a megabert model dir
# ---------------------------------------------------------------------------------------------------------------


def import_tokenizer(source: Path, out: Path, vocab_file: Optional[str] = None,
                     tokenizer_json: Optional[str] = None, cased: bool = False) -> None:
    """Attaches a tokenizer to the megabert model dir `out`: the flags first, then the source dir's own files
    (a megabert export's recorded tokenizer, vocab.txt with do_lower_case from tokenizer_config.json, or
    tokenizer.json)."""
    lower = not cased
    tokenizer_config = source / "tokenizer_config.json"
    if not cased and tokenizer_config.is_file():
        lower = bool(json.loads(tokenizer_config.read_text()).get("do_lower_case", True))
    kind = "BertWordPieceLowerCase" if lower else "BertWordPieceCase"
    recorded = _recorded_tokenizer(source)
    if vocab_file:
        attach_tokenizer(out, kind, vocab_file=vocab_file)
    elif tokenizer_json:
        attach_tokenizer(out, "HuggingFaceTokenizer", tokenizer_model=tokenizer_json)
    elif recorded is not None:
        field = "vocab_file" if recorded["tokenizer_type"] in WORDPIECE_TYPES else "tokenizer_model"
        attach_tokenizer(out, recorded["tokenizer_type"], **{field: str(source / recorded[field])})
    elif (source / "vocab.txt").is_file():
        attach_tokenizer(out, kind, vocab_file=str(source / "vocab.txt"))
    elif (source / "tokenizer.json").is_file():
        attach_tokenizer(out, "HuggingFaceTokenizer", tokenizer_model=str(source / "tokenizer.json"))
    else:
        log.warning("no tokenizer found in %s: pass --vocab-file (MosaicBERT uses bert-base-uncased's vocab.txt) "
                    "or give tools/run_glue.py --vocab-file later", source)


def _recorded_tokenizer(source: Path) -> Optional[dict]:
    """The tokenizer a megabert export recorded in its config.json, if its file is still there."""
    from megabert.hf.mapping import PROVENANCE

    config_path = source / "config.json"
    if not config_path.is_file():
        return None
    entry = (json.loads(config_path.read_text()).get(PROVENANCE) or {}).get("tokenizer")
    if not entry:
        return None
    name = entry.get("vocab_file") or entry.get("tokenizer_model")
    return entry if name and (source / name).is_file() else None
