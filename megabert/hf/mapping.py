"""megabert model <-> self-contained Hugging Face export: weight names and config.json fields.

The export's weight names are those of the published MosaicBERT checkpoints (megabert.model.mosaic_mapping), so a
MosaicBERT export is also a checkpoint in the published layout. The ablation switches add the tensors that
layout has no name for: learned positions as BERT names them, and a GELU MLP as `mlp.wi` (with bias) in place of
`mlp.gated_layers`. Compute-only switches (unpad, low-precision LayerNorm, sparse MLM head, attention backend) change
no weight; config.json keeps the whole ModelConfig under "megabert" so an import restores them exactly.
"""

from __future__ import annotations

from typing import Optional

import torch

from megabert.config import ModelConfig, from_dict, to_dict
from megabert.model import mosaic_mapping

MODEL_TYPE = "megabert"
CODE_FILES = ("configuration_megabert.py", "modeling_megabert.py")
"""Copied from this package into every self-contained export."""
AUTO_MAP = {
    "AutoConfig": "configuration_megabert.MegaBertConfig",
    "AutoModel": "modeling_megabert.MegaBertModel",
    "AutoModelForMaskedLM": "modeling_megabert.MegaBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_megabert.MegaBertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_megabert.MegaBertForTokenClassification",
}
ARCHITECTURES = {"mlm": "MegaBertForMaskedLM", "classifier": "MegaBertForSequenceClassification"}
PROVENANCE = "megabert"
"""config.json entry: {"model": the ModelConfig, "tokenizer": the export's tokenizer files, "task": ...}."""
POSITION_TYPES = {"alibi": "alibi", "learned": "absolute"}  # ModelConfig.position_embedding -> export name

SWITCHES_WITHOUT_WEIGHTS = ("unpad", "low_precision_layernorm", "sparse_mlm_head", "attention_backend")
"""ModelConfig fields no exported weight or config field records; the "megabert" entry keeps them."""

DECODER_WEIGHT = mosaic_mapping.DECODER_WEIGHT
POOLER_WEIGHT = "bert.pooler.dense.weight"


class ExportLayoutError(ValueError):
    """Weights or config.json do not match the export layout; the message names the tensors or fields."""


def key_map(cfg: ModelConfig, head: str) -> dict[str, str]:
    """megabert name -> export name for every tensor of a model with `head` ('mlm' or 'classifier')."""
    mapping = mosaic_mapping.key_map(cfg, head)
    if cfg.mlp_type == "gelu":
        for i in range(cfg.num_layers):
            ours, theirs = f"bert.encoder.layers.{i}.mlp.wi.", f"bert.encoder.layer.{i}.mlp.wi."
            del mapping[ours + "weight"]  # the published name, mlp.gated_layers, is a GeGLU's
            mapping[ours + "weight"], mapping[ours + "bias"] = theirs + "weight", theirs + "bias"
    if cfg.position_embedding == "learned":
        mapping["bert.embeddings.position_embeddings.weight"] = "bert.embeddings.position_embeddings.weight"
    return mapping


def detect_head(state: dict) -> str:
    """'mlm', 'classifier' (sequence classification), 'token_classifier' or 'encoder', from either layout's keys."""
    if "head.decoder_bias" in state or "cls.predictions.decoder.bias" in state:
        return "mlm"
    if "classifier.weight" in state:
        return "classifier" if ("pooler.weight" in state or POOLER_WEIGHT in state) else "token_classifier"
    return "encoder"


