"""megabert model dir -> a Hugging Face model dir that transformers (and sentence-transformers) load as it is.

    export_model_dir("runs/base/model", "exported/")                          # transformers
    export_model_dir("runs/base/model", "exported/", sentence_transformers=True)  # + sentence-transformers

Which layout the export gets follows the model's switches:
  - plain BERT (learned positions, GELU MLP): transformers' own BertForMaskedLM / BertForSequenceClassification,
    no custom code;
  - anything else (MosaicBERT: ALiBi, GeGLU, and the mixed ablations): self-contained, model_type "megabert",
    carrying configuration_megabert.py and modeling_megabert.py and an auto_map for AutoConfig, AutoModel,
    AutoModelForMaskedLM, AutoModelForSequenceClassification and AutoModelForTokenClassification; load with
    trust_remote_code=True. The weights use the published MosaicBERT names.
A fine-tuned classifier (tools/run_glue.py) exports with its pooler and classifier, its labels as id2label.
Tokenizer files come along (megabert.hf.tokenizer_files). Every file is written atomically with mode 0644
(directories the export creates: 0755), so the directory can be handed to others as it is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megabert.config import ModelConfig, from_dict
from megabert.hf import mapping
from megabert.hf.sentence_model import FILES as SENTENCE_FILES
from megabert.hf.sentence_model import POOLING_DIR, write_json, write_sentence_transformers_files
from megabert.hf.tokenizer_files import export_tokenizer
from megabert.model import hf_mapping, mosaic_mapping
from megabert.model.pretrained import (ModelDirError, copy_atomically, load_state_dict, make_shared_dir,
                                       read_config_json, save_safetensors, write_atomically)

log = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_BIN_NAME = mosaic_mapping.WEIGHTS_NAME
CODE_DIR = Path(__file__).resolve().parent


@dataclass
class ExportResult:
    directory: Path
    layout: str
    """'megabert' (self-contained, trust_remote_code) or 'bert' (transformers' own BERT classes)."""
    architecture: str
    tensors: int


def is_plain_bert(cfg: ModelConfig) -> bool:
    return cfg.position_embedding == "learned" and cfg.mlp_type == "gelu"


def export_model_dir(source: str | Path, output: str | Path, *, sentence_transformers: bool = False,
                     pooling: str = "mean", pytorch_bin: bool = False, max_length: Optional[int] = None,
                     alibi_starting_size: int = 512) -> ExportResult:
    """Writes the export of megabert model dir `source` into `output`.

    max_length: the tokenizer's model_max_length and sentence-transformers' max_seq_length (default: the learned
    position table for plain BERT, else alibi_starting_size; ALiBi models also run on longer inputs).
    pytorch_bin: also write pytorch_model.bin (the published MosaicBERT checkpoints' file name)."""
    source, out = Path(source), Path(output)
    config = read_config_json(source)
    check_output_dir(source, out)
    cfg = from_dict(ModelConfig, config["model"], "model.")
    state = load_state_dict(source)
    head = mapping.detect_head(state)
    if head not in mapping.ARCHITECTURES:
        raise ModelDirError(f"{source} holds neither an MLM model nor a sequence classifier (found: {head})")
    plain = is_plain_bert(cfg)
    if max_length is None:
        max_length = cfg.max_position_embeddings if plain else alibi_starting_size
    if plain and max_length > cfg.max_position_embeddings:
        raise ValueError(f"max_length {max_length} exceeds the learned position table of {source} "
                         f"({cfg.max_position_embeddings} positions)")
    extra = classification_extra(config, state) if head == "classifier" else {}

    make_shared_dir(out)
    tokenizer = export_tokenizer(source, out, max_length)
    provenance = mapping.provenance(cfg, config, tokenizer)
    if plain:
        architecture = "BertForMaskedLM" if head == "mlm" else "BertForSequenceClassification"
        hf_state = _megabert_to_bert(state, cfg, head)
        hf_config = {**bert_config(cfg, architecture, extra), **provenance}
    else:
        architecture = mapping.ARCHITECTURES[head]
        hf_state = mapping.megabert_to_export(state, cfg)
        hf_config = {**mapping.export_config(cfg, head, alibi_starting_size, extra), **provenance}
        for name in mapping.CODE_FILES:
            copy_atomically(CODE_DIR / name, out / name)
    save_safetensors(hf_state, out / SAFETENSORS_NAME)
    if pytorch_bin:
        tensors = {k: v.detach().cpu().contiguous() for k, v in hf_state.items()}
        write_atomically(out / PYTORCH_BIN_NAME, lambda tmp: torch.save(tensors, tmp))
    write_json(out / "config.json", hf_config)
    if sentence_transformers:
        write_sentence_transformers_files(out, cfg.hidden_size, pooling, max_length)
    _remove_stale(out, plain=plain, pytorch_bin=pytorch_bin, sentence_transformers=sentence_transformers)
    return ExportResult(out, "bert" if plain else "megabert", architecture, len(hf_state))


def check_output_dir(source: Path, out: Path) -> None:
    """Refuses an output that would overwrite a model: the source itself, or another megabert model dir."""
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"the output {out} is the source model dir: export into another directory")
    existing = out / "config.json"
    if existing.is_file():
        try:
            content = json.loads(existing.read_text())
        except json.JSONDecodeError:
            content = None
        if isinstance(content, dict) and isinstance(content.get("model"), dict) and "model_type" not in content:
            raise ValueError(f"{out} holds a megabert model dir, which the export would overwrite: choose another "
                             f"output directory")


