"""Hugging Face and MosaicBERT checkpoints -> megabert model dirs (what fine-tuning, export and training read).

    import_hf(dir, out)       transformers' BertForMaskedLM / BertForSequenceClassification / BertModel (plain BERT
                              switches), or a megabert export (model_type "megabert": any switches, MLM or
                              sequence classifier)
    import_mosaic(dir, out)   the published MosaicBERT layout (mosaicml/mosaic-bert-base*, composer's 'model.'
                              prefix included), or a megabert export

A megabert export comes back exactly: the same tensors, bit for bit, and the same ModelConfig. Vocabularies
that are not a multiple of 64 are padded (zero embedding rows that are never predicted). Loading is strict:
every tensor is accounted for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from megabert.config import ModelConfig, read_json_file
from megabert.hf import mapping
from megabert.hf.tokenizer_files import import_tokenizer
from megabert.model import mosaic_mapping
from megabert.model.bert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from megabert.model.hf_mapping import hf_bert_classifier_to_megabert, hf_bert_to_megabert
from megabert.model.pretrained import save_pretrained

log = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
PAD_LOGIT_BIAS = -1.0e4
"""Decoder bias of vocabulary rows added to reach a multiple of 64: those tokens are never predicted."""


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says why and what to do."""


def read_json(path: Path) -> dict:
    return read_json_file(path, "model config", ConversionError)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin (loaded with weights_only: no code runs)."""
    if (directory / SAFETENSORS_NAME).is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / SAFETENSORS_NAME))
    if (directory / mosaic_mapping.WEIGHTS_NAME).is_file():
        state = torch.load(directory / mosaic_mapping.WEIGHTS_NAME, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    raise ConversionError(f"{directory} has neither {SAFETENSORS_NAME} nor {mosaic_mapping.WEIGHTS_NAME}")


def pad_vocab(state: dict[str, torch.Tensor], vocab_size: int, keys: dict[str, str]) -> tuple[dict, int]:
    """Pads the vocabulary to a multiple of 64 (megabert's requirement): zero embedding rows, and a decoder bias
    of PAD_LOGIT_BIAS so the extra tokens are never predicted. A tied decoder weight, if present, is dropped (it
    is the embedding matrix again)."""
    padded = -(-vocab_size // 64) * 64
    if padded == vocab_size:
        return state, vocab_size
    state = dict(state)
    extra = padded - vocab_size
    emb = state[keys["embedding"]]
    state[keys["embedding"]] = torch.cat([emb, emb.new_zeros(extra, emb.shape[1])])
    if keys.get("bias") in state:
        bias = state[keys["bias"]]
        state[keys["bias"]] = torch.cat([bias, bias.new_full((extra,), PAD_LOGIT_BIAS)])
    state.pop(mosaic_mapping.DECODER_WEIGHT, None)
    log.info("padded the vocabulary from %d to %d rows (a multiple of 64)", vocab_size, padded)
    return state, padded


def check_output_dir(source: Path, out: Path) -> None:
    if out.exists() and out.resolve() == source.resolve():
        raise ConversionError(f"the output {out} is the source checkpoint: write the megabert model dir elsewhere")


def is_megabert_export(config: dict) -> bool:
    return config.get("model_type") == mapping.MODEL_TYPE


# ---------------------------------------------------------------------------------------------------------------
# transformers BERT
# ---------------------------------------------------------------------------------------------------------------


def _normalise_hf_keys(state: dict) -> dict:
    """Old BERT checkpoints say LayerNorm.gamma/beta; BertModel files lack the 'bert.' prefix."""
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        out[key] = value
    return out


def _fresh_mlm_head(cfg: ModelConfig) -> dict:
    """A newly initialised MLM head in HF names, for checkpoints saved without one (BertModel)."""
    fresh = MosaicBertForMaskedLM(cfg).state_dict()
    return {"cls.predictions.transform.dense.weight": fresh["head.transform.weight"],
            "cls.predictions.transform.dense.bias": fresh["head.transform.bias"],
            "cls.predictions.transform.LayerNorm.weight": fresh["head.norm.weight"],
            "cls.predictions.transform.LayerNorm.bias": fresh["head.norm.bias"],
            "cls.predictions.bias": fresh["head.decoder_bias"]}


def import_hf(source: str | Path, output: str | Path, **tokenizer_args) -> Path:
    """transformers BertForMaskedLM, BertForSequenceClassification or BertModel dir, or a megabert export ->
    megabert model dir.
    tokenizer_args: vocab_file, tokenizer_json, cased (megabert.hf.tokenizer_files.import_tokenizer)."""
    source, out = Path(source), Path(output)
    check_output_dir(source, out)
    config = read_json(source / "config.json")
    if is_megabert_export(config):
        return import_export(source, out, config, **tokenizer_args)
    if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{source}: only absolute positions and exact gelu map onto megabert's plain BERT")
    if "alibi_starting_size" in config:
        raise ConversionError(f"{source} is a MosaicBERT checkpoint: use from-mosaic")
    state = _normalise_hf_keys(read_weights(source))
    if any(".attention.self.Wqkv." in k for k in state):
        raise ConversionError(f"{source} has MosaicBERT weights (Wqkv): use from-mosaic")
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    state, vocab_size = pad_vocab(state, config["vocab_size"], {"embedding": "bert.embeddings.word_embeddings.weight",
                                                                "bias": "cls.predictions.bias"})
    cfg = ModelConfig(
        vocab_size=vocab_size, hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
        type_vocab_size=config.get("type_vocab_size", 2),
        max_position_embeddings=config.get("max_position_embeddings", 512),
        hidden_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12), initializer_range=config.get("initializer_range", 0.02),
        pad_token_id=config.get("pad_token_id") or 0, position_embedding="learned", mlp_type="gelu",
        **mapping.recorded_switches(config))
    if "classifier.weight" in state and "bert.pooler.dense.weight" in state:  # BertForSequenceClassification
        num_labels = state["classifier.weight"].shape[0]
        return _save(MosaicBertForSequenceClassification(cfg, num_labels), hf_bert_classifier_to_megabert(state, cfg),
                     cfg, out, source, "huggingface-bert", tokenizer_args,
                     {"task": _task_from_config(config, num_labels)})
    if "cls.predictions.transform.dense.weight" not in state:
        log.warning("%s has no MLM head (a BertModel checkpoint): a fresh head is initialised", source)
        state.update(_fresh_mlm_head(cfg))
    megabert_state = hf_bert_to_megabert(state, cfg)
    return _save(MosaicBertForMaskedLM(cfg), megabert_state, cfg, out, source, "huggingface-bert", tokenizer_args)


# ---------------------------------------------------------------------------------------------------------------
# Published MosaicBERT layout
# ---------------------------------------------------------------------------------------------------------------


def import_mosaic(source: str | Path, output: str | Path, **tokenizer_args) -> Path:
    """MosaicBERT checkpoint dir (pytorch_model.bin or model.safetensors + config.json), or a megabert export ->
    megabert model dir."""
    source, out = Path(source), Path(output)
    check_output_dir(source, out)
    config = read_json(source / "config.json")
    if is_megabert_export(config):
        return import_export(source, out, config, **tokenizer_args)
    state = mosaic_mapping.strip_prefix(read_weights(source))
    head = mosaic_mapping.detect_head(state)
    state, vocab_size = pad_vocab(state, config.get("vocab_size", 30522),
                                  {"embedding": "bert.embeddings.word_embeddings.weight",
                                   "bias": "cls.predictions.decoder.bias"})
    state.pop(mosaic_mapping.DECODER_WEIGHT, None)  # tied to the (possibly padded) embeddings
    cfg = mosaic_mapping.config_from_mosaic(config, vocab_size=vocab_size)
    megabert_state = mosaic_mapping.mosaic_to_megabert(state, cfg)
    if head == "mlm":
        model = MosaicBertForMaskedLM(cfg)
    else:
        model = MosaicBertForSequenceClassification(cfg, state["classifier.weight"].shape[0])
    return _save(model, megabert_state, cfg, out, source, "mosaicbert", tokenizer_args)


# ---------------------------------------------------------------------------------------------------------------
# megabert's own export (model_type "megabert")
# ---------------------------------------------------------------------------------------------------------------


def import_export(source: Path, out: Path, config: Optional[dict] = None, **tokenizer_args) -> Path:
    """A megabert export (as written, or saved again by transformers after fine-tuning) -> megabert model dir."""
    config = config if config is not None else read_json(source / "config.json")
    state = mapping.normalise_export_keys(read_weights(source))
    state, vocab_size = pad_vocab(state, config["vocab_size"], {"embedding": "bert.embeddings.word_embeddings.weight",
                                                                "bias": "cls.predictions.decoder.bias"})
    try:
        cfg = mapping.config_from_export({**config, "vocab_size": vocab_size}, str(source / "config.json"))
        megabert_state, head = mapping.export_to_megabert(state, cfg)
    except mapping.ExportLayoutError as e:
        raise ConversionError(f"{source}: {e}") from None
    extra = {}
    if head == "encoder":
        log.warning("%s has no MLM head (saved from MegaBertModel): a fresh head is initialised", source)
        fresh = MosaicBertForMaskedLM(cfg).state_dict()
        megabert_state.update({k: v for k, v in fresh.items() if k.startswith("head.")})
    if head == "classifier":
        num_labels = megabert_state["classifier.weight"].shape[0]
        model = MosaicBertForSequenceClassification(cfg, num_labels)
        extra["task"] = _task_from_config(config, num_labels)
    else:
        model = MosaicBertForMaskedLM(cfg)
    return _save(model, megabert_state, cfg, out, source, "megabert-export", tokenizer_args, extra)


def _task_from_config(config: dict, num_labels: int) -> dict:
    """The "task" entry tools/run_glue.py writes, from transformers' id2label and problem_type; the task the
    export recorded (its name) when those still agree with it, so a model fine-tuned after export gets its own."""
    id2label = config.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels)]
    regression = config.get("problem_type") == "regression" or num_labels == 1
    task = {"name": config.get("finetuning_task") or "imported", "labels": [] if regression else labels,
            "regression": regression}
    recorded = (config.get(mapping.PROVENANCE) or {}).get("task") or {}
    same = ([str(label) for label in recorded.get("labels") or []] == task["labels"]
            and bool(recorded.get("regression")) == regression)
    return recorded if recorded and same else task


def _save(model: torch.nn.Module, state: dict, cfg: ModelConfig, out: Path, source: Path, origin: str,
          tokenizer_args: dict, extra: Optional[dict] = None) -> Path:
    """Loads strictly (every tensor accounted for), then writes a megabert model dir with its tokenizer."""
    model.load_state_dict(state, strict=True)
    save_pretrained(model, out, cfg, extra={"converted_from": {"format": origin, "path": str(source)},
                                            **(extra or {})})
    import_tokenizer(source, out, **tokenizer_args)
    return out