def megabert_to_export(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """megabert state dict -> export weights; the MLM decoder weight is written out (a copy of the word
    embeddings, tied again on load), as in the published checkpoints."""
    head = detect_head(state)
    if head not in ARCHITECTURES:
        raise ExportLayoutError(f"the state dict has no MLM head and no sequence classifier (found a {head} model)")
    mapping = key_map(cfg, head)
    _check_keys(set(state), set(mapping), "megabert model")
    out = {theirs: state[ours] for ours, theirs in mapping.items()}
    if head == "mlm":
        out[DECODER_WEIGHT] = state["bert.embeddings.word_embeddings.weight"].clone()
    return out


def normalise_export_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved by transformers from a bare MegaBertModel carry no 'bert.' prefix; add it."""
    if any(k.startswith(("embeddings.", "encoder.", "pooler.")) for k in state):
        return {("bert." + k if k.startswith(("embeddings.", "encoder.", "pooler.")) else k): v
                for k, v in state.items()}
    return state


def export_to_megabert(state: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """Export weights -> (megabert state dict, head). The tied decoder weight may be absent (transformers'
    save_pretrained drops it); when present it must equal the word embeddings."""
    state = normalise_export_keys(state)
    head = detect_head(state)
    if head == "token_classifier":
        raise ExportLayoutError("the weights hold a token classifier (classifier.* without bert.pooler.*): megabert "
                                "has sequence classification and MLM models only")
    mapping = key_map(cfg, "mlm" if head == "encoder" else head)
    if head == "encoder":  # the head is not there to map; the caller adds one
        mapping = {ours: theirs for ours, theirs in mapping.items() if ours.startswith("bert.")}
    extra = {DECODER_WEIGHT} if head == "mlm" else set()
    _check_keys(set(state) - extra, set(mapping.values()), "export")
    if DECODER_WEIGHT in state and head == "mlm":
        if not torch.equal(state[DECODER_WEIGHT], state["bert.embeddings.word_embeddings.weight"]):
            raise ExportLayoutError(f"{DECODER_WEIGHT} differs from the word embeddings: megabert ties them; "
                                    f"was the checkpoint trained with tie_word_embeddings off?")
    return {ours: state[theirs] for ours, theirs in mapping.items()}, head


def _check_keys(found: set, expected: set, what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ExportLayoutError(f"{what} weights do not match the export layout: missing {missing[:4]}"
                                f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                                f"{' ...' if len(unexpected) > 4 else ''}; does config.json describe these weights?")


# ---------------------------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------------------------


def provenance(cfg: ModelConfig, model_dir_config: dict, tokenizer: Optional[dict]) -> dict:
    """The "megabert" entry of an export's config.json: the ModelConfig, the tokenizer files the export carries
    and the fine-tuning task, so an import restores the model dir."""
    entry = {"model": to_dict(cfg)}
    if tokenizer:
        entry["tokenizer"] = tokenizer
    if model_dir_config.get("task"):
        entry["task"] = model_dir_config["task"]
    return {PROVENANCE: entry}


def export_config(cfg: ModelConfig, head: str, alibi_starting_size: int, extra: Optional[dict] = None) -> dict:
    """config.json of a self-contained export (MegaBertConfig's fields and auto_map) without its provenance."""
    return {
        "architectures": [ARCHITECTURES[head]],
        "auto_map": dict(AUTO_MAP),
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": POSITION_TYPES[cfg.position_embedding],
        "mlp_type": cfg.mlp_type,
        "alibi_starting_size": alibi_starting_size,
        "classifier_dropout": None,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        **(extra or {}),
    }


def recorded_switches(config: dict) -> dict:
    """The SWITCHES_WITHOUT_WEIGHTS an export recorded in its "megabert" entry (none for other checkpoints)."""
    recorded = (config.get(PROVENANCE) or {}).get("model") or {}
    return {k: recorded[k] for k in SWITCHES_WITHOUT_WEIGHTS if k in recorded}


def config_from_export(config: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig from an export's config.json: the architecture from MegaBertConfig's fields (they win: a user may
    have resized the vocabulary in transformers), the compute-only switches from the "megabert" entry if any."""
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in config]
    if missing:
        raise ExportLayoutError(f"{where} lacks {', '.join(missing)}")
    positions = {v: k for k, v in POSITION_TYPES.items()}
    if config.get("position_embedding_type", "alibi") not in positions:
        raise ExportLayoutError(f"{where}: position_embedding_type {config['position_embedding_type']!r} is not "
                                f"one of {sorted(positions)}")
    base = recorded_switches(config)
    base.update(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
        type_vocab_size=config.get("type_vocab_size", 2),
        max_position_embeddings=config.get("max_position_embeddings", 512),
        hidden_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.0),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        initializer_range=config.get("initializer_range", 0.02),
        pad_token_id=config.get("pad_token_id") or 0,
        position_embedding=positions[config.get("position_embedding_type", "alibi")],
        mlp_type=config.get("mlp_type", "geglu"))
    return from_dict(ModelConfig, base, "model.")