def classification_extra(config: dict, state: dict) -> dict:
    """num_labels, id2label / label2id (the task's labels, else LABEL_i) and, for regression, problem_type."""
    num_labels = state["classifier.weight"].shape[0]
    task = config.get("task") or {}
    labels = [str(label) for label in task.get("labels") or []]
    if len(labels) != num_labels:
        if labels:
            log.warning("the task records %d labels but the classifier has %d outputs: labels LABEL_0 ... used",
                        len(labels), num_labels)
        labels = [f"LABEL_{i}" for i in range(num_labels)]
    extra = {"num_labels": num_labels, "id2label": {str(i): label for i, label in enumerate(labels)},
             "label2id": {label: i for i, label in enumerate(labels)}}
    if task.get("regression") or num_labels == 1:
        extra["problem_type"] = "regression"
    return extra


# ---------------------------------------------------------------------------------------------------------------
# Plain BERT: transformers' own classes
# ---------------------------------------------------------------------------------------------------------------


def bert_config(cfg: ModelConfig, architecture: str, extra: Optional[dict] = None) -> dict:
    """transformers BertConfig fields for a plain-BERT megabert model."""
    return {
        "architectures": [architecture], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu", "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout, "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute", "tie_word_embeddings": True, "torch_dtype": "float32",
        **(extra or {}),
    }


def _megabert_to_bert(state: dict, cfg: ModelConfig, head: str) -> dict:
    if head == "classifier":
        return hf_mapping.megabert_classifier_to_hf_bert(state, cfg)
    hf_state = hf_mapping.megabert_to_hf_bert(state, cfg)
    # transformers ties decoder.weight to the embeddings and decoder.bias to cls.predictions.bias.
    for tied in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
        hf_state.pop(tied)
    return hf_state


def _remove_stale(out: Path, plain: bool, pytorch_bin: bool, sentence_transformers: bool) -> None:
    """Files an earlier export into `out` wrote that this one does not: left there, they would be loaded
    (older weights, another pooling) or mislead."""
    stale = [] if pytorch_bin else [PYTORCH_BIN_NAME]
    stale += list(mapping.CODE_FILES) if plain else []
    stale += [] if sentence_transformers else [*SENTENCE_FILES, f"{POOLING_DIR}/config.json"]
    for name in stale:
        if (out / name).is_file():
            (out / name).unlink()
            log.info("removed %s left by an earlier export", out / name)
    if not sentence_transformers and (out / POOLING_DIR).is_dir() and not any((out / POOLING_DIR).iterdir()):
        (out / POOLING_DIR).rmdir()
